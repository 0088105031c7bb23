"""The evaluation reference statistics cache follows the reference images' contents.

The feature network does not matter to the cache, so a cheap stand-in (downsampled
pixels) replaces Inception here: its FID changes as soon as the images do.
"""

import os

import ml_collections
import numpy as np
from PIL import Image

from configs import ps_pretrain
from gantransfer_jax import evaluation
from gantransfer_jax import metrics
from gantransfer_jax.data import sources
from gantransfer_jax.metrics import inception

RES = 8


def _features(images) -> np.ndarray:
  return np.asarray(images, np.float32)[:, ::2, ::2].reshape(len(images), -1)


def _folder_config(root) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      seed=0, resolution=RES, eval_num_images=8,
      data=dict(source=f"folder:{root}", num_images=0, subset_seed=0, hflip=False,
                image_key="")))


def _stats(config, tmp_path, calls):
  def feature_fn(images):
    calls.append(len(images))
    return _features(images)

  name, count, batches = evaluation.reference_set(config, cache_dir=str(tmp_path / "data"))
  return name, inception.reference_stats(name, batches, resolution=RES, num_images=count,
                                         feature_fn=feature_fn,
                                         cache_dir=str(tmp_path / "stats"))


def test_replaced_images_give_new_statistics_and_a_new_fid(tmp_path):
  root = tmp_path / "target"
  root.mkdir()
  rng = np.random.default_rng(0)
  for i in range(10):
    Image.fromarray(rng.integers(0, 256, (12, 12, 3), np.uint8)).save(root / f"{i}.bmp")
  config, calls = _folder_config(root), []
  fake = _features(rng.integers(0, 256, (10, RES, RES, 3), np.uint8))

  name, before = _stats(config, tmp_path, calls)
  assert _stats(config, tmp_path, calls)[0] == name and calls == [10]  # Cached.

  # White images under the same names, same sizes and mtimes (as `cp -p` leaves them).
  for path in sorted(root.iterdir()):
    stat = path.stat()
    Image.new("RGB", (12, 12), (255, 255, 255)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  new_name, after = _stats(config, tmp_path, calls)
  assert new_name != name and calls == [10, 10]  # Recomputed.
  np.testing.assert_array_equal(after.features, _features(np.full((10, RES, RES, 3), 255)))
  assert (metrics.fid_from_features(after.features, fake)
          != metrics.fid_from_features(before.features, fake))


def test_synthetic_reference_key_names_its_first_batch():
  config = ps_pretrain.get_config("tiny")
  config.eval_num_images = 4
  name, count, batches = evaluation.reference_set(config)
  first = next(iter(batches()))
  assert count == 4 and name.endswith(sources.content_digest(first))
  assert evaluation.reference_set(config)[0] == name  # Deterministic: the cache is reused.
