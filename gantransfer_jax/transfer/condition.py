"""Conditioning as a transform: the condition embeddings of DIP (paper 003) and of
class labels, G_emb and D_emb, over any family that declares them
(`Gan.condition_sites`: conditional StyleGAN2, every SNGAN).

A condition embedding is a top-level entry of its network's params (`g_emb`, `d_emb`)
that maps the condition (a prior C(x), a one-hot label) to what the network takes in
(StyleGAN2's mapping input and projection vector, SNGAN's conditional batch norms and
projection). How it enters the network is the family's architecture, so the modules
stay in the family's networks; what is the same for every family lives here:

* transfer: a finetune takes the source's embedding, leaf by leaf where its shape is
  the config's, the fresh init's where it is not (another prior, another number of
  classes); a source without one (an unconditional source) starts it as the site
  says: fresh, or at zero for a projection term, so that D's logit starts as the
  source's. The family adapts the rest of the network to the new input (StyleGAN2
  widens its mapping's first layer: `StyleGAN2Gan.transfer`).
* training: the embeddings train from the first step, as everything not frozen.

`registry` adds a config's condition transforms before every other, so a later
`fresh_g:g_emb` or `freeze_*` acts on what they start.
"""

from __future__ import annotations

import dataclasses

import jax
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


@dataclasses.dataclass(frozen=True)
class Condition(base.Identity):
  """The condition embedding `site.name` of `site.network` (see the module docstring)."""

  site: gan_lib.ConditionSite

  @property
  def network(self) -> str:
    return self.site.network

  @property
  def adds(self) -> tuple[str, ...]:
    # The family's init creates it (its networks run it); declared so that the wrapper
    # hands it to `transfer` below rather than to the family's.
    return (self.site.name,)

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
