"""Conditioning as a transform: the condition embeddings of DIP (paper 003) and of
class labels, G_emb and D_emb, for any family that declares them
(`Gan.condition_sites`: conditional StyleGAN2, every SNGAN).

A family's networks take an embedding beside z or the images (StyleGAN2's mapping
input and projection vector, SNGAN's conditional batch norms and projection): how it
enters is the family's architecture, and so is the embedding module each site names.
What is the same for every family lives here:

* init: the embedding's variables, drawn from the network's own init rngs under the
  site's name (`g_emb`, `d_emb`), where a network holding the module would keep them:
  checkpoints written when the networks held them load as they are.
* forward passes: `apply` takes the embedding out of what the network sees, and
  `condition` runs it, cond [B, cond_dim] -> the network's input [B, features] (with
  its state: SNGAN's D_emb advances a power iteration in train mode). A batch without
  a condition is an error, or a zero condition where the site allows it (an
  unconditional SNGAN embeds a constant).
* transfer: a finetune takes the source's embedding, leaf by leaf where its shape is
  the config's, the fresh init's where it is not (another prior, another number of
  classes); a source without one (an unconditional source) starts it as the site
  says: fresh, or at zero for a projection term, so that D's logit starts as the
  source's. The family adapts the rest of the network to the new input (StyleGAN2
  widens its mapping's first layer: `StyleGAN2Gan.transfer`).
* training: the embeddings train from the first step, as everything not frozen.

`registry` puts a config's condition transforms before every other, so a later
`fresh_g:g_emb` or `freeze_*` acts on what they start.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.transfer import base


def _keep_matching(fresh: base.Params, loaded: base.Params) -> base.Params:
  """`loaded`, with each leaf whose shape differs from `fresh`'s taken from `fresh`
  (G_emb's first layer on another prior or label set; its deeper layers carry over)."""
  flat_fresh = traverse_util.flatten_dict(fresh)
  flat = traverse_util.flatten_dict(loaded)
  for path, value in flat.items():
    if path in flat_fresh and np.shape(flat_fresh[path]) != np.shape(value):
      flat[path] = flat_fresh[path]
  return traverse_util.unflatten_dict(flat)


class _Embedding(nn.Module):
  """A site's module under the site's name, so that its variables sit where the
  network would hold them and draw the same rngs."""

  site: gan_lib.ConditionSite

  @nn.compact
  def __call__(self, cond: jax.Array, train: bool) -> jax.Array:
    module = self.site.module.clone(parent=self, name=self.site.name)
    return module(cond, train) if self.site.takes_train else module(cond)


@dataclasses.dataclass(frozen=True)
class Condition(base.Identity):
  """The condition embedding of `site` (see the module docstring)."""

  site: gan_lib.ConditionSite

  @property
  def network(self) -> str:
    return self.site.network

  @property
  def adds(self) -> tuple[str, ...]:
    return (self.site.name,)

  def _own(self, tree: base.Params) -> base.Params:
    """The site's part of each collection of `tree`."""
    return {collection: {self.site.name: entries[self.site.name]}
            for collection, entries in tree.items() if self.site.name in entries}

  def init(self, variables, rngs):
    del variables
    cond = jnp.zeros((1, self.site.cond_dim), jnp.float32)
    return _Embedding(self.site).init(rngs, cond, False)

  def apply(self, params):
    return {name: value for name, value in params.items() if name != self.site.name}

  def _checked(self, cond: jax.Array | None, batch: int) -> jax.Array:
    site = self.site
    if cond is None and not site.required:
      return jnp.zeros((batch, site.cond_dim), jnp.float32)
    if cond is None or cond.shape != (batch, site.cond_dim):
      raise ValueError(f"this {site.network} is conditional (dip.prior or num_classes): "
                       f"expected cond of shape [{batch}, {site.cond_dim}], got "
                       f"{None if cond is None else cond.shape}")
    return cond

  def condition(self, params, state, cond, batch, train):
    own_state = self._own(state)
    variables = {"params": {self.site.name: params[self.site.name]}, **own_state}
    embedding, cond = _Embedding(self.site), self._checked(cond, batch)
    if not (train and own_state):  # Nothing to advance.
      return embedding.apply(variables, cond, train), state
    out, updated = embedding.apply(variables, cond, train, mutable=list(own_state))
    return out, {**state, **{collection: {**state[collection], **entries}
                             for collection, entries in updated.items()}}

  def transfer(self, fresh, loaded):
    name, new = self.site.name, fresh[self.site.name]
    if name in loaded:
      start = _keep_matching(new, loaded[name])
    elif self.site.zero_when_new:
      start = jax.tree.map(np.zeros_like, new)
    else:
      start = new
    return {**loaded, name: start}


def from_family(gan: gan_lib.Gan) -> list[Condition]:
  """The family's condition transforms, G's first (none for an unconditional model)."""
  return [Condition(site) for site in gan.condition_sites()]
