r"""Primitives-PS pretraining of StyleGAN2 (paper 001; NOTES §2).

Presets (the string after ':' in `--config=configs/ps_pretrain.py:PRESET`):
  (default)  the paper's recipe: 256 x 256, batch 16, 300 kimg. Meant for a GPU/TPU.
  quick      a 32 x 32 model that trains end to end on 2 CPU cores in minutes and
             visibly learns the synthetic distribution; what the README's first command runs.
  tiny       a few steps of a 16 x 16 model, for tests and smoke runs.

Every field can be overridden on the command line, e.g. `--config.total_steps=200`.
"""

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
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

  # Official StyleGAN2-ADA layout; 2 mapping layers as in the Primitives-PS recipe.
  config.stylegan2 = ml_collections.ConfigDict(dict(
      z_dim=512, w_dim=512, mapping_layers=2, channel_base=32768, channel_max=512,
      mbstd_group_size=4, truncation_psi=1.0))

  config.data = ml_collections.ConfigDict(dict(
      source="synth:primitives_ps",  # synth:NAME with NAME one of gantransfer_jax.synth.SYNTHESIZERS
      n_shapes=100,
      size_policy="decay",
  ))

  config.optim = ml_collections.ConfigDict(dict(
      g_lr=0.002, d_lr=0.002, b1=0.0, b2=0.99, eps=1e-8))

  config.loss = ml_collections.ConfigDict(dict(
      kind="nonsaturating",
      r1_gamma=10.0,
      r1_interval=1,          # R1 every step while pretraining (authors' code); 16 when finetuning.
      pl_weight=2.0,
      pl_interval=4,          # Lazy path-length regularisation, as StyleGAN2.
      pl_batch_shrink=2,
      pl_decay=0.01,
      style_mixing_prob=0.9,
  ))

  config.ema_kimg = 10.0      # G EMA half-life in thousands of images.
  config.augment = "color,translation,cutout"  # DiffAugment policy ('' disables).

  # Multi-host: set to True on a pod slice / several hosts (calls jax.distributed.initialize()).
  config.distributed = False

  if preset == "quick":
    # Sized for a 2-core CPU (XLA's CPU convolutions are slow): narrow layers, and R1 /
    # path length on lazy intervals as in the StyleGAN2 default config, not every step.
    config.resolution = 32
    config.batch_size = 16
    config.total_steps = 500
    config.log_every = 25
    config.sample_every = 100
    config.checkpoint_every = 250
    config.stylegan2.update(z_dim=64, w_dim=64, channel_base=512, channel_max=32)
    config.data.n_shapes = 50
    config.loss.r1_interval = 4
    config.loss.pl_interval = 8
    config.ema_kimg = 0.5
  elif preset == "tiny":
    config.resolution = 16
    config.batch_size = 8
    config.total_steps = 6
    config.log_every = 2
    config.sample_every = 3
    config.checkpoint_every = 3
    config.num_sample_images = 4
    config.stylegan2.update(z_dim=32, w_dim=32, channel_base=256, channel_max=32)
    config.data.n_shapes = 10
    config.loss.pl_interval = 2
    config.ema_kimg = 0.1
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; valid: '', 'quick', 'tiny'")
  return config
