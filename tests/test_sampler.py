"""On-device training-image sampling from a real (uint8) set or a synthesizer."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gantransfer_jax.data import sampler


def npz_data_config(path, **overrides):
  config = ml_collections.ConfigDict(dict(
      resolution=8, batch_size=8,
      data=dict(source=f"npz:{path}", num_images=0, subset_seed=0, hflip=False,
                image_key="image", n_shapes=10, size_policy="decay")))
  config.update_from_flattened_dict(overrides)
  return config


def test_sample_from_array_maps_uint8_to_unit_range_and_is_deterministic():
  images = jnp.asarray(np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3) * 5)
  key = jax.random.key(0)
  batch = sampler.sample_from_array(images, key, 16, hflip=False)
  assert batch.shape == (16, 2, 2, 3) and batch.dtype == jnp.float32
  expected = np.asarray(images, np.float32) / 127.5 - 1
  for image in np.asarray(batch):  # Every sample is one of the set's images.
    assert min(np.abs(expected - image).max(axis=(1, 2, 3))) < 1e-6
  np.testing.assert_array_equal(batch, sampler.sample_from_array(images, key, 16, hflip=False))


def test_hflip_mirrors_about_half_of_the_samples():
  image = np.zeros((1, 4, 4, 3), np.uint8)
  image[:, :, 0] = 255  # Left column white: a flip moves it to the right.
  batch = np.asarray(sampler.sample_from_array(jnp.asarray(image), jax.random.key(1), 256,
                                               hflip=True))
  flipped = batch[:, 0, -1, 0] > 0
  assert 0.35 < flipped.mean() < 0.65
  # Mirroring a flipped sample gives back the original image exactly.
  np.testing.assert_array_equal(batch[flipped][:, :, ::-1], batch[~flipped][:1].repeat(
      flipped.sum(), axis=0))


def test_real_set_smaller_than_the_batch_warns_and_still_samples(tmp_path):
  path = tmp_path / "four.npz"
  np.savez(path, images=np.full((4, 8, 8, 3), 200, np.uint8))
  with pytest.warns(UserWarning, match="fewer than the batch size 8"):
    made = sampler.make_sampler(npz_data_config(path))
  batch = jax.jit(made.sample, static_argnums=2)(made.data, jax.random.key(0), 8)
  np.testing.assert_allclose(batch["images"], 200 / 127.5 - 1, rtol=1e-6)


def test_synthetic_source_needs_no_data_and_bad_sources_fail(tmp_path):
  config = npz_data_config(tmp_path / "unused.npz")
  config.resolution = 16
  config.data.source = "synth:primitives"
  made = sampler.make_sampler(config)
  assert made.data == {}
  batch = made.sample(made.data, jax.random.key(0), 2)
  assert set(batch) == {"images"}  # Unconditional: no 'cond'.
  assert batch["images"].shape == (2, 16, 16, 3)
  config.data.source = "synth:nope"
  with pytest.raises(ValueError, match="primitives_ps"):
    sampler.check_source(config)
  config.data.source = "ftp:somewhere"
  with pytest.raises(ValueError):
    sampler.check_source(config)
  config.data.source = None  # A finetune preset's placeholder, never filled in.
  with pytest.raises(ValueError, match="config.data.source is not set"):
    sampler.check_source(config)
