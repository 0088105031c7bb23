"""Freezing as a split of a parameter pytree into trainable and frozen parts.

The train step differentiates only the trainable part and the optimizer only ever
sees it, so frozen leaves cost no gradient computation and no optimizer state
(FreezeD here; AdaFM's frozen general part uses the same split). Leaves are chosen
by path prefix: `("b256",)` freezes every parameter under the discriminator's
256 x 256 block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax import traverse_util

Params = dict[str, Any]
Prefix = tuple[str, ...]


def _is_frozen(path: tuple[str, ...], frozen_prefixes: Sequence[Prefix]) -> bool:
  return any(path[:len(prefix)] == tuple(prefix) for prefix in frozen_prefixes)


def split(params: Params, frozen_prefixes: Sequence[Prefix]) -> tuple[Params, Params]:
  """(trainable, frozen): two nested dicts that together hold every leaf once."""
  flat = traverse_util.flatten_dict(params)
  trainable = {p: v for p, v in flat.items() if not _is_frozen(p, frozen_prefixes)}
  frozen = {p: v for p, v in flat.items() if _is_frozen(p, frozen_prefixes)}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable: Params, frozen: Params) -> Params:
  """Inverse of `split`."""
  flat = traverse_util.flatten_dict(trainable)
  flat.update(traverse_util.flatten_dict(frozen))
  return traverse_util.unflatten_dict(flat)


def named_groups(groups: Sequence[Sequence[str]]) -> list[tuple[Prefix, ...]]:
  """Groups given by their top-level parameter names -> groups of one-name prefixes."""
  return [tuple((name,) for name in group) for group in groups]


def group_prefixes(groups: Sequence[Sequence[Prefix]], count: int) -> tuple[Prefix, ...]:
  """The prefixes of the first `count` of `groups` (each group a sequence of prefixes),
  in order: what freezing those groups splits off.

  Raises:
    ValueError: `count` is not in [0, len(groups)].
  """
  if not 0 <= count <= len(groups):
    raise ValueError(f"cannot take {count} of {len(groups)} groups")
  return tuple(tuple(prefix) for group in groups[:count] for prefix in group)


def check_prefixes(params: Params, frozen_prefixes: Sequence[Prefix], *,
                   what: str = "freeze prefix") -> None:
  """ValueError for a prefix that matches nothing (a typo would silently freeze nothing);
  `what` names a prefix in the message."""
  paths = list(traverse_util.flatten_dict(params))
  for prefix in frozen_prefixes:
    if not any(_is_frozen(p, [prefix]) for p in paths):
      tops = sorted({p[0] for p in paths})
      raise ValueError(f"{what} {'/'.join(prefix)!r} matches no parameter; "
                       f"top-level names: {', '.join(tops)}")
