"""The transform protocol and how a list of transforms composes.

Each transform acts on one network's parameter pytree (`network`: `gan.GENERATOR` or
`gan.DISCRIMINATOR`):

  added = t.init(variables, rngs)            # what it adds to each collection, at init
                                             #   (a modulation, a condition embedding)
  seen = t.apply(params)                     # the params the network's forward pass takes
  inputs, state = t.condition(params, state, cond, batch, train)  # e.g. G_emb(cond)
  trainable, fixed = t.trainable(params)     # what the optimizer sees, and what it never does
  tx = t.optimizer(tx)                       # e.g. a warm-up of what it added
  start = t.transfer(fresh, loaded)          # a finetune's start: e.g. fresh layers

Composition: `init`, `apply`, `condition` and `transfer` run in the listed order, each
on the previous one's output; `trainable` splits the previous transform's trainable part
further, and the fixed parts are united, so a leaf any transform fixes stays fixed
(splits are by leaf, `freezing.merge` undoes any of them); `optimizer` wraps in order,
the last outermost.
What `init` adds must stay top-level entries of their own in each collection
(checkpoints, the EMA and resume carry them as any variable), and `apply` removes the
params among them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import optax

from gantransfer_jax import freezing

Params = dict[str, Any]
Variables = dict[str, Params]  # {'params': ..., other collections: ...}


class Transform(Protocol):
  """One transfer transform over one network's params (see the module docstring).

  Attributes:
    network: `gan.GENERATOR` or `gan.DISCRIMINATOR`.
    adds: the top-level names its `init` adds.
  """

  network: str
  adds: tuple[str, ...]

  def init(self, variables: Variables, rngs: dict[str, Any]) -> Variables:
    """Top-level entries to add to the network's `variables`, per collection (may be
    empty); `rngs` are the network's own init rngs (`Gan.init_rngs`)."""

  def apply(self, params: Params) -> Params:
    """The params the network sees: what `init` added is consumed and removed."""

  def condition(self, params: Params, state: Params, cond: Any, batch: int,
                train: bool) -> tuple[Any, Params]:
    """(what the network takes for the condition `cond` of a `batch`, the network's
    updated state): an embedding of it, or `cond` as it is."""

  def trainable(self, params: Params) -> tuple[Params, Params]:
    """(trainable, fixed): every leaf of `params` in exactly one of the two."""

  def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The optimizer of the trainable part (most transforms return `tx`)."""

  def transfer(self, fresh: Params, loaded: Params) -> Params:
    """The params a finetune starts from: `loaded` (the source checkpoint's, as the
    family maps them, with what the transforms add where the source has it) with what
    this transform takes from `fresh` (a new init's)."""


class Identity:
  """Defaults for a transform: adds nothing, changes nothing, fixes nothing."""

  network: str
  adds: tuple[str, ...] = ()

  def init(self, variables: Variables, rngs: dict[str, Any]) -> Variables:
    del variables, rngs
    return {}

  def apply(self, params: Params) -> Params:
    return params

  def condition(self, params: Params, state: Params, cond: Any, batch: int,
                train: bool) -> tuple[Any, Params]:
    del params, batch, train
    return cond, state

  def trainable(self, params: Params) -> tuple[Params, Params]:
    return params, {}

  def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    return tx

  def transfer(self, fresh: Params, loaded: Params) -> Params:
    """What it adds and the source lacks starts as initialised (a new modulation)."""
    return {**{name: fresh[name] for name in self.adds if name not in loaded}, **loaded}


def of(transforms: Sequence[Transform], network: str) -> list[Transform]:
  return [t for t in transforms if t.network == network]


def init(transforms: Sequence[Transform], network: str, variables: Variables,
         rngs: dict[str, Any]) -> Variables:
  """`variables` with what each of `network`'s transforms adds."""
  for transform in of(transforms, network):
    for collection, extra in transform.init(variables, rngs).items():
      held = variables.get(collection, {})
      clash = sorted(set(extra) & set(held))
      if clash:
        raise ValueError(f"transfer: {type(transform).__name__} adds {', '.join(clash)}, "
                         f"which the {collection} already hold (a transform listed twice?)")
      variables = {**variables, collection: {**held, **extra}}
  return variables


def added(transforms: Sequence[Transform], network: str) -> tuple[str, ...]:
  """The top-level names `network`'s transforms add to its params."""
  return tuple(name for t in of(transforms, network) for name in t.adds)


def apply(transforms: Sequence[Transform], network: str, params: Params) -> Params:
  for transform in of(transforms, network):
    params = transform.apply(params)
  return params


def condition(transforms: Sequence[Transform], network: str, params: Params, state: Params,
              cond: Any, batch: int, train: bool) -> tuple[Any, Params]:
  for transform in of(transforms, network):
    cond, state = transform.condition(params, state, cond, batch, train)
  return cond, state


def trainable(transforms: Sequence[Transform], network: str,
              params: Params) -> tuple[Params, Params]:
  trainable_part, fixed = freezing.split(params, ())
  for transform in of(transforms, network):
    trainable_part, more = transform.trainable(trainable_part)
    fixed = freezing.merge(fixed, more)
  return trainable_part, fixed


def optimizer(transforms: Sequence[Transform], network: str,
              tx: optax.GradientTransformation) -> optax.GradientTransformation:
  for transform in of(transforms, network):
    tx = transform.optimizer(tx)
  return tx


def transfer(transforms: Sequence[Transform], network: str, fresh: Params,
             loaded: Params) -> Params:
  for transform in of(transforms, network):
    loaded = transform.transfer(fresh, loaded)
  return loaded
