r"""Finetuning on a small real image set (papers 001-004; NOTES §2-§6).

Presets: `--config=configs/finetune.py:METHOD[,stylegan2][,quick]`

  StyleGAN2 (papers 001, 004), from a `ps_pretrain.py` checkpoint:
    scratch      random initialisation (+ DiffAugment): the papers' baseline.
    transfergan  start from `init_checkpoint`, finetune everything (TransferGAN).
    freezed      start from `init_checkpoint`, freeze the `freeze_d` highest-resolution
                 discriminator blocks (FreezeD).
    ada          random initialisation + adaptive ADA ('bgc', ada.kimg 500): StyleGAN2-ADA.
    transfergan_ada  TransferGAN + adaptive ADA with paper 004's transfer defaults
                 (StyleGAN2-ADA's resume settings: ada.kimg 100; no G_ema rampup, which
                 this toolkit never uses).
    diffaug_bcr  random initialisation + DiffAugment + bCR consistency regularisation,
                 weight 10 (paper 003's DiffAugment baseline).
    minegan      start from `init_checkpoint` with a miner MLP before G (MineGAN,
                 paper 003's Table 2 baseline): `minegan.stage1_steps` (a quarter of
                 the run) train the miner and D with G frozen, then all three train.
  AdaFM's ablation (paper 002, its Table 1), from a `ps_pretrain.py:resnet` checkpoint
  (or one converted from the authors' ImageNet model). All freeze the GmDn general
  part: G's `adafm.general_g` groups nearest the image, D's `adafm.general_d`:
    adafm        SmallHead + frozen general part adapted by AdaFM (trained after
                 `adafm.warmup_steps`).
    fs           the same with Filter Selection (rank-one AdaFM).
    smallhead    SmallHead + frozen general part, no modulation.
    gphead       the pretrained G's own head + frozen general part, no modulation.
  DIP (paper 003): an SNGAN conditioned on priors C(x) of a frozen network (`dip.prior`):
    dip          from scratch with data instance priors.
    dip_diffaug  DIP + DiffAugment.
    dip_diffaug_bcr  DIP + DiffAugment + bCR, weight 1 (paper 003).
    dip_freezed  DIP + FreezeD from a `ps_pretrain.py:sngan` checkpoint (its condition
                 embeddings start fresh).
  ,stylegan2     DIP's StyleGAN2 variant of each (paper 003, appendix A/B): G_emb a
                 2-layer MLP into the mapping network, projection term in D, StyleGAN2's
                 own loss (non-saturating + R1, as the DiffAugment and FreezeD StyleGAN2
                 code the paper ran); batch 16 (8 for FreezeD), 20k steps.
                 `dip_freezed,stylegan2` starts from a `ps_pretrain.py` checkpoint.
  BSA (Noguchi & Harada 2019; paper 003's Table 1 baseline), not adversarial, from a
  `ps_pretrain.py:sngan` checkpoint:
    bsa          frozen G; learned per-image latents and a per-channel scale and shift
                 of every batch norm's output; L1 + perceptual (MobileNetV2 features, not
                 VGG16) + earth mover's latent loss; samples from a Gaussian fitted to
                 the latents (gantransfer_jax.bsa).
  The conditional CIFAR track (paper 001):
    cifar        finetune a `ps_pretrain.py:cifar` checkpoint on a labelled set
                 (tfds:cifar10 with a 10% subset by default; `data.fraction` 0.1/0.2/1.0).
  ,quick         CPU-sized: 32 x 32 models and short runs.

Paper hyperparameters by default. The model (kind, resolution, widths) of a transfer
comes from the config saved with `init_checkpoint`; setting any of those fields on the
command line must agree with it. The target `data.source` is required; it is used whole
unless `data.num_images` asks for a seeded n-shot subset (the papers' n-shot runs
set it, e.g. launch/worked_example.sh and launch/sweep.py).

  python -m gantransfer_jax.main --config=configs/finetune.py:adafm \
      --config.init_checkpoint=workdirs/resnet_pretrain --config.data.source=folder:/my/images
"""

import os

import ml_collections
from ml_collections import config_dict

from gantransfer_jax import config_files

STYLEGAN2_METHODS = ("scratch", "transfergan", "freezed", "ada", "transfergan_ada",
                     "diffaug_bcr", "minegan")
ADAFM_METHODS = ("adafm", "fs", "smallhead", "gphead")
DIP_METHODS = ("dip", "dip_diffaug", "dip_freezed", "dip_diffaug_bcr")
MODIFIERS = ("stylegan2", "quick")
METHODS = STYLEGAN2_METHODS + ADAFM_METHODS + DIP_METHODS + ("cifar", "bsa")


def _parse(preset: str) -> tuple[str, bool, bool]:
  """'METHOD[,stylegan2][,quick]' -> (method, stylegan2, quick)."""
  method, *modifiers = preset.split(",")
  if (method not in METHODS or any(m not in MODIFIERS for m in modifiers)
      or len(set(modifiers)) < len(modifiers)):
    raise ValueError(f"unknown preset {preset!r}; valid: METHOD[,stylegan2][,quick] with "
                     f"METHOD one of {', '.join(METHODS)}")
  stylegan2 = "stylegan2" in modifiers
  if stylegan2 and method not in DIP_METHODS:
    raise ValueError(f"',stylegan2' selects DIP's StyleGAN2 variant: it needs one of "
                     f"{', '.join(DIP_METHODS)}, not {method!r} (the StyleGAN2 baselines "
                     f"are {', '.join(STYLEGAN2_METHODS)})")
  return method, stylegan2, "quick" in modifiers


def pretrain_preset(preset: str) -> str:
  """The `ps_pretrain.py` preset a finetune preset builds on (and whose checkpoint its
  transfer methods start from): 'adafm,quick' -> 'resnet,quick', 'dip_freezed' ->
  'sngan', 'dip_freezed,stylegan2' -> '' (the StyleGAN2 recipe)."""
  method, stylegan2, quick = _parse(preset)
  if method in ADAFM_METHODS:
    model = "resnet"
  elif method in DIP_METHODS:
    model = "" if stylegan2 else "sngan"
  elif method == "bsa":
    model = "sngan"
  else:
    model = "cifar" if method == "cifar" else ""
  return ",".join(p for p in (model, "quick" if quick else "") if p)


def _inherit_model_fields(config: ml_collections.ConfigDict, section: str) -> None:
  """A transfer from a `section`-family checkpoint: its model fields become
  placeholders, filled from the checkpoint's saved config."""
  config.init = "checkpoint"
  config.init_model = section
  config.model = config_dict.placeholder(str)
  config.resolution = config_dict.placeholder(int)
  for key, value in config[section].items():
    config[section][key] = config_dict.placeholder(type(value))


def _adafm(config: ml_collections.ConfigDict, method: str, quick: bool) -> None:
  """AdaFM's recipe (NOTES §3): Adam 1e-4 (0, 0.99), batch 16, R1 10, EMA 0.999, 60k its."""
  _inherit_model_fields(config, "resnet")
  config.model = "resnet" if method == "gphead" else "adafm"
  config.adafm = ml_collections.ConfigDict(dict(
      kind={"adafm": "adafm", "fs": "fs"}.get(method, "none"),
      general_g=2 if quick else 4,   # G4D2 at 128 (6 groups); G2D2 at 32 (4 groups).
      general_d=2,
      warmup_steps=100 if quick else 10_000,
      head_features=64 if quick else 512,
      style_dim=64 if quick else 256,
      mapping_layers=8,
  ))
  config.total_steps = 60_000
  config.loss.r1_interval = 1  # The authors' R1 every step.
  config.augment = ""  # AdaFM trains without DiffAugment.


def _dip(config: ml_collections.ConfigDict, method: str, stylegan2: bool,
         quick: bool) -> None:
  """DIP's few-shot recipes (NOTES §4; paper 003 appendix): SNGAN 128, batch 25, 4 D
  steps, lr 2e-4, 30k steps; or StyleGAN2, batch 16 (FreezeD: 8), 20k steps."""
  config.dip = ml_collections.ConfigDict(dict(
      # Deviation: the paper's priors are VGG16 / SimCLR features, which have no offline
      # weights here; torchvision's ImageNet MobileNetV2 (NOTES §8) takes their place.
      prior="mobilenet_v2",
  ))
  config.total_steps = 20_000 if stylegan2 else 30_000
  with_diffaug = method in ("dip_diffaug", "dip_diffaug_bcr")
  config.augment = "color,translation,cutout" if with_diffaug else ""
  if method == "dip_diffaug_bcr":
    config.loss.bcr_weight = 1.0  # bCR's weight when combined with DIP (paper 003).
  if method == "dip_freezed":
    if stylegan2:
      _inherit_model_fields(config, "stylegan2")
      config.freeze_d = 2 if quick else 4  # As `freezed`.
      config.batch_size = 8
    else:
      _inherit_model_fields(config, "sngan")
      config.freeze_d = 2
    config.augment = ""


def _minegan(config: ml_collections.ConfigDict) -> None:
  """MineGAN (Wang et al. 2020; gantransfer_jax.minegan) over TransferGAN's settings."""
  config.minegan = ml_collections.ConfigDict(dict(
      # Our choice (the seeds do not give MineGAN's schedule): a quarter of the run
      # mines the source (miner and D only), the rest trains miner, G and D together.
      stage1_steps=config.total_steps // 4,
      num_layers=2,  # A residual MLP of width z_dim, the identity at initialisation.
  ))
  # Style mixing's second latent would bypass the miner (validation refuses it).
  config.loss.style_mixing_prob = 0.0


def _bsa(config: ml_collections.ConfigDict, quick: bool) -> None:
  """BSA's recipe (the authors' SmallGAN code): Adam, latents lr 0.05, scale/shift lr
  5e-4, loss weights L1 1 (self-normalised), perceptual 0.001 per layer, latent EMD 0.1."""
  _inherit_model_fields(config, "sngan")
  config.task = "bsa"  # Not a GAN loop: gantransfer_jax.tasks.bsa.
  config.bsa = ml_collections.ConfigDict(dict(
      latent_lr=0.05,
      stats_lr=5e-4,
      l1_weight=1.0,
      perceptual_weight=1e-3,
      latent_weight=0.1,
      latent_noise=0.01,    # z + N(0, 0.01^2) while training, as the authors.
      # Deviation: the authors' VGG16 has no offline weights; MobileNetV2 features ('' = off).
      perceptual="mobilenet_v2",
      perceptual_resolution=64 if quick else 224,
  ))
  config.augment = ""
  config.total_steps = 10_000


def get_config(preset: str = "transfergan") -> ml_collections.ConfigDict:
  method, stylegan2, quick = _parse(preset)
  # Config files load by path, not as a package: so does the sibling.
  pretrain = config_files.load_module(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "ps_pretrain.py"))
  config = pretrain.get_config(pretrain_preset(preset))
  config.task = "finetune"
  config.method = method
  # Where the weights start: "scratch" (random) or "checkpoint" (`init_checkpoint`, of
  # the `init_model` family). The one record of it: validation, the sweep and the
  # notebooks read this field.
  config.init = "scratch"
  config.init_model = config_dict.placeholder(str)

  config.data = ml_collections.ConfigDict(dict(
      # The target, required: folder:PATH | tfds:NAME[:SPLIT] | npz:PATH | orl_faces.
      source=config_dict.placeholder(str),
      num_images=0,        # n-shot subset (0 = the whole set), fixed by subset_seed.
      fraction=1.0,        # Or a stratified per-class fraction (labelled sets only).
      subset_seed=0,
      hflip=False,
      image_key="image",
      label_key="label",
      # Synthesizer options stay so a finetune may also target synthetic data.
      n_shapes=config.data.n_shapes,
      size_policy=config.data.size_policy,
  ))
  config.total_steps = 400_000 // config.batch_size  # 400 kimg (NOTES §2).
  config.loss.r1_interval = 16  # Lazy R1 when finetuning (authors' code).
  config.augment = "color,translation,cutout"
  config.freeze_d = 0
  # Transfer transforms over the parameter pytrees (gantransfer_jax.transfer), after the
  # ones the fields above ask for: e.g. 'freeze_d:4,adafm', 'fs:100', 'fresh_d:b4' (D's
  # epilogue from a new init, the rest from init_checkpoint) ('' = none).
  config.transfer = ""
  config.init_checkpoint = config_dict.placeholder(str)
  # ADA's controller (used when `augment` is an ADA form: ada, ada:PIPELINE,
  # ada_fixed:P[:PIPELINE]; gantransfer_jax.augment.parse), official defaults.
  config.ada = ml_collections.ConfigDict(dict(target=0.6, interval=4, kimg=500.0,
                                              initial_p=0.0))
  config.loss.bcr_weight = 0.0  # bCR on reals and fakes (Zhao et al. 2020); 0 = off.

  if method in ("transfergan", "freezed", "transfergan_ada", "minegan"):
    _inherit_model_fields(config, "stylegan2")
  if method in ("ada", "transfergan_ada"):
    config.augment = "ada"
  if method == "transfergan_ada":
    config.ada.kimg = 100.0  # "Faster ADA adjustment" when transferring (paper 004).
  if method == "diffaug_bcr":
    config.loss.bcr_weight = 10.0
  if method == "freezed":
    # Freeze the high-resolution blocks, train the last few low-resolution blocks and
    # the epilogue (NOTES §6): 4 of the 7 blocks at 256, 2 of the 4 at 32.
    config.freeze_d = 2 if quick else 4
  if method in ADAFM_METHODS:
    _adafm(config, method, quick)
  if method in DIP_METHODS:
    _dip(config, method, stylegan2, quick)
  if method == "bsa":
    _bsa(config, quick)
  if method == "cifar":
    _inherit_model_fields(config, "sngan")
    config.num_classes = config_dict.placeholder(int)
    config.data.update(source="tfds:cifar10", num_images=0, fraction=0.1)
    config.augment = "translation,cutout"

  if quick:
    config.total_steps = 1_000
    config.log_every = 50
    config.sample_every = 250
    config.checkpoint_every = 500
    if pretrain_preset(preset) == "quick":
      # StyleGAN2's small-scale recipe (ps_pretrain.py); the batch may differ from it.
      pretrain.stylegan2_small_scale_recipe(config)
    else:
      config.loss.r1_interval = 4
  if method == "minegan":  # After `quick`: its stage 1 is a share of the run's length.
    _minegan(config)
  return config
