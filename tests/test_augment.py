"""DiffAugment ops against the numpy formulas of NOTES §6, and diff_augment's contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantransfer_jax import augment


def _images(batch=3, size=8, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


def test_color_ops_match_numpy_formulas():
  x = _images()
  shift = np.array([-0.5, 0.1, 0.4], np.float32)
  factor = np.array([0.0, 0.7, 2.0], np.float32)
  per_sample = lambda v: v[:, None, None, None]

  np.testing.assert_allclose(augment.adjust_brightness(x, shift), x + per_sample(shift),
                             atol=1e-6)
  mean_c = x.mean(axis=3, keepdims=True)
  np.testing.assert_allclose(augment.adjust_saturation(x, factor),
                             (x - mean_c) * per_sample(factor) + mean_c, atol=1e-6)
  mean_chw = x.mean(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(augment.adjust_contrast(x, factor),
                             (x - mean_chw) * per_sample(factor) + mean_chw, atol=1e-6)


def test_translate_matches_loop_reference():
  x = _images(batch=4)
  shifts = np.array([[0, 0], [1, -2], [-3, 3], [8, 0]])
  expected = np.zeros_like(x)
  for b, (dy, dx) in enumerate(shifts):
    for i in range(8):
      for j in range(8):
        if 0 <= i - dy < 8 and 0 <= j - dx < 8:
          expected[b, i, j] = x[b, i - dy, j - dx]
  np.testing.assert_array_equal(augment.translate(x, shifts), expected)


def test_cutout_matches_loop_reference_and_clips_at_border():
  x = _images(batch=3)
  centers = np.array([[4, 4], [0, 7], [8, 1]])
  size = 4
  expected = x.copy()
  for b, (cy, cx) in enumerate(centers):
    for i in range(cy - size // 2, cy - size // 2 + size):
      for j in range(cx - size // 2, cx - size // 2 + size):
        if 0 <= i < 8 and 0 <= j < 8:
          expected[b, i, j] = 0
  np.testing.assert_array_equal(augment.cutout(x, centers, size), expected)


def test_random_parameters_stay_in_the_documented_ranges():
  key = jax.random.key(0)
  batch, size = 64, 16
  zeros = jnp.zeros((batch, size, size, 3))
  shift = jax.jit(augment.random_brightness)(key, zeros)[:, 0, 0, 0]
  assert np.all(np.abs(shift) <= 0.5) and np.std(shift) > 0.2

  # A channel-varying constant image reveals the saturation factor; a spatially varying
  # one the contrast factor.
  ramp = jnp.broadcast_to(jnp.array([-1.0, 0.0, 1.0]), zeros.shape)
  sat = jax.jit(augment.random_saturation)(key, ramp)[:, 0, 0, 2]
  assert np.all((sat >= 0) & (sat <= 2)) and np.ptp(sat) > 1.0
  checker = jnp.broadcast_to(jnp.array([-1.0, 1.0] * (size // 2))[None, :, None, None],
                             zeros.shape)
  con = jax.jit(augment.random_contrast)(key, checker)[:, 1, 0, 0]
  assert np.all((con >= 0.5) & (con <= 1.5)) and np.ptp(con) > 0.5

  # One lit pixel in the centre: its new place is the shift; |shift| <= size / 8.
  dot = zeros.at[:, size // 2, size // 2, :].set(1.0)
  moved = np.asarray(jax.jit(augment.random_translation)(key, dot))[..., 0]
  flat = moved.reshape(batch, -1).argmax(axis=1)
  dy, dx = flat // size - size // 2, flat % size - size // 2
  assert np.all(np.abs(dy) <= size // 8) and np.all(np.abs(dx) <= size // 8)
  assert len(set(zip(dy.tolist(), dx.tolist()))) > 10

  # Cutout zeroes at most (size / 2)^2 pixels and at least a quarter of that.
  cut = jax.jit(augment.random_cutout)(key, jnp.ones((batch, size, size, 1)))
  zeroed = np.sum(np.asarray(cut) == 0, axis=(1, 2, 3))
  assert np.all(zeroed <= (size // 2) ** 2) and np.all(zeroed >= (size // 4) ** 2)


def test_diff_augment_is_deterministic_per_key_and_differentiable():
  x = jnp.asarray(_images(batch=4, size=16))
  aug = jax.jit(augment.diff_augment, static_argnums=2)
  policy = "color,translation,cutout"
  a = aug(jax.random.key(1), x, policy)
  np.testing.assert_array_equal(a, aug(jax.random.key(1), x, policy))
  assert not np.allclose(a, aug(jax.random.key(2), x, policy))
  assert a.shape == x.shape

  grad_fn = jax.jit(jax.grad(lambda im, p: jnp.sum(aug(jax.random.key(1), im, p) ** 2)),
                    static_argnums=1)
  grad = grad_fn(x, policy)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  # Cutout (and translation) leave the pixels they drop without gradient; color mixes
  # every pixel into the image means, so alone it leaves none.
  assert np.any(grad_fn(x, "translation,cutout") == 0)
  assert np.all(grad_fn(x, "color") != 0)


def test_diff_augment_applies_ops_in_policy_order():
  key = jax.random.key(3)
  x = jnp.asarray(_images(batch=2, size=8))
  # One uniform draw; columns: brightness, saturation, contrast, translation (2).
  u = np.asarray(jax.random.uniform(key, (2, 5)))
  manual = augment.adjust_brightness(x, u[:, 0] - 0.5)
  manual = augment.adjust_saturation(manual, u[:, 1] * 2)
  manual = augment.adjust_contrast(manual, u[:, 2] + 0.5)
  manual = augment.translate(manual, np.floor(u[:, 3:5] * 3).astype(int) - 1)
  aug = jax.jit(augment.diff_augment, static_argnums=2)
  np.testing.assert_allclose(aug(key, x, ("color", "translation")), manual, atol=1e-6)
  swapped = aug(key, x, ("translation", "color"))
  assert not np.allclose(swapped, manual)


def test_policy_validation_and_empty_policy():
  x = jnp.asarray(_images())
  assert augment.validate_policy(" color, cutout ") == ("color", "cutout")
  assert augment.validate_policy([]) == ()
  np.testing.assert_array_equal(augment.diff_augment(jax.random.key(0), x, ""), x)
  with pytest.raises(ValueError, match="color, translation, cutout"):
    augment.validate_policy("color,zoom")


# ---------------------------------------------------------------- bCR (losses + the step)

def test_consistency_penalty_is_the_mean_squared_logit_difference():
  from gantransfer_jax import losses  # pylint: disable=g-import-not-at-top

  logits = np.array([0.5, -1.0, 2.0], np.float32)
  transformed = np.array([0.0, 1.0, 2.0], np.float32)
  # ||D(x) - D(T(x))||^2 per sample, averaged: (0.25 + 4 + 0) / 3.
  np.testing.assert_allclose(losses.consistency_penalty(logits, transformed), 4.25 / 3,
                             rtol=1e-6)
  # Gradients reach both passes (no stop-gradient, as in Zhao et al.).
  g_a, g_b = jax.grad(losses.consistency_penalty, argnums=(0, 1))(logits, transformed)
  np.testing.assert_allclose(g_a, 2 * (logits - transformed) / 3, rtol=1e-6)
  np.testing.assert_allclose(g_b, -g_a, rtol=1e-6)


def test_bcr_adds_its_terms_to_d_only():
  from configs import ps_pretrain  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import parallel  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top

  results = {}
  for weight in (0.0, 10.0):
    config = ps_pretrain.get_config("tiny")
    config.loss.update(pl_weight=0.0, bcr_weight=weight)
    setup = train.build(config, parallel.create_mesh())
    state, metrics = setup.train_step(setup.state, setup.data, do_r1=False, do_pl=False)
    results[weight] = jax.device_get((state, metrics))
  (plain, m_plain), (bcr, m_bcr) = results[0.0], results[10.0]
  assert "loss/bcr_real" not in m_plain
  assert m_bcr["loss/bcr_real"] > 0 and m_bcr["loss/bcr_fake"] > 0
  # The same draws: G's step and D's own loss are unchanged; only D's update differs.
  np.testing.assert_allclose(m_bcr["loss/d"], m_plain["loss/d"], rtol=1e-6)
  np.testing.assert_allclose(m_bcr["loss/g"], m_plain["loss/g"], rtol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, plain.g_params, bcr.g_params)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), plain.d_params, bcr.d_params)
  assert max(jax.tree.leaves(moved)) > 0
