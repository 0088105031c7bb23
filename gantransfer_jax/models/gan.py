"""One interface over the model families, so one train step serves them all.

A `Gan` wraps a generator and a discriminator (flax modules) and says how a family is
initialised, run while training, sampled at inference and transferred, and what the
transfer transforms (`gantransfer_jax.transfer`) may act on: its groups of layers (what
freezing counts), the kernels a modulation rewrites, the transforms its own config
fields ask for:

  family     generator                          discriminator            paper
  stylegan2  StyleGAN2 (mapping + synthesis)    StyleGAN2 resnet D       001, 004, 003
  resnet     GAN_stability ResNet G             GAN_stability ResNet D   002 (its source)
  adafm      SmallHead + frozen ResNet groups   GAN_stability ResNet D   002
  sngan      SNGAN/BigGAN G with cond. BN       projection D             003, 001 (CIFAR)

Variables are split into trainable `params` and everything else, the family's *state*
(`{'stats': {'w_avg'}}` for StyleGAN2, `{'batch_stats': ...}` for SNGAN's batch norm and
spectral-norm power iterations, `{}` for the ResNet families). The train step carries
state beside the params; `variables(params, state)` rebuilds what `apply` wants.

Conditioning: `cond` is None for unconditional models and a float [B, cond_dim] for
conditional `sngan` and `stylegan2` ones: a data instance prior C(x) (DIP) or a one-hot
class label (conditional CIFAR track). An unconditional `sngan` (cond_dim 0) sees a
constant zero condition, which makes its projection term vanish: the plain SNGAN
baseline of paper 003. The networks take the condition's embeddings, G_emb(cond) and
D_emb(cond); `condition_sites` names the embedding modules, which `transfer.condition`
holds and runs, so the forward passes below see embeddings where a family has sites
(`builder.build_gan` always puts such a family behind them).

`models.families` builds each family's `Gan` and says what the family supports.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gantransfer_jax import adafm as adafm_lib
from gantransfer_jax import freezing
from gantransfer_jax import losses

Array = jax.Array
Params = Any
State = dict[str, Any]
Prefix = tuple[str, ...]
# A group of layers: the parameter prefixes it holds (e.g. (('resnet_3',), ('conv_img',)),
# or StyleGAN2's (('synthesis', 'b32'),)).
Group = tuple[Prefix, ...]
# (transform name, its argument, the config field that asks for it): see `config_transforms`.
ConfigTransform = tuple[str, str, str]

# The two networks, as the transfer transforms and the train step name them.
GENERATOR = "generator"
DISCRIMINATOR = "discriminator"

# Parameter names of the condition embeddings G_emb and D_emb (DIP, class labels).
G_EMBEDDING = "g_emb"
D_EMBEDDING = "d_emb"


@dataclasses.dataclass(frozen=True)
class ModulationSite:
  """The kernels of G that AdaFM / Filter Selection modulate (`transfer.modulation`).

  Attributes:
    scope: the subtree of G's params they sit in (() = all of G); the modulation
      mirrors the paths below it.
    layers: names of the conv modules whose kernel is modulated, wherever they sit.
    kernel: the kernel's parameter name in each of them (HWIO).
  """
  scope: Prefix
  layers: tuple[str, ...]
  kernel: str = "kernel"


@dataclasses.dataclass(frozen=True)
class ConditionSite:
  """A condition embedding of one network, DIP's G_emb or D_emb: the module that maps
  the condition to what the network takes beside z or the images (`transfer.condition`
  holds and runs it).

  Attributes:
    network: `GENERATOR` or `DISCRIMINATOR`.
    name: its variables' top-level name in the network's (`G_EMBEDDING`, `D_EMBEDDING`).
    module: the flax module, condition [B, cond_dim] -> embedding [B, features]
      (called with `train` too when `takes_train`).
    cond_dim: the condition's width.
    features: the embedding's width.
    takes_train: its call takes `train` (a spectral norm's power iteration).
    required: a batch without a condition is an error; else a zero condition stands in
      (an unconditional SNGAN embeds a constant).
    zero_when_new: how a finetune from a source without it starts it: at zero (a
      projection term, so that D starts as the source's) or else as freshly initialised.
  """
  network: str
  name: str
  module: Any
  cond_dim: int
  features: int
  takes_train: bool = False
  required: bool = True
  zero_when_new: bool = False


def variables(params: Params, state: State) -> dict[str, Any]:
  return {"params": params, **state}


def split_variables(all_variables: dict[str, Any]) -> tuple[Params, State]:
  state = {name: value for name, value in all_variables.items() if name != "params"}
  return all_variables["params"], state


@dataclasses.dataclass(frozen=True, eq=False)
class Gan:
  """Base: a pair whose generator is `G(z)` and discriminator `D(x)`, or `G(z, e)` and
  `D(x, e)` with the condition's embeddings e (see the module docstring).

  Subclasses override what differs. Every method is pure and traceable.
  """

  generator: Any
  discriminator: Any
  config: ml_collections.ConfigDict
  cond_dim: int = 0

  @property
  def z_dim(self) -> int:
    return self.generator.z_dim

  @property
  def resolution(self) -> int:
    return self.config.resolution

  # ---- Initialisation and transfer ----

  def init_rngs(self, key: Array) -> dict[str, dict[str, Array]]:
    """{network: its init's rngs}: the transforms' `init` draws from them too, so that
    what they add starts as it would inside the network."""
    k_g, k_noise, k_d = jax.random.split(key, 3)
    return {GENERATOR: {"params": k_g, "noise": k_noise}, DISCRIMINATOR: {"params": k_d}}

  # How `init` traces the networks: the batch, and the keywords of their call.
  _INIT_BATCH = 1
  _INIT_KWARGS = {}

  def _condition_placeholders(self, network: str) -> tuple[Array, ...]:
    """Zero embeddings for `network`'s condition sites (what its init traces with)."""
    return tuple(jnp.zeros((self._INIT_BATCH, site.features), jnp.float32)
                 for site in self.condition_sites() if site.network == network)

  def init(self, key: Array) -> tuple[dict[str, Any], dict[str, Any]]:
    """(generator variables, discriminator variables) of the networks (the condition
    embeddings are the transforms': `transfer.wrapper.TransferGan.init`)."""
    rngs = self.init_rngs(key)
    batch = self._INIT_BATCH
    z = jnp.zeros((batch, self.z_dim), jnp.float32)
    images = jnp.zeros((batch, self.resolution, self.resolution, 3), jnp.float32)
    return (self.generator.init(rngs[GENERATOR], z, *self._condition_placeholders(GENERATOR),
                                **self._INIT_KWARGS),
            self.discriminator.init(rngs[DISCRIMINATOR], images,
                                    *self._condition_placeholders(DISCRIMINATOR),
                                    **self._INIT_KWARGS))

  def transfer(self, fresh: dict[str, Any], pretrained: dict[str, Any]) -> dict[str, Any]:
    """The train-state fields a finetune starts from.

    Args:
      fresh: a freshly initialised model's 'g_params', 'g_state', 'd_params', 'd_state'.
      pretrained: `checkpoints.restore_params` of the source checkpoint.

    Default: the pretrained G, G_ema, G state and D as they are (TransferGAN, FreezeD).
    State collections the source lacks come from the fresh model: checkpoints written
    before the model families kept only StyleGAN2's w_avg, not its constant noise maps.
    """
    return {"g_params": pretrained["generator"], "g_ema_params": pretrained["generator_ema"],
            "g_state": {**fresh["g_state"], **pretrained["generator_state"]},
            "d_params": pretrained["discriminator"],
            "d_state": {**fresh["d_state"], **pretrained["discriminator_state"]}}

  # ---- What transfer transforms act on (`gantransfer_jax.transfer`) ----

  def generator_groups(self) -> list[Group]:
    """G's groups of layers from the image side: what `freeze_g:N` counts ([]: none)."""
    return []

  def discriminator_groups(self) -> list[Group]:
    """D's groups of layers from the image side: what FreezeD's `freeze_d:N` counts."""
    return []

  def modulation_site(self) -> ModulationSite | None:
    """The kernels AdaFM / FS modulate (`config.transfer = 'adafm'`); None: none."""
    return None

  def condition_sites(self) -> list[ConditionSite]:
    """The condition embeddings its networks take (`transfer.condition`; []: none). With
    any, `cond` in the forward passes below is their output, not the condition:
    `builder.build_gan` puts the family behind them."""
    return []

  def config_transforms(self) -> list[ConfigTransform]:
    """The transforms the family's own config fields ask for, before `config.transfer`'s:
    by default FreezeD's `config.freeze_d` (a count of 0 adds none)."""
    return [("freeze_d", str(self.config.get("freeze_d", 0) or 0), "freeze_d")]

  def trainable(self, network: str, params: Params) -> tuple[Params, Params]:
    """(trainable, fixed) parts of `network`'s params: the optimizer sees the first.

    Everything trains here; `builder.build_gan` wraps a family whose config lists
    transfer transforms in `transfer.wrapper.TransferGan`, which splits per transform.
    """
    del network
    return freezing.split(params, ())

  def generator_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The optimizer of G's trainable params (a modulation adds its warm-up)."""
    return tx

  def discriminator_optimizer(self, tx: optax.GradientTransformation
                              ) -> optax.GradientTransformation:
    """The optimizer of D's trainable params."""
    return tx

  def network_params(self, network: str, params: Params) -> Params:
    """The parameters `network`'s flax module sees (transforms applied): for callers
    that run `generator.apply` themselves (DIP's inversion and edits)."""
    del network
    return params

  def embed_condition(self, network: str, params: Params, state: State,
                      cond: Array) -> Array:
    """What `network` takes for the condition `cond` in inference mode: DIP's
    G_emb(prior) (`transfer.condition`); the condition itself without an embedding."""
    del network, params, state
    return cond

  # ---- Forward passes ----

  def generate(self, g_params: Params, g_state: State, z: Array, cond: Array | None,
               key: Array) -> tuple[Array, State]:
    """Training-mode generation: (images, updated state)."""
    del cond
    images = self.generator.apply(variables(g_params, g_state), z, rngs={"noise": key})
    return images, g_state

  def discriminate(self, d_params: Params, d_state: State, images: Array,
                   cond: Array | None) -> tuple[Array, State]:
    """Training-mode logits [B] and updated state."""
    del cond
    return self.discriminator.apply(variables(d_params, d_state), images), d_state

  def sample(self, g_params: Params, g_state: State, z: Array, cond: Array | None,
             key: Array) -> Array:
    """Inference-mode images (what evaluation and sample grids show)."""
    return self.generate(g_params, g_state, z, cond, key)[0]


class StyleGAN2Gan(Gan):
  """StyleGAN2: style mixing and the w_avg update while training; truncation at sampling.

  With `cond_dim` > 0 it is DIP's StyleGAN2 variant (`models.stylegan2`): G's mapping
  and D's projection term take the condition's embeddings; style mixing keeps each
  sample's embedding for its second latent, as StyleGAN2-ADA's conditional loss does.
  """

  def _cond(self, cond: Array | None) -> Array | None:
    if self.cond_dim and cond is None:
      raise ValueError("this StyleGAN2 is conditional (dip.prior or num_classes): pass the "
                       "condition's embedding (a TransferGan computes it from cond)")
    return cond if self.cond_dim else None

  def condition_sites(self) -> list[ConditionSite]:
    """G_emb and D_emb of the DIP variant; a source without them starts D_emb at zero,
    so the projection term starts at 0 (its gradient does not)."""
    from gantransfer_jax.models import stylegan2  # pylint: disable=g-import-not-at-top

    if not self.cond_dim:
      return []
    width = self.generator.embedding_dim
    return [ConditionSite(GENERATOR, G_EMBEDDING, stylegan2.PriorEmbedding(width),
                          self.cond_dim, width),
            ConditionSite(DISCRIMINATOR, D_EMBEDDING,
                          stylegan2.projection_embedding(self.discriminator), self.cond_dim,
                          self.discriminator.feature_dim, zero_when_new=True)]

  def transfer(self, fresh, pretrained):
    """As TransferGAN; a conditional model from an unconditional source (DIP from a
    Primitives-PS or converted checkpoint) gets its condition pathways such that it
    starts as the very function the source computes:

    * G: a fresh G_emb (`transfer.condition`), and here `mapping/fc0` widened for its
      input: the z rows are the source's, rescaled by sqrt(new fan-in / z_dim) to undo
      the equalized-lr gain's change, the embedding rows are zero (trained from the
      first step on).
    * D: D_emb is zero (`condition_sites`), so the projection term starts at 0.

    The paper does not say how its FFHQ models took the new inputs; this choice keeps
    the pretrained samples intact at step 0. A conditional source keeps its
    embeddings unless their shapes differ (another prior or label set: fresh ones).
    `TransferGan` hands G_emb and D_emb to their transforms: this method sees neither.
    """
    if not self.cond_dim and G_EMBEDDING in pretrained["generator"]:
      raise ValueError("init_checkpoint is a conditional StyleGAN2 (DIP priors or labels) "
                       "but this config is unconditional; set dip.prior or num_classes")
    loaded = super().transfer(fresh, pretrained)
    for name in ("g_params", "g_ema_params"):
      loaded[name] = _widen_mapping_input(fresh["g_params"], loaded[name], self.z_dim)
    return loaded

  def map_latents(self, g_vars, z: Array, cond: Array | None, key: Array,
                  update_w_avg: bool) -> tuple[Array, State]:
    """z -> ws with style mixing, as the official loss does for every generated batch."""
    from gantransfer_jax.models import stylegan2  # pylint: disable=g-import-not-at-top

    generator = self.generator
    cond = self._cond(cond)
    k_z2, k_mix = jax.random.split(key)
    ws, mutated = generator.apply(g_vars, z, cond, update_w_avg=update_w_avg,
                                  method=generator.map, mutable=["stats"])
    mixing_prob = self.config.loss.style_mixing_prob
    if mixing_prob > 0:
      z_other = jax.random.normal(k_z2, z.shape, z.dtype)
      ws_other = generator.apply(g_vars, z_other, cond, method=generator.map)
      ws = stylegan2.style_mix(k_mix, ws, ws_other, mixing_prob)
    return ws, {**g_vars, **mutated}

  def synthesize(self, g_vars, ws: Array, key: Array) -> Array:
    generator = self.generator
    return generator.apply(g_vars, ws, method=generator.synthesize, rngs={"noise": key})

  def generate(self, g_params, g_state, z, cond, key):
    k_map, k_noise = jax.random.split(key)
    ws, g_vars = self.map_latents(variables(g_params, g_state), z, cond, k_map,
                                  update_w_avg=True)
    return self.synthesize(g_vars, ws, k_noise), split_variables(g_vars)[1]

  def discriminate(self, d_params, d_state, images, cond):
    return self.discriminator.apply(variables(d_params, d_state), images,
                                    self._cond(cond)), d_state

  def path_length_penalty(self, g_params, g_state, z: Array, cond: Array | None, key: Array,
                          pl_mean: Array):
    """(penalty, new pl_mean) of the StyleGAN2 path-length regulariser on latents z
    (and conditions `cond`, for a conditional model)."""
    k_map, k_noise, k_dir = jax.random.split(key, 3)
    g_vars = variables(g_params, g_state)
    ws, _ = self.map_latents(g_vars, z, cond, k_map, update_w_avg=False)
    return losses.path_length_penalty(
        lambda w: self.synthesize(g_vars, w, k_noise), ws, k_dir, pl_mean,
        decay=self.config.loss.pl_decay)

  def noise_mode(self, g_state: State) -> str:
    """Noise at inference: `config.stylegan2.noise_mode` ('random' when unset; training
    always draws it). 'const' needs the official-style fixed maps in G's state."""
    mode = self.config.stylegan2.get("noise_mode") or "random"
    _check_noise_consts(mode, g_state)
    return mode

  def sample(self, g_params, g_state, z, cond, key):
    return self.generator.apply(variables(g_params, g_state), z, self._cond(cond),
                                truncation_psi=self.config.stylegan2.truncation_psi,
                                noise_mode=self.noise_mode(g_state), rngs={"noise": key})

  def sample_mixed(self, g_params, g_state, z, z_mix, crossover, key, cond=None,
                   cond_mix=None) -> Array:
    """Style mixing at inference: ws of (z, cond), with the ws of (z_mix, cond_mix)
    from layer `crossover` (default: half of them) on; truncation and noise as in
    `sample`."""
    generator = self.generator
    g_vars = variables(g_params, g_state)
    psi = self.config.stylegan2.truncation_psi
    ws = generator.apply(g_vars, z, self._cond(cond), truncation_psi=psi, method=generator.map)
    ws_mix = generator.apply(g_vars, z_mix, self._cond(cond_mix), truncation_psi=psi,
                             method=generator.map)
    crossover = ws.shape[1] // 2 if crossover is None else crossover
    layer = jnp.arange(ws.shape[1])[None, :, None]
    return generator.apply(g_vars, jnp.where(layer < crossover, ws, ws_mix),
                           noise_mode=self.noise_mode(g_state), method=generator.synthesize,
                           rngs={"noise": key})

  def discriminator_groups(self) -> list[Group]:
    """FreezeD counts D's blocks from the highest resolution (NOTES §6); the epilogue b4
    is last."""
    from gantransfer_jax.models import stylegan2  # pylint: disable=g-import-not-at-top

    return [((name,),) for name in stylegan2.discriminator_block_names(self.resolution)]

  def generator_groups(self) -> list[Group]:
    """`freeze_g` counts G's synthesis blocks from the highest resolution, each with its
    torgb, as FreezeD counts D's; the mapping network (and DIP's G_emb) always trains."""
    from gantransfer_jax.models import stylegan2  # pylint: disable=g-import-not-at-top

    return [(("synthesis", name),) for name in stylegan2.synthesis_block_names(self.resolution)]

  def modulation_site(self) -> ModulationSite:
    """The synthesis blocks' 3x3 convs (`conv0`, `conv1`); not torgb, not the mapping."""
    return ModulationSite(scope=("synthesis",), layers=("conv0", "conv1"), kernel="weight")


def _check_noise_consts(noise_mode: str, g_state: State) -> None:
  if noise_mode == "const" and "noise_consts" not in g_state:
    raise ValueError("noise_mode 'const' needs the generator's constant noise maps "
                     "('noise_consts' in its state), which this checkpoint lacks (it "
                     "predates them); use noise_mode 'random' or 'none'")


def set_noise_mode(config: ml_collections.ConfigDict, noise_mode: str,
                   g_state: State) -> None:
  """Makes `config` sample StyleGAN2 with `noise_mode` ('random', 'const', 'none'), in
  place; G's state must hold the constant maps for 'const'. Other families have no
  noise to choose: anything but 'random' is an error for them."""
  from gantransfer_jax.models import stylegan2  # pylint: disable=g-import-not-at-top

  if noise_mode not in stylegan2.NOISE_MODES:
    raise ValueError(f"noise_mode must be one of {', '.join(stylegan2.NOISE_MODES)}, got "
                     f"{noise_mode!r}")
  if config.model != "stylegan2":
    if noise_mode != "random":
      raise ValueError(f"noise_mode {noise_mode!r} applies to StyleGAN2 only, not to a "
                       f"{config.model!r} model")
    return
  _check_noise_consts(noise_mode, g_state)
  config.stylegan2.noise_mode = noise_mode


def _widen_mapping_input(fresh: Params, loaded: Params, z_dim: int) -> Params:
  """An unconditional StyleGAN2 G's params (`mapping/fc0` takes z alone) with fc0
  widened to take G_emb's output too, as `fresh`'s does (see `StyleGAN2Gan.transfer`);
  any other G's as they are."""
  fc0 = dict(loaded["mapping"]["fc0"])
  weight = np.asarray(fc0["weight"])
  width = fresh["mapping"]["fc0"]["weight"].shape[0]
  if weight.shape[0] != z_dim or width == z_dim:
    return loaded
  # Equalized lr multiplies the stored weight by 1 / sqrt(fan-in) at run time.
  z_rows = weight * np.sqrt(width / z_dim)
  fc0["weight"] = np.concatenate([z_rows, np.zeros((width - z_dim, weight.shape[1]),
                                                    weight.dtype)])
  return {**loaded, "mapping": {**loaded["mapping"], "fc0": fc0}}


def _general_split(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """AdaFM's GmDn: (general_g, general_d) groups nearest the image (0, 0 when unset)."""
  section = config.get("adafm") or {}
  return int(section.get("general_g", 0) or 0), int(section.get("general_d", 0) or 0)


_RESNET_MODULATED = ModulationSite(scope=(), layers=adafm_lib.MODULATED_LAYERS)


class ResNetGan(Gan):
  """GAN_stability's ResNet GAN; GmDn freezes the groups nearest the image in G and D.

  `config.adafm.general_g` / `general_d` (0 when absent) give m and n: with the original
  head this is the paper's GPHead ablation; n alone is FreezeD for this family. AdaFM's
  modulation applies to the residual convs of every group (`config.transfer='adafm'`).
  """

  def generator_groups(self) -> list[Group]:
    from gantransfer_jax.models import resnet_gan  # pylint: disable=g-import-not-at-top

    return freezing.named_groups(resnet_gan.generator_group_names(self.resolution))

  def discriminator_groups(self) -> list[Group]:
    from gantransfer_jax.models import resnet_gan  # pylint: disable=g-import-not-at-top

    return freezing.named_groups(resnet_gan.discriminator_group_names(self.resolution))

  def modulation_site(self) -> ModulationSite:
    return _RESNET_MODULATED

  def config_transforms(self) -> list[ConfigTransform]:
    """GmDn from `adafm.general_g` / `general_d` (this family refuses `freeze_d`)."""
    general_g, general_d = _general_split(self.config)
    return [("freeze_g", str(general_g), "adafm.general_g"),
            ("freeze_d", str(general_d), "adafm.general_d")]

  def generate(self, g_params, g_state, z, cond, key):
    del cond, key
    return self.generator.apply(variables(g_params, g_state), z), g_state


GENERAL = "general"
HEAD = "head"


class AdaFMGan(Gan):
  """AdaFM (paper 002): a SmallHead over a pretrained G's frozen, modulated general part.

  G's own params are `{'head': ..., 'general': {resnet_k..., conv_img}}`. Its config asks
  for three transforms (`config_transforms`): the general part frozen (no gradient, no
  optimizer state), D's `general_d` groups nearest the image frozen, and, unless kind
  'none' (the SmallHead ablation), the AdaFM / FS modulation of the general part, kept
  beside them under 'modulation' and trained after `config.adafm.warmup_steps` (the head
  trains from the start). So `builder.build_gan` always wraps this family.
  """

  def _structure(self, flat_params: Params, general: Params | None = None) -> Params:
    """AdaFMGenerator's flat params -> {'head', 'general'}."""
    head = flat_params[HEAD]
    if general is None:
      general = {name: value for name, value in flat_params.items() if name != HEAD}
    return {HEAD: head, GENERAL: general}

  def _flat(self, g_params: Params) -> Params:
    """What AdaFMGenerator takes; the modulation is already applied (`TransferGan`)."""
    from gantransfer_jax.models import smallhead  # pylint: disable=g-import-not-at-top

    return smallhead.generator_params(g_params[HEAD], g_params[GENERAL])

  def init(self, key):
    g_vars, d_vars = super().init(key)
    return {**g_vars, "params": self._structure(g_vars["params"])}, d_vars

  def transfer(self, fresh, pretrained):
    """Fresh head; general part from the pretrained EMA G (as frozen in G and G_ema).

    The EMA weights are the better generator and the ones the authors sample with; the
    frozen part must be the same in G and G_ema, so both take them.
    """
    from gantransfer_jax.models import smallhead  # pylint: disable=g-import-not-at-top

    general = smallhead.general_part(pretrained["generator_ema"], self.resolution,
                                     self.config.adafm.general_g)
    g_params = self._structure({HEAD: fresh["g_params"][HEAD]}, general)
    return {"g_params": g_params, "g_ema_params": g_params, "g_state": {},
            "d_params": pretrained["discriminator"],
            "d_state": pretrained["discriminator_state"]}

  def generator_groups(self) -> list[Group]:
    """The general part first (the image side), then the head."""
    return [((GENERAL,),), ((HEAD,),)]

  def discriminator_groups(self) -> list[Group]:
    from gantransfer_jax.models import resnet_gan  # pylint: disable=g-import-not-at-top

    return freezing.named_groups(resnet_gan.discriminator_group_names(self.resolution))

  def modulation_site(self) -> ModulationSite:
    return ModulationSite(scope=(GENERAL,), layers=adafm_lib.MODULATED_LAYERS)

  def config_transforms(self) -> list[ConfigTransform]:
    """The general part frozen, D's `general_d` groups frozen, and `adafm.kind`'s
    modulation with its warm-up (none for kind 'none')."""
    _, general_d = _general_split(self.config)
    transforms = [("freeze_g", "1", "the general part"),
                  ("freeze_d", str(general_d), "adafm.general_d")]
    kind = self.config.adafm.kind
    if kind != "none":
      transforms.append((kind, str(self.config.adafm.warmup_steps), "adafm.kind"))
    return transforms

  def generate(self, g_params, g_state, z, cond, key):
    del cond
    images = self.generator.apply(variables(self._flat(g_params), g_state), z,
                                  rngs={"noise": key})
    return images, g_state

  def sample_mixed(self, g_params, g_state, z, z_mix, crossover, key, cond=None,
                   cond_mix=None) -> Array:
    """Style mixing: AdaIN layers from `crossover` (default: half) on take w(z_mix)
    (paper 002 Fig. 6). Unconditional: `cond` and `cond_mix` are ignored."""
    del cond, cond_mix
    if crossover is None:
      from gantransfer_jax.models import smallhead  # pylint: disable=g-import-not-at-top
      blocks = smallhead.first_general_group(self.resolution, self.config.adafm.general_g)
      crossover = smallhead.ADAIN_PER_BLOCK * blocks // 2
    return self.generator.apply(variables(self._flat(g_params), g_state), z, z_mix=z_mix,
                                crossover=crossover, rngs={"noise": key})


class SNGan(Gan):
  """SNGAN/BigGAN with conditional BN and a projection D (DIP, paper 003; CIFAR track).

  Both networks run in training mode while training: batch statistics normalise G, and
  spectral norm's power iteration advances. G's state advances once per G step (the D
  steps' fakes use batch statistics but do not update it); D's once per D step.
  """

  def init_rngs(self, key):
    k_g, k_d = jax.random.split(key)
    return {GENERATOR: {"params": k_g}, DISCRIMINATOR: {"params": k_d}}

  _INIT_BATCH = 2  # Batch norm's statistics of a single sample are degenerate.
  _INIT_KWARGS = {"train": False}

  def discriminator_groups(self) -> list[Group]:
    """FreezeD counts D's blocks from the image side."""
    from gantransfer_jax.models import sngan  # pylint: disable=g-import-not-at-top

    return [((f"blocks_{i}",),) for i in range(sngan.num_upsamplings(self.resolution) + 1)]

  def condition_sites(self) -> list[ConditionSite]:
    """G_emb and D_emb, conditional or not: an unconditional SNGAN embeds a constant
    zero condition of width 1 (G_emb's bias; a zero projection term)."""
    from gantransfer_jax.models import sngan  # pylint: disable=g-import-not-at-top

    cond_dim, required = max(self.cond_dim, 1), False
    return [ConditionSite(GENERATOR, G_EMBEDDING, sngan.prior_embedding(self.generator),
                          cond_dim, self.generator.embedding_dim, required=required),
            ConditionSite(DISCRIMINATOR, D_EMBEDDING,
                          sngan.projection_embedding(self.discriminator), cond_dim,
                          self.discriminator.feature_dim, takes_train=True,
                          required=required)]

  def generate(self, g_params, g_state, z, cond, key):
    del key
    images, mutated = self.generator.apply(variables(g_params, g_state), z, cond, train=True,
                                           mutable=["batch_stats"])
    return images, {**g_state, **mutated}

  def discriminate(self, d_params, d_state, images, cond):
    logits, mutated = self.discriminator.apply(variables(d_params, d_state), images, cond,
                                               train=True, mutable=["batch_stats"])
    return logits, {**d_state, **mutated}

  def sample(self, g_params, g_state, z, cond, key):
    del key
    return self.generator.apply(variables(g_params, g_state), z, cond, train=False)


def condition_dim(config: ml_collections.ConfigDict) -> int:
  """Width of the condition vector: the prior's features, the classes, or 0."""
  from gantransfer_jax import priors  # pylint: disable=g-import-not-at-top

  prior = (config.get("dip") or {}).get("prior") or ""
  if prior:
    if prior not in priors.FEATURE_DIMS:
      raise ValueError(f"dip.prior {prior!r} is unknown; valid: {sorted(priors.FEATURE_DIMS)}")
    return priors.FEATURE_DIMS[prior]
  return int(config.get("num_classes", 0) or 0)
