"""Sample grids: real-vs-generated panels, and the grids the training loop writes."""

import types

import numpy as np
from PIL import Image

from configs import ps_pretrain
from gantransfer_jax import images
from gantransfer_jax import train
from gantransfer_jax.data import sampler as sampler_lib


def test_panels_put_each_set_in_its_own_grid_side_by_side():
  rng = np.random.default_rng(0)
  reals = rng.integers(0, 256, (4, 5, 5, 1), dtype=np.uint8)  # Greyscale, as ORL.
  fakes = rng.uniform(-1, 1, (6, 5, 5, 3)).astype(np.float32)
  panels = images.make_panels([reals, fakes], num_cols=2, gap=3)

  left, right = images.make_grid(reals, 2), images.make_grid(fakes, 2)
  assert panels.shape == (right.shape[0], left.shape[1] + 3 + right.shape[1], 3)
  # Greyscale broadcast to RGB; the shorter panel is padded below with white.
  np.testing.assert_array_equal(panels[:left.shape[0], :left.shape[1]],
                                np.repeat(left, 3, axis=-1))
  assert (panels[left.shape[0]:, :left.shape[1]] == 255).all()
  assert (panels[:, left.shape[1]:left.shape[1] + 3] == 255).all()  # The gap.
  np.testing.assert_array_equal(panels[:, left.shape[1] + 3:], right)


def test_training_writes_a_step_0_grid_and_real_vs_generated(tmp_path):
  config = ps_pretrain.get_config("tiny")
  config.update(total_steps=2, log_every=2, sample_every=2, checkpoint_every=2)
  config.loss.pl_weight = 0.0
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))

  samples = workdir / "samples"
  assert {"step_0000000.png", "step_0000002.png", "real_vs_generated.png"} <= set(
      p.name for p in samples.iterdir())
  step2 = np.asarray(Image.open(samples / "step_0000002.png"))
  side_by_side = np.asarray(Image.open(samples / "real_vs_generated.png"))
  # The right panel is the latest sample grid; the left one the training images drawn
  # by the sampler (synthetic here), not samples again.
  np.testing.assert_array_equal(side_by_side[:, -step2.shape[1]:], step2)
  sampler = sampler_lib.make_sampler(config)
  reals = train.fixed_training_images(
      config, types.SimpleNamespace(sampler=sampler, data=sampler.data))
  left = images.make_grid(reals)
  np.testing.assert_array_equal(side_by_side[:left.shape[0], :left.shape[1]], left)
  assert not np.array_equal(np.asarray(Image.open(samples / "step_0000000.png")), step2)
