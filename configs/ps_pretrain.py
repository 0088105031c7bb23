r"""Primitives-PS pretraining (paper 001; NOTES §2) of any model family.

Presets (the string after ':' in `--config=configs/ps_pretrain.py:PRESET`), a model
and/or a size, comma-separated (`resnet,quick`):
  (default)  StyleGAN2, the paper's recipe: 256 x 256, batch 16, 300 kimg (GPU/TPU).
  resnet     GAN_stability's ResNet GAN (the source model AdaFM transfers; NOTES §3):
             128 x 128, nf 64, z 256, non-saturating loss + R1 10, Adam 1e-4 (0, 0.99).
  sngan      the unconditional SNGAN that DIP's few-shot runs use (NOTES §4): 128 x 128,
             hinge loss, batch 25, 4 D steps, lr 2e-4, z 120; a source for `dip_freezed`.
  cifar      the conditional CIFAR track: BigGAN-CIFAR-style SNGAN at 32 x 32, 10 classes
             assigned at random to the synthetic images, hinge loss, batch 50, 4 D steps,
             lr 2e-4, ch 64, z 128, EMA from step 1000 (NOTES §2, CIFAR variant).
  auto       StyleGAN2 at the official StyleGAN2-ADA `auto` widths for 256 x 256
             (channel_base 16384, half the paper's) with its lazy R1 every 16 steps;
             otherwise the paper's recipe. The official code trains it in 5.0 GB.
  quick      a 32 x 32 model that trains end to end on 2 CPU cores in minutes, with
             StyleGAN2's small-scale recipe (R1 gamma 1, lr 0.005, measured); what
             the README's first command runs.
             Its 16 kimg show the salient object (a large uniform blob) in the
             clutter, not yet crisp circles and rectangles.
  tiny       a few steps of a 16 x 16 model, for tests and smoke runs.

Every field can be overridden on the command line, e.g. `--config.total_steps=200`.
"""

import ml_collections

from gantransfer_jax.models import families


MODEL_PRESETS = ("resnet", "sngan", "cifar")
SIZE_PRESETS = ("quick", "tiny", "auto")


def resnet_model(config: ml_collections.ConfigDict) -> None:
  """Switches `config` to GAN_stability's ResNet GAN with its authors' training recipe."""
  config.model = "resnet"
  config.resolution = 128
  config.resnet = families.default_section("resnet")
  config.optim.update(g_lr=1e-4, d_lr=1e-4)
  config.loss.update(pl_weight=0.0, style_mixing_prob=0.0)
  # The authors' G EMA of 0.999 per step: 0.5 ** (16 / (ema_kimg * 1000)) = 0.999.
  config.ema_kimg = 11.08


def sngan_model(config: ml_collections.ConfigDict) -> None:
  """Switches `config` to the SNGAN/BigGAN ResNet with conditional BN and projection D,
  trained as DIP's few-shot runs (NOTES §4): 128 x 128, hinge loss, batch 25, 4 D steps,
  Adam 2e-4, z 120 (BigGAN's betas (0, 0.999))."""
  config.model = "sngan"
  config.resolution = 128
  config.batch_size = 25
  config.sngan = families.default_section("sngan")
  config.optim.update(g_lr=2e-4, d_lr=2e-4, b1=0.0, b2=0.999)
  config.loss.update(kind="hinge", d_steps=4, r1_gamma=0.0, pl_weight=0.0,
                     style_mixing_prob=0.0)


def stylegan2_small_scale_recipe(config: ml_collections.ConfigDict) -> None:
  """StyleGAN2's losses and learning rate for the CPU-sized (32 x 32, 32-channel) presets,
  chosen by measurement from scratch on the 400 ORL faces (README, "Learning at CPU
  scale"), not the 256 px recipe's (NOTES §2: R1 gamma 10, path length 2, mixing 0.9).

  * R1 gamma 1, lazily every 16 steps. The official heuristic 0.0002 * res^2 / batch
    (0.0128 at 32 px and batch 16, its `auto`/`cifar` value for 50k images) let D win
    outright on 400 images (sign(D(real)) = 1 on every real, logits +-4 by 6 kimg) and G
    collapse to one blurred image by 13 kimg; gamma 1 and 10 keep D near chance and the
    samples diverse, and gamma 1 gave the sharper faces at 38 kimg.
  * Adam lr 0.005 for G and D (official 0.002): with equalized learning rates Adam's
    step is a fixed fraction of each weight's scale, and these narrow networks reached at
    13 kimg what lr 0.002 reached at ~26 kimg, without instability.
  * No path length and no style mixing, as the official 32 x 32 `cifar` config; fewer
    regulariser terms also mean fewer step variants to compile and a cheaper step.
  """
  config.loss.r1_gamma = 1.0
  config.loss.r1_interval = 16
  config.loss.pl_weight = 0.0
  config.loss.style_mixing_prob = 0.0
  config.optim.update(g_lr=0.005, d_lr=0.005)


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  tokens = [token for token in preset.split(",") if token]
  models = [t for t in tokens if t in MODEL_PRESETS]
  sizes = [t for t in tokens if t in SIZE_PRESETS]
  if len(models) > 1 or len(sizes) > 1 or len(models) + len(sizes) != len(tokens):
    raise ValueError(f"unknown preset {preset!r}; valid: [MODEL][,SIZE] with MODEL one of "
                     f"{', '.join(MODEL_PRESETS)} and SIZE one of {', '.join(SIZE_PRESETS)}")
  model = models[0] if models else "stylegan2"
  size = sizes[0] if sizes else ""

  config = ml_collections.ConfigDict()
  config.task = "pretrain"
  config.seed = 0
  config.model = "stylegan2"
  config.resolution = 256
  config.batch_size = 16
  config.total_steps = 300_000 // 16  # 300 kimg (the authors' default; the supplement says 800).
  config.log_every = 100
  config.sample_every = 2_000
  config.checkpoint_every = 2_000
  config.keep_checkpoints = 3
  config.num_sample_images = 16

  # Evaluation against a fixed synthetic reference set while pretraining (FID/KID/PR);
  # 0 disables it. Needs the Inception weights (`python -m gantransfer_jax.assets inception`).
  config.eval_every = 0
  config.eval_num_images = 5_000

  # The family's own fields (models/stylegan2.py, CONFIG_DEFAULTS: the official
  # StyleGAN2-ADA layout, 2 mapping layers; precision and remat for memory and speed).
  config.stylegan2 = families.default_section("stylegan2")
  # batch_rounds: each pass takes the batch in this many rounds, one after another, and
  #   averages their gradients (the official code's --batch-gpu = batch / rounds per
  #   device): activation memory falls about as 1/rounds. Unlike the two fields above it
  #   changes the numbers a little (the minibatch-stddev groups and the random draws are
  #   per round), so a resumed run keeps it.
  config.batch_rounds = 1
  # regularizer_dispatch: how the lazy regularisers (R1, path length) are compiled:
  #   'static' = one program per (R1, path length) combination a run meets (up to four,
  #   each compiled on first use), 'cond' = one program that branches on them with
  #   lax.cond (one compile). Same numbers either way (up to float rounding); 'cond' is
  #   the 256 x 256 presets' default (README, "Memory and throughput").
  config.regularizer_dispatch = "static"

  config.data = ml_collections.ConfigDict(dict(
      source="synth:primitives_ps",  # synth:NAME with NAME one of gantransfer_jax.synth.SYNTHESIZERS
      n_shapes=100,
      size_policy="decay",
  ))

  config.optim = ml_collections.ConfigDict(dict(
      g_lr=0.002, d_lr=0.002, b1=0.0, b2=0.99, eps=1e-8))

  config.loss = ml_collections.ConfigDict(dict(
      kind="nonsaturating",   # | hinge | wasserstein
      d_steps=1,              # D updates per G update.
      r1_gamma=10.0,
      r1_interval=1,          # R1 every step while pretraining (authors' code); 16 when finetuning.
      pl_weight=2.0,
      pl_interval=4,          # Lazy path-length regularisation, as StyleGAN2.
      pl_batch_shrink=2,
      pl_decay=0.01,
      style_mixing_prob=0.9,
  ))

  config.ema_kimg = 10.0      # G EMA half-life in thousands of images.
  config.ema_start_step = 0   # Before this step G_ema just copies G (BigGAN's ema_start).
  config.augment = "color,translation,cutout"  # DiffAugment policy ('' disables).

  # Multi-host: set to True on a pod slice / several hosts (calls jax.distributed.initialize()).
  config.distributed = False
  # Resuming a workdir with a config that differs in more than run length and logging
  # (total_steps, *_every, keep_checkpoints, eval sizes) is refused unless this is True.
  config.resume_with_changed_config = False

  if model == "resnet":
    resnet_model(config)
  elif model == "sngan":
    sngan_model(config)
  elif model == "cifar":
    sngan_model(config)
    config.resolution = 32
    config.num_classes = 10
    config.batch_size = 50
    config.sngan.update(z_dim=128, hierarchical_z=False)
    config.augment = "translation,cutout"
    # BigGAN-CIFAR's EMA decay 0.9999 per step at batch 50; it starts at step 1000.
    config.ema_kimg = 346.6
    config.ema_start_step = 1_000
    config.total_steps = 300_000 // 50

  if model == "stylegan2" and size in ("", "auto"):
    # Two rounds of 8 at 256 x 256 plan 9.35 GiB (paper) and 4.41 GiB (auto; both with the
    # FIR filters as slices) instead of 27.1 and 14.6 in one round (README, "Memory and
    # throughput", measured before the slices): a 16 GB chip fits.
    # Set batch_rounds=1 on a device that holds the whole batch's activations.
    config.batch_rounds = 2
    # One compile instead of two (paper: 64 s vs 116 s on the 2-core CPU) or three
    # (auto: 54 s vs 146 s), planning no more memory (8.39 / 3.90 GiB vs 8.39 / 4.76;
    # before the FIR slices; with them one compile takes 57.0 / 61.2 s idle).
    config.regularizer_dispatch = "cond"
  if size == "auto":
    if model != "stylegan2":
      raise ValueError(f"preset 'auto' is a StyleGAN2 width; got model {model!r}")
    config.stylegan2.channel_base = 16384
    config.loss.r1_interval = 16
  elif size == "quick":
    # Sized for a 2-core CPU (XLA's CPU convolutions are slow): narrow layers, and R1 /
    # path length on lazy intervals as in the StyleGAN2 default config, not every step.
    config.resolution = 32
    config.batch_size = 16
    # 16 kimg: at 8 the salient object is only starting to show (README, command 1).
    config.total_steps = 1_000
    config.log_every = 25
    config.sample_every = 100
    config.checkpoint_every = 250
    config.stylegan2.update(z_dim=64, w_dim=64, channel_base=512, channel_max=32,
                            embedding_dim=64)
    config.data.n_shapes = 50
    config.loss.r1_interval = 4
    config.loss.pl_interval = 8
    if model == "stylegan2":
      stylegan2_small_scale_recipe(config)
    config.ema_kimg = 0.5
    config.ema_start_step = min(config.ema_start_step, 100)
    if model == "resnet":
      config.resnet.update(z_dim=64, nf=8)
    if model in ("sngan", "cifar"):
      config.sngan.update(z_dim=40, embedding_dim=32, g_width=8, d_width=8)
  elif size == "tiny":
    config.resolution = 16
    config.batch_size = 8
    config.total_steps = 6
    config.log_every = 2
    config.sample_every = 3
    config.checkpoint_every = 3
    config.num_sample_images = 4
    config.stylegan2.update(z_dim=32, w_dim=32, channel_base=256, channel_max=32,
                            embedding_dim=32)
    config.data.n_shapes = 10
    config.loss.pl_interval = 2
    config.ema_kimg = 0.1
    config.ema_start_step = min(config.ema_start_step, 2)
    if model == "resnet":
      config.resnet.update(z_dim=16, nf=4)
    if model in ("sngan", "cifar"):
      config.sngan.update(z_dim=18, embedding_dim=8, g_width=4, d_width=4,
                          g_multipliers=(2, 2, 1), d_multipliers=(1, 2, 2))
  return config
