"""The registry of model families: `config.model` -> what generic code may ask of it.

A `Family` owns a model family's construction (`build(config) -> gan.Gan`), the config
section holding its network fields and their defaults (the network module's
`CONFIG_DEFAULTS`; `default_section`), its capabilities (path length, style mixing,
conditioning, MineGAN, BSA, truncation, the minibatch-stddev group, AdaFM modulation),
its own config checks, and which other families' checkpoints it starts from. The train
loop, validation, checkpoints, the tasks, sampling and analysis ask it
(`families.get(config.model).supports_path_length`) instead of naming families, so a
new family is one `register` call: no edit to generic code.

Why one module for the four built-in entries rather than one beside each network
module: `models.gan` imports the network modules (inside its methods), so an entry
there that built a `gan.Gan` would import `gan` back, a cycle `tests/test_imports.py`
refuses. Here the entries sit above both: this module imports `gan` and the networks,
nothing under `models/` imports it.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import ml_collections

from gantransfer_jax.models import gan as gan_lib

Config = ml_collections.ConfigDict
ADAFM_KINDS = ("adafm", "fs", "none")


def _no_problems(config: Config) -> list[str]:
  del config
  return []


def _no_minibatch_std(config: Config) -> int:
  del config
  return 0


def _no_modulation(config: Config) -> bool:
  del config
  return False


def _no_defaults() -> dict[str, Any]:
  return {}


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family, as generic code sees it.

  Attributes:
    name: its `config.model`.
    build: config -> its `gan.Gan` (no MineGAN or BSA wrapper: `builder.build_gan`).
    config_section: the config section with its network fields (AdaFM reads `resnet`'s).
    defaults: () -> the fields of `config_section` as a new config starts them (the
      network module's `CONFIG_DEFAULTS`; presets change them); {} where the section is
      another family's (AdaFM).
    problems: config -> what keeps it from running (validation's message style), past
      the generic checks (section present, path length, conditioning); asked even
      when the section is missing.
    supports_path_length: the StyleGAN2 path-length regulariser (`loss.pl_weight`).
    supports_style_mixing: `gan.sample_mixed` at inference (`sample --mix`).
    mixes_styles_in_training: draws a second latent inside G (`loss.style_mixing_prob`),
      which a MineGAN miner would not see.
    conditional: takes a condition (DIP priors, class labels).
    supports_minegan: MineGAN may wrap it.
    has_generator_batch_stats: G normalises with batch statistics (what BSA adapts).
    supports_truncation: its sampling reads `truncation_psi` from its config section.
    minibatch_std_group: config -> D's minibatch-stddev group size (0: none).
    has_modulation: config -> G carries an AdaFM modulation (`analysis.modulation`).
    transfers_from: other families whose checkpoints its finetunes start from (AdaFM
      from a ResNet GAN); a checkpoint of this family also serves a preset that
      transfers from one of them.
    inherit_section: whether a finetune from one of its checkpoints inherits (and must
      match) the checkpoint's `config_section`, the fields that fix parameter shapes.
  """

  name: str
  build: Callable[[Config], gan_lib.Gan]
  config_section: str
  defaults: Callable[[], dict[str, Any]] = _no_defaults
  problems: Callable[[Config], list[str]] = _no_problems
  supports_path_length: bool = False
  supports_style_mixing: bool = False
  mixes_styles_in_training: bool = False
  conditional: bool = False
  supports_minegan: bool = False
  has_generator_batch_stats: bool = False
  supports_truncation: bool = False
  minibatch_std_group: Callable[[Config], int] = _no_minibatch_std
  has_modulation: Callable[[Config], bool] = _no_modulation
  transfers_from: tuple[str, ...] = ()
  inherit_section: bool = True


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
  if family.name in _REGISTRY:
    raise ValueError(f"model family {family.name!r} is already registered")
  _REGISTRY[family.name] = family
  return family


def unregister(name: str) -> None:
  """Removes a family (tests register toy ones)."""
  del _REGISTRY[name]


def names() -> tuple[str, ...]:
  """The registered families, in registration order."""
  return tuple(_REGISTRY)


def names_with(capability: str) -> tuple[str, ...]:
  """The registered families whose boolean `capability` field is true, in order (for
  messages that list the families a feature needs)."""
  return tuple(name for name, family in _REGISTRY.items() if getattr(family, capability))


def is_registered(name: str | None) -> bool:
  return name in _REGISTRY


def get(name: str | None) -> Family:
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(names())}")
  return _REGISTRY[name]


def lookup(name: str | None) -> Family | None:
  """`get`, or None for an unknown family (a config or checkpoint not yet validated)."""
  return _REGISTRY.get(name)


def can_start_from(model: str | None, source: str | None) -> bool:
  """Whether a `model` finetune may start from a `source` checkpoint of another family."""
  family = lookup(model)
  return family is not None and source in family.transfers_from


def serves_as(saved: str | None, expected: str) -> bool:
  """Whether a checkpoint of family `saved` is one of family `expected` for a preset
  that transfers from `expected` (an AdaFM run is a ResNet GAN)."""
  family = lookup(saved)
  return saved == expected or (family is not None and expected in family.transfers_from)


def default_section(name: str) -> Config:
  """A new config's section for family `name`: its `defaults`, as a ConfigDict."""
  defaults = get(name).defaults()
  if not defaults:
    raise ValueError(f"model family {name!r} owns no config section of its own")
  return ml_collections.ConfigDict(dict(defaults))


def set_truncation_psi(config: Config, psi: float) -> None:
  """Sets the truncation of `config`'s sampling in place, where its family has one."""
  family = lookup(config.get("model"))
  if family is not None and family.supports_truncation:
    config[family.config_section].truncation_psi = psi


# ---- The built-in families ----------------------------------------------------------


def _defaults_of(network_module: str) -> Callable[[], dict[str, Any]]:
  """`gantransfer_jax.models.<network_module>.CONFIG_DEFAULTS`, imported when asked, as
  the build functions import their networks."""
  return lambda: importlib.import_module(
      f"gantransfer_jax.models.{network_module}").CONFIG_DEFAULTS


def _build_stylegan2(config: Config) -> gan_lib.Gan:
  from gantransfer_jax.models import stylegan2  # pylint: disable=g-import-not-at-top

  cfg = config.stylegan2
  cond_dim = gan_lib.condition_dim(config)
  # Configs saved before the DIP variant have no embedding_dim: the paper's 512.
  embedding_dim = cfg.get("embedding_dim") or 512
  # Configs saved before conv_clamp was a field ran with the official 256.
  conv_clamp = cfg.get("conv_clamp", stylegan2.DEFAULT_CONV_CLAMP)
  precision = dict(dtype=stylegan2.mixed_precision_dtype(cfg.get("mixed_precision")),
                   num_fp16_res=cfg.get("num_fp16_res", 0))
  remat = stylegan2.remat_networks(cfg.get("remat") or "")
  generator = stylegan2.Generator(
      resolution=config.resolution, z_dim=cfg.z_dim, w_dim=cfg.w_dim,
      mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base,
      channel_max=cfg.channel_max, conv_clamp=conv_clamp, conditional=bool(cond_dim),
      embedding_dim=embedding_dim, remat="synthesis" in remat, **precision)
  discriminator = stylegan2.Discriminator(
      resolution=config.resolution, channel_base=cfg.channel_base,
      channel_max=cfg.channel_max, mbstd_group_size=cfg.mbstd_group_size,
      conv_clamp=conv_clamp, conditional=bool(cond_dim), remat="discriminator" in remat,
      **precision)
  return gan_lib.StyleGAN2Gan(generator, discriminator, config, cond_dim=cond_dim)


def _resnet_discriminator(config: Config):
  from gantransfer_jax.models import resnet_gan  # pylint: disable=g-import-not-at-top

  return resnet_gan.ResNetDiscriminator(config.resolution, nf=config.resnet.nf)


def _build_resnet(config: Config) -> gan_lib.Gan:
  from gantransfer_jax.models import resnet_gan  # pylint: disable=g-import-not-at-top

  cfg = config.resnet
  generator = resnet_gan.ResNetGenerator(config.resolution, z_dim=cfg.z_dim, nf=cfg.nf)
  return gan_lib.ResNetGan(generator, _resnet_discriminator(config), config)


def _build_adafm(config: Config) -> gan_lib.Gan:
  from gantransfer_jax.models import smallhead  # pylint: disable=g-import-not-at-top

  cfg, head = config.resnet, config.adafm
  generator = smallhead.AdaFMGenerator(
      config.resolution, z_dim=cfg.z_dim, nf=cfg.nf, num_general_groups=head.general_g,
      head_features=head.head_features, style_dim=head.style_dim,
      mapping_layers=head.mapping_layers)
  return gan_lib.AdaFMGan(generator, _resnet_discriminator(config), config)


def _build_sngan(config: Config) -> gan_lib.Gan:
  from gantransfer_jax.models import sngan  # pylint: disable=g-import-not-at-top

  cfg = config.sngan
  optional = lambda multipliers: tuple(multipliers) if multipliers else None
  generator = sngan.Generator(
      resolution=config.resolution, z_dim=cfg.z_dim, embedding_dim=cfg.embedding_dim,
      width=cfg.g_width, channel_multipliers=optional(cfg.g_multipliers),
      hierarchical_z=cfg.hierarchical_z)
  discriminator = sngan.ProjectionDiscriminator(
      resolution=config.resolution, width=cfg.d_width,
      channel_multipliers=optional(cfg.d_multipliers))
  return gan_lib.SNGan(generator, discriminator, config,
                       cond_dim=gan_lib.condition_dim(config))


def _resnet_problems(config: Config) -> list[str]:
  if config.get("freeze_d"):
    return ["for the ResNet GANs freeze D's groups with adafm.general_d, not freeze_d"]
  return []


def _adafm_problems(config: Config) -> list[str]:
  problems = []
  adafm = config.get("adafm")
  if adafm is None or adafm.get("kind") not in ADAFM_KINDS:
    problems.append(f"model 'adafm' needs config.adafm.kind in {', '.join(ADAFM_KINDS)}")
  elif adafm.warmup_steps < 0:
    problems.append(f"adafm.warmup_steps must be >= 0, got {adafm.warmup_steps}")
  return problems + _resnet_problems(config)


def _adafm_has_modulation(config: Config) -> bool:
  """Kind 'none' (SmallHead) has no modulation."""
  return (config.get("adafm") or {}).get("kind") in ("adafm", "fs")


# Registration order is the order messages list the families in ("valid: ...").
register(Family(
    name="stylegan2", build=_build_stylegan2, config_section="stylegan2",
    defaults=_defaults_of("stylegan2"), supports_path_length=True, supports_style_mixing=True,
    mixes_styles_in_training=True,
    conditional=True, supports_minegan=True, supports_truncation=True,
    minibatch_std_group=lambda config: config.stylegan2.mbstd_group_size))
register(Family(
    name="resnet", build=_build_resnet, config_section="resnet", defaults=_defaults_of("resnet_gan"),
    problems=_resnet_problems, supports_minegan=True))
# AdaFM's checkpoints pass on no section (as before the registry): its transfer reads a
# ResNet GAN's G, so its finetunes start from `resnet` checkpoints, whose section is.
register(Family(
    name="adafm", build=_build_adafm, config_section="resnet", problems=_adafm_problems,
    supports_style_mixing=True, has_modulation=_adafm_has_modulation,
    transfers_from=("resnet",), inherit_section=False))
register(Family(
    name="sngan", build=_build_sngan, config_section="sngan", defaults=_defaults_of("sngan"),
    conditional=True, has_generator_batch_stats=True))
