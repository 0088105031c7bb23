r"""The 2D study of paper 004 (Fig. 2 and 3; NOTES §5).

Presets (the string after ':' in `--config=configs/toy2d.py:PRESET`):
  (default)  the paper's recipe: 5000 pretraining G steps, 100 dissection checkpoints
             (every 50th), 1000 finetuning steps. Minutes on 2 CPU cores.
  quick      a few hundred steps and 8 checkpoints, for tests and smoke runs (seconds).

Every field can be overridden on the command line, e.g. `--config.pretrain_steps=500`.
"""

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "toy2d"
  config.seed = 0

  # Target: 10 Gaussians (std 0.25) evenly on a circle of radius 20.
  config.target = ml_collections.ConfigDict(dict(num_modes=10, radius=20.0, sigma=0.25))
  # Source-I: a ring of radius 20 with radial Gaussian noise (std 4): high recall.
  config.source_i = ml_collections.ConfigDict(dict(radius=20.0, sigma=4.0))
  # Source-II: 3 consecutive target modes with std 0.5: high precision, low recall.
  config.source_ii = ml_collections.ConfigDict(dict(modes=(0, 1, 2), sigma=0.5))

  # Models (gantransfer_jax.models.mlp2d) and optimisation, as the authors' code.
  config.z_dim = 64
  config.g_hidden = (64, 128, 128, 128, 64)
  config.d_hidden = (64, 128, 128, 64)
  config.torch_init = True    # PyTorch nn.Linear initialisation (False: flax defaults).
  config.batch_size = 64
  config.d_steps = 4          # D steps per G step.
  config.lr = 2e-4
  config.b1 = 0.5
  config.b2 = 0.999
  config.ema_decay = 0.99     # Per G step; averages parameters and BN running statistics.

  config.pretrain_steps = 5000  # G steps on each source.
  config.finetune_steps = 1000  # G steps on the target, for every initialisation/checkpoint.

  # Exact W1 (assignment problem) between generated and fresh target points. The
  # dissection measures it every `eval_every` finetuning steps (the authors' 250) and
  # after the last one; the three initialisations after the last one.
  config.eval_every = 250
  config.w1_num_points = 2048   # Per-initialisation W1 (Fig. 2, `w1` in toy2d.json).
  config.num_w1_threads = 2     # scipy's assignment solver releases the GIL.

  config.dissection = ml_collections.ConfigDict(dict(
      num_checkpoints=100,      # Source-I pretraining checkpoints, every `checkpoint_every`
      checkpoint_every=0,       # G steps; 0: pretrain_steps / num_checkpoints (here 50).
      num_metric_points=1000,   # Target and generated points for recall/precision.
      k=5,                      # k-NN of recall/precision.
      # Points per W1 of the dissection's finetuned generators (4 evaluations x 100 runs).
      # Not 2048: scipy's assignment solver needs ~2-40 s per 2048-point problem when the
      # generator has dropped modes (measured on 2 busy cores): over an hour for 400;
      # 1024 points is ~6-8x faster. The per-initialisation W1 always uses w1_num_points.
      w1_num_points=1024,
      # Which finetuned W1 the headline Pearsons use: 'final' (after the last step) or
      # 'min' (minimum over the evaluations, the authors' notebook). Both are reported.
      w1_reduce="final",
  ))

  config.chunk_steps = 50       # G steps per jitted call; progress is logged between calls.

  if preset == "quick":
    # Narrower, shallower nets: the same code paths, a fraction of the compile time.
    config.z_dim = 16
    config.g_hidden = (32, 32)
    config.d_hidden = (32, 32)
    config.pretrain_steps = 160
    config.finetune_steps = 60
    config.eval_every = 30
    config.w1_num_points = 256
    config.chunk_steps = 20
    config.dissection.update(num_checkpoints=8, num_metric_points=200,
                             w1_num_points=128)
  elif preset:
    raise ValueError(f"unknown preset {preset!r}; valid: '', 'quick'")
  return config
