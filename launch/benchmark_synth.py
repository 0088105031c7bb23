r"""Synthesizer throughput: our batched JAX synthesizers vs per-image numpy + OpenCV.

  python launch/benchmark_synth.py --resolutions=32,64,256 --batch=64 --iters=5

For every resolution and synthesizer: images/s of make_synthesizer's function on
the current backend (compiled, one untimed warm-up call, then --iters calls on
fresh keys, each waited for with block_until_ready), and images/s of the
per-image reference (gantransfer_jax.synth.reference_cv2, one image at a time
with cv2 drawing and numpy FFTs in this one process, as the authors' data-loader
workers do), and their ratio. The paper's generator is primitives_ps.
"""

import os
import platform
import time

from absl import app
from absl import flags
import jax
import numpy as np

from gantransfer_jax import synth
from gantransfer_jax.synth import reference_cv2

_RESOLUTIONS = flags.DEFINE_list("resolutions", ["32", "64", "256"], "Resolutions to time.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per jitted call.")
_ITERS = flags.DEFINE_integer("iters", 5, "Timed calls per synthesizer (after one warm-up).")
_REFERENCE_IMAGES = flags.DEFINE_integer(
    "reference_images", 64, "Images timed for the numpy + OpenCV reference (0 skips it).")
_SYNTHESIZERS = flags.DEFINE_list("synthesizers", list(synth.SYNTHESIZERS),
                                  "Synthesizers to time.")


def jax_rate(name: str, resolution: int, batch: int, iters: int) -> float:
  """Steady-state images/s of the jitted synthesizer."""
  synthesize = synth.make_synthesizer(name, resolution)
  # A list, split before timing: iterating a key array dispatches (and, the
  # first time, compiles) a slice per element.
  keys = list(jax.random.split(jax.random.key(0), iters + 1))
  synthesize(keys[0], batch).block_until_ready()  # Compiles.
  start = time.perf_counter()
  for key in keys[1:]:
    synthesize(key, batch).block_until_ready()
  return batch * iters / (time.perf_counter() - start)


def reference_rate(name: str, resolution: int, num: int) -> float:
  """Images/s of the per-image reference, generating one image at a time."""
  config = synth.make_config(name, resolution)
  rng = np.random.default_rng(0)
  reference_cv2.synthesize_one(rng, config)  # Warms up OpenCV and numpy's FFT plans.
  start = time.perf_counter()
  for _ in range(num):
    reference_cv2.synthesize_one(rng, config)
  return num / (time.perf_counter() - start)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  resolutions = [int(r) for r in _RESOLUTIONS.value]
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"batch {_BATCH.value}, iters {_ITERS.value}, reference images {_REFERENCE_IMAGES.value}")
  print(f"{'res':>5}  {'synthesizer':<14} {'jax img/s':>10} {'cv2 img/s':>10} {'ratio':>7}")
  for resolution in resolutions:
    for name in _SYNTHESIZERS.value:
      ours = jax_rate(name, resolution, _BATCH.value, _ITERS.value)
      if _REFERENCE_IMAGES.value:
        theirs = reference_rate(name, resolution, _REFERENCE_IMAGES.value)
        print(f"{resolution:>5}  {name:<14} {ours:>10.1f} {theirs:>10.1f} {ours / theirs:>6.2f}x",
              flush=True)
      else:
        print(f"{resolution:>5}  {name:<14} {ours:>10.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
