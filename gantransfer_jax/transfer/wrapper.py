"""`TransferGan`: a family's `Gan` behind its transfer transforms, the one place they act.

`builder.build_gan` wraps a family whose config lists transforms (`registry.from_config`)
in it, so every consumer of a `Gan` (the train step, sample grids, evaluation, the
`evaluate`, `select` and `sample` commands) sees the transformed parameters:

* init: the family's variables, plus what the transforms add (a 'modulation', the
  condition embeddings);
* forward passes: `generate`, `discriminate`, `sample`, `path_length_penalty` and
  `sample_mixed` run the family's on `apply`'s params, with what `condition` makes of
  the condition (G_emb(cond), D_emb(cond));
* training: `trainable` splits what the optimizer sees from what stays fixed, and the
  optimizers are the family's, wrapped by the transforms (a warm-up);
* transfer: the family's, with what the transforms add taken from the source
  checkpoint where it has it (a continued finetune); then each transform's `transfer`
  (what the source lacks: a fresh modulation, a zero D_emb; fresh layers: `fresh_d:b4`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gantransfer_jax import freezing
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.transfer import base

G, D = gan_lib.GENERATOR, gan_lib.DISCRIMINATOR


def _without(params: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
  return {name: value for name, value in params.items() if name not in names}


@dataclasses.dataclass(frozen=True, eq=False)
class TransferGan(gan_lib.Gan):
  """`base` behind `transforms` (see the module docstring). `generator` and
  `discriminator` are the base family's modules: calling their `apply` directly
  bypasses the transforms (`network_params` gives what they should see)."""

  base: gan_lib.Gan | None = None
  transforms: tuple[base.Transform, ...] = ()

  @classmethod
  def wrap(cls, family_gan: gan_lib.Gan, transforms) -> TransferGan:
    return cls(family_gan.generator, family_gan.discriminator, family_gan.config,
               family_gan.cond_dim, base=family_gan, transforms=tuple(transforms))

  def _seen(self, network: str, params):
    return base.apply(self.transforms, network, params)

  def _inputs(self, network: str, params, state, cond, batch: int, train: bool):
    """(what the network takes for `cond`, its updated state)."""
    return base.condition(self.transforms, network, params, state, cond, batch, train)

  # ---- Initialisation and transfer ----

  def init_rngs(self, key):
    return self.base.init_rngs(key)

  def init(self, key):
    rngs = self.init_rngs(key)
    g_vars, d_vars = self.base.init(key)
    return (base.init(self.transforms, G, g_vars, rngs[G]),
            base.init(self.transforms, D, d_vars, rngs[D]))

  def transfer(self, fresh, pretrained):
    g_added, d_added = base.added(self.transforms, G), base.added(self.transforms, D)
    loaded = self.base.transfer(
        {**fresh, "g_params": _without(fresh["g_params"], g_added),
         "d_params": _without(fresh["d_params"], d_added)},
        {**pretrained, "generator": _without(pretrained["generator"], g_added),
         "generator_ema": _without(pretrained["generator_ema"], g_added),
         "discriminator": _without(pretrained["discriminator"], d_added)})
    for field, source, network in (("g_params", "generator", G),
                                   ("g_ema_params", "generator_ema", G),
                                   ("d_params", "discriminator", D)):
      fresh_params = fresh["d_params" if network == D else "g_params"]
      # What the source lacks, each transform starts in its `transfer`.
      extras = {name: pretrained[source][name]
                for name in base.added(self.transforms, network) if name in pretrained[source]}
      loaded[field] = base.transfer(self.transforms, network, fresh_params,
                                    {**loaded[field], **extras})
    return loaded

  # ---- Training ----

  def trainable(self, network, params):
    trainable, fixed = self.base.trainable(network, params)
    trainable, more = base.trainable(self.transforms, network, trainable)
    return trainable, freezing.merge(fixed, more)

  def generator_optimizer(self, tx):
    return base.optimizer(self.transforms, G, self.base.generator_optimizer(tx))

  def discriminator_optimizer(self, tx):
    return base.optimizer(self.transforms, D, self.base.discriminator_optimizer(tx))

  def network_params(self, network, params):
    return self.base.network_params(network, self._seen(network, params))

  def embed_condition(self, network, params, state, cond):
    return self._inputs(network, params, state, cond, cond.shape[0], train=False)[0]

  # ---- Forward passes: the family's, on the transformed params and conditions ----

  def generate(self, g_params, g_state, z, cond, key):
    cond, g_state = self._inputs(G, g_params, g_state, cond, z.shape[0], train=True)
    return self.base.generate(self._seen(G, g_params), g_state, z, cond, key)

  def discriminate(self, d_params, d_state, images, cond):
    cond, d_state = self._inputs(D, d_params, d_state, cond, images.shape[0], train=True)
    return self.base.discriminate(self._seen(D, d_params), d_state, images, cond)

  def sample(self, g_params, g_state, z, cond, key):
    cond, _ = self._inputs(G, g_params, g_state, cond, z.shape[0], train=False)
    return self.base.sample(self._seen(G, g_params), g_state, z, cond, key)

  def path_length_penalty(self, g_params, g_state, z, cond, key, pl_mean):
    cond, g_state = self._inputs(G, g_params, g_state, cond, z.shape[0], train=True)
    return self.base.path_length_penalty(self._seen(G, g_params), g_state, z, cond, key,
                                         pl_mean)

  @property
  def sample_mixed(self):
    """The family's style mixing on the transformed params and conditions; an
    AttributeError where the family has none."""
    family_mixed = self.base.sample_mixed

    def sample_mixed(g_params, g_state, z, z_mix, crossover, key, cond=None, cond_mix=None):
      cond, _ = self._inputs(G, g_params, g_state, cond, z.shape[0], train=False)
      cond_mix, _ = self._inputs(G, g_params, g_state, cond_mix, z_mix.shape[0], train=False)
      return family_mixed(self._seen(G, g_params), g_state, z, z_mix, crossover, key,
                          cond=cond, cond_mix=cond_mix)

    return sample_mixed
