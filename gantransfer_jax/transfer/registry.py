"""The registered transforms, the `config.transfer` parser, and a config's transforms.

`config.transfer` is a comma-separated list of NAME or NAME:ARG ("freeze_d:4,adafm",
"fs:100"; empty: none). A config's transforms are its family's condition embeddings
(`condition`: `Gan.condition_sites`), those its family's own config fields ask for
(`Gan.config_transforms`: `freeze_d`, AdaFM's `adafm.*` fields), then the listed ones.
A new transform is a module with its `base.Transform` and a build function, plus one
`register` call below (a test may register its own: `unregister` removes it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ml_collections

from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.transfer import base
from gantransfer_jax.transfer import condition
from gantransfer_jax.transfer import freeze
from gantransfer_jax.transfer import fresh
from gantransfer_jax.transfer import modulation

# (gan, the argument after ':' or None, what set it: for messages) -> transform, or None
# where the argument asks for nothing (freeze_d:0). ValueError for a bad argument.
BuildFn = Callable[[gan_lib.Gan, "str | None", str], "base.Transform | None"]


@dataclasses.dataclass(frozen=True)
class Entry:
  """A transform as `config.transfer` names it.

  Attributes:
    name: its name in `config.transfer`.
    build: see `BuildFn`.
    usage: its form, for messages ('freeze_d:N').
  """

  name: str
  build: BuildFn
  usage: str


_REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
  if entry.name in _REGISTRY:
    raise ValueError(f"transfer transform {entry.name!r} is already registered")
  _REGISTRY[entry.name] = entry
  return entry


def unregister(name: str) -> None:
  del _REGISTRY[name]


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def _usages() -> str:
  return ", ".join(entry.usage for entry in _REGISTRY.values())


def _parse(text) -> tuple[list[tuple[str, str | None]], list[str]]:
  """([(name, arg or None)], problems) of a `config.transfer` value."""
  if not text:
    return [], []
  if not isinstance(text, str):
    return [], [f"transfer must be a string such as 'freeze_d:4,adafm', got {text!r}"]
  entries, problems = [], []
  for item in text.split(","):
    name, sep, arg = item.strip().partition(":")
    if name not in _REGISTRY:
      problems.append(f"transfer {text!r}: unknown transform {name!r}; valid: {_usages()}")
    elif sep and not arg:
      problems.append(f"transfer {text!r}: {name!r} has an empty argument after ':' "
                      f"(form: {_REGISTRY[name].usage})")
    elif name in [listed for listed, _ in entries]:
      problems.append(f"transfer {text!r}: {name!r} is listed twice")
    else:
      entries.append((name, arg if sep else None))
  return entries, problems


def parse(text: str | None) -> list[tuple[str, str | None]]:
  """'freeze_d:4,adafm' -> [('freeze_d', '4'), ('adafm', None)].

  Raises:
    ValueError: not a string, an unknown name, an empty argument, a name listed twice.
  """
  entries, problems = _parse(text)
  if problems:
    raise ValueError("; ".join(problems))
  return entries


def _build(config: ml_collections.ConfigDict,
           gan: gan_lib.Gan) -> tuple[tuple[base.Transform, ...], list[str]]:
  listed, problems = _parse(config.get("transfer"))
  requests = list(gan.config_transforms()) + [
      (name, arg, f"transfer entry {name!r}") for name, arg in listed]
  transforms: list[base.Transform] = list(condition.from_family(gan))
  for name, arg, field in requests:
    try:
      transform = _REGISTRY[name].build(gan, arg, field)
    except ValueError as e:
      problems.append(str(e))
      continue
    if transform is not None:
      transforms.append(transform)
  for network in (gan_lib.GENERATOR, gan_lib.DISCRIMINATOR):
    adds = base.added(transforms, network)
    for name in sorted({name for name in adds if adds.count(name) > 1}):
      problems.append(f"transfer: more than one transform adds {name!r} to the {network} "
                      "(two modulations, or one over the adafm family's own): keep one")
  return tuple(transforms), problems


def problems(config: ml_collections.ConfigDict, gan: gan_lib.Gan) -> list[str]:
  """What keeps `config`'s transforms from running on `gan` (its family's `Gan`), in
  validation's style: one line each."""
  return _build(config, gan)[1]


def from_config(config: ml_collections.ConfigDict,
                gan: gan_lib.Gan) -> tuple[base.Transform, ...]:
  """`config`'s transforms over `gan`, its family's own first (empty: none).

  Raises:
    ValueError: `problems` is not empty (its lines joined by '; ').
  """
  transforms, found = _build(config, gan)
  if found:
    raise ValueError("; ".join(found))
  return transforms


register(Entry("freeze_d", freeze.build_d, "freeze_d:N"))
register(Entry("freeze_g", freeze.build_g, "freeze_g:N"))
for _kind in modulation.KINDS:
  register(Entry(_kind, modulation.builder(_kind), f"{_kind}[:WARMUP_STEPS]"))
register(Entry("fresh_d", fresh.build_d, "fresh_d:NAME[+NAME...]"))
register(Entry("fresh_g", fresh.build_g, "fresh_g:NAME[+NAME...]"))
