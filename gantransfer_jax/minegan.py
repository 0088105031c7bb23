"""MineGAN (Wang et al. 2020) as a transform of a `Gan`: a miner network before G.

A small MLP, the miner M, maps the latent z to the input of a pretrained generator, so
that G(M(z)) samples the region of G's output space nearest the target data. Training
has two stages (NOTES §10): stage 1 trains M and D with G frozen, stage 2 trains M, G
and D together. Paper 003 compares with it (its Table 2).

How it plugs into the toolkit (nothing in the train step knows about it):

* Parameters. M's params live in G's param tree, beside G's own top-level modules:
  `g_params = {**G's params, 'miner': M's params}`. So G_ema (an EMA of the whole
  tree), checkpoints, resume and sampling carry M without further code, and G's own
  freezing prefixes (FreezeD, AdaFM's general part) still name the same leaves.
* Forward passes. `MineGan` wraps the family's `Gan` and feeds `M(z)` wherever the
  family takes z: training, the path-length term, sampling (the sample grids, the
  `sample` command, `evaluate` and `select` all build their model with
  `builder.build_gan`, which wraps it when `config.minegan` is set).
* Stages. A step-dependent mask in G's optimizer: the miner's subtree has its own
  Adam; the rest of G sits behind `adafm.frozen_during_warmup`, which returns zero
  updates and leaves Adam's moments untouched for the first `stage1_steps` steps
  (so in stage 1, G is bit-identical to the source). One program, compiled once; the
  cost is that stage 1 still computes G's weight gradients (the miner's gradient
  needs the backward pass through G anyway).

The miner (NOTES §10 and the seed papers do not specify it, so this is our choice;
keep it in mind when comparing with paper 003's Table 2): a residual MLP of
`num_layers` dense layers of width z_dim, leaky ReLU 0.2 between them,
M(z) = z + MLP(z), its last layer initialised to zero. M is then exactly the identity
at initialisation: the first samples are the pretrained G's, and mining starts from
the source distribution rather than from a random warp of it. Width z_dim keeps M as
cheap as the mapping network's first layer. The stage-1 length is ours too (the
`minegan` preset: a quarter of the run).

Limitations (refused by `config_problems`): unconditional models only (DIP's samplers
call the generator directly and would bypass M), StyleGAN2 and the ResNet GAN, and no
StyleGAN2 style mixing while training (its second latent is drawn inside the family's
mapping and would not pass through M).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gantransfer_jax import adafm
from gantransfer_jax.models import families
from gantransfer_jax.models import gan as gan_lib

Array = jax.Array
Params = Any

MINER = "miner"
# G's trainable params other than the miner: one optimizer partition.
_GENERATOR = "generator"
# Folded into the init key for the miner, so that G and D initialise as without MineGAN.
_MINER_INIT_SALT = 7919


class Miner(nn.Module):
  """M(z) = z + MLP(z): `num_layers` dense layers of width z_dim, the last zero-initialised
  (M is the identity at initialisation)."""

  num_layers: int = 2

  @nn.compact
  def __call__(self, z: Array) -> Array:
    z_dim = z.shape[-1]
    h = z
    for i in range(self.num_layers - 1):
      h = nn.leaky_relu(nn.Dense(z_dim, name=f"fc{i}")(h), 0.2)
    last = nn.Dense(z_dim, kernel_init=nn.initializers.zeros, name=f"fc{self.num_layers - 1}")
    return z + last(h)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Attributes:
    stage1_steps: train steps of stage 1 (M and D; G frozen); stage 2 is the rest.
    num_layers: the miner's dense layers.
  """

  stage1_steps: int
  num_layers: int = 2


def spec_from_config(config: ml_collections.ConfigDict) -> Spec | None:
  """The miner `config.minegan` asks for, or None (no MineGAN)."""
  section = config.get("minegan")
  if not section:
    return None
  return Spec(stage1_steps=section.stage1_steps, num_layers=section.num_layers)


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """What keeps `config.minegan` from running (empty without a minegan section)."""
  section = config.get("minegan")
  if not section:
    return []
  problems = []
  stage1 = section.get("stage1_steps")
  if not isinstance(stage1, int) or stage1 < 0:
    problems.append(f"minegan.stage1_steps must be an integer >= 0 (the steps that train "
                    f"only the miner and D), got {stage1!r}")
  layers = section.get("num_layers")
  if not isinstance(layers, int) or layers < 1:
    problems.append(f"minegan.num_layers must be an integer >= 1, got {layers!r}")
  family = families.lookup(config.model)
  if family is None or not family.supports_minegan:
    problems.append(f"MineGAN supports models {', '.join(families.names_with('supports_minegan'))}, "
                    f"not {config.model!r}")
  if (config.get("dip") or {}).get("prior") or config.get("num_classes"):
    problems.append("MineGAN needs an unconditional model: unset dip.prior / num_classes "
                    "(DIP's samplers would bypass the miner)")
  if (family is not None and family.mixes_styles_in_training
      and config.loss.get("style_mixing_prob", 0.0) > 0):
    problems.append("MineGAN trains without style mixing (its second latent would bypass "
                    "the miner): set --config.loss.style_mixing_prob=0")
  return problems


def _without_miner(params: Params) -> Params:
  """The wrapped generator's own params, from a MineGAN G's param tree."""
  return {k: v for k, v in params.items() if k != MINER}


@dataclasses.dataclass(frozen=True, eq=False)
class MineGan(gan_lib.Gan):
  """`base` with the miner before its generator (see the module docstring).

  `generator` and `discriminator` are the base family's modules; calling
  `generator.apply` directly bypasses the miner, so use this class's methods.
  """

  base: gan_lib.Gan | None = None
  spec: Spec = Spec(stage1_steps=0)

  @classmethod
  def wrap(cls, base: gan_lib.Gan, spec: Spec) -> MineGan:
    return cls(base.generator, base.discriminator, base.config, base.cond_dim,
               base=base, spec=spec)

  @property
  def miner(self) -> Miner:
    return Miner(num_layers=self.spec.num_layers)

  def mine(self, g_params: Params, z: Array) -> Array:
    """M(z) with the miner of `g_params`."""
    return self.miner.apply({"params": g_params[MINER]}, z)

  # ---- Initialisation and transfer ----

  def init(self, key):
    g_vars, d_vars = self.base.init(key)
    z = jnp.zeros((1, self.z_dim), jnp.float32)
    miner = self.miner.init(jax.random.fold_in(key, _MINER_INIT_SALT), z)["params"]
    return {**g_vars, "params": {**g_vars["params"], MINER: miner}}, d_vars

  def transfer(self, fresh, pretrained):
    """The base family's transfer of G and D, and a fresh (identity) miner; a MineGAN
    source keeps its own miners (G's and G_ema's)."""
    base_fresh = {**fresh, "g_params": _without_miner(fresh["g_params"])}
    base_pretrained = {**pretrained,
                       "generator": _without_miner(pretrained["generator"]),
                       "generator_ema": _without_miner(pretrained["generator_ema"])}
    loaded = self.base.transfer(base_fresh, base_pretrained)
    fresh_miner = fresh["g_params"][MINER]
    for field, source in (("g_params", "generator"), ("g_ema_params", "generator_ema")):
      miner = pretrained[source].get(MINER, fresh_miner)
      loaded[field] = {**loaded[field], MINER: miner}
    return loaded

  def trainable(self, network, params):
    """The base family's split; the miner trains (no transform names it)."""
    return self.base.trainable(network, params)

  def discriminator_optimizer(self, tx):
    return self.base.discriminator_optimizer(tx)

  def network_params(self, network, params):
    if network == gan_lib.GENERATOR:
      params = _without_miner(params)
    return self.base.network_params(network, params)

  def generator_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The miner trains from step 0; the rest of G (the base family's optimizer) gets
    zero updates and keeps its Adam moments untouched during stage 1."""
    generator_tx = adafm.frozen_during_warmup(self.base.generator_optimizer(tx),
                                              self.spec.stage1_steps)
    labels = lambda params: {name: MINER if name == MINER else _GENERATOR for name in params}
    return optax.multi_transform({MINER: tx, _GENERATOR: generator_tx}, labels)

  # ---- Forward passes: the base family's, on M(z) ----

  def generate(self, g_params, g_state, z, cond, key):
    miner_free = _without_miner(g_params)
    return self.base.generate(miner_free, g_state, self.mine(g_params, z), cond, key)

  def discriminate(self, d_params, d_state, images, cond):
    return self.base.discriminate(d_params, d_state, images, cond)

  def sample(self, g_params, g_state, z, cond, key):
    return self.base.sample(_without_miner(g_params), g_state, self.mine(g_params, z),
                            cond, key)

  def path_length_penalty(self, g_params, g_state, z, cond, key, pl_mean):
    return self.base.path_length_penalty(_without_miner(g_params), g_state,
                                         self.mine(g_params, z), cond, key, pl_mean)

  @property
  def sample_mixed(self):
    """The base family's style mixing on M(z) and M(z_mix); an AttributeError (so
    `hasattr` is False) where the base family has none."""
    base_mixed = self.base.sample_mixed

    def sample_mixed(g_params, g_state, z, z_mix, crossover, key, cond=None,
                     cond_mix=None):
      return base_mixed(_without_miner(g_params), g_state, self.mine(g_params, z),
                        self.mine(g_params, z_mix), crossover, key, cond, cond_mix)

    return sample_mixed
