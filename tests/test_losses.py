"""Losses and regularisers against direct numpy / finite-difference computations."""

import jax
import jax.numpy as jnp
import numpy as np

from gantransfer_jax import augment, losses
from gantransfer_jax.models import stylegan2


def _softplus(x):
  return np.logaddexp(0.0, x)


def test_logistic_losses_match_numpy():
  real = np.array([-2.0, 0.5, 3.0], np.float32)
  fake = np.array([1.0, -0.3], np.float32)
  np.testing.assert_allclose(losses.d_logistic_loss(real, fake),
                             _softplus(fake).mean() + _softplus(-real).mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.g_nonsaturating_loss(fake), _softplus(-fake).mean(),
                             rtol=1e-6)


def _random_params(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def _fixed_diff_augment(images):
  """DiffAugment's ops with fixed parameters (no RNG kernels to compile)."""
  images = augment.adjust_brightness(images, jnp.array([0.2, -0.1]))
  images = augment.adjust_saturation(images, jnp.array([1.5, 0.4]))
  images = augment.adjust_contrast(images, jnp.array([0.7, 1.2]))
  images = augment.translate(images, jnp.array([[1, -1], [0, 1]]))
  return augment.cutout(images, jnp.array([[2, 5], [7, 0]]), 4)


def test_r1_matches_finite_differences_through_discriminator_and_diffaugment():
  with jax.enable_x64(True):
    disc = stylegan2.Discriminator(resolution=8, channel_base=64, channel_max=8,
                                   mbstd_group_size=2)
    reals = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 8, 8, 3)))
    # Random-normal params from the shapes alone: no RNG kernels to compile.
    variables = _random_params(jax.eval_shape(disc.init, jax.random.key(0), reals))
    d_fn = lambda images: disc.apply(variables, _fixed_diff_augment(images))

    penalty, logits = jax.jit(lambda x: losses.r1_penalty(d_fn, x, return_logits=True))(reals)

    @jax.jit
    def finite_difference_grads(x, eps=1e-6):
      # Central differences of sum(D(x)) for every input element, batched with vmap.
      total = lambda images: jnp.sum(d_fn(images))
      basis = jnp.eye(x.size, dtype=x.dtype).reshape(-1, *x.shape)
      diffs = jax.vmap(lambda e: total(x + eps * e) - total(x - eps * e))(basis)
      return (diffs / (2 * eps)).reshape(x.shape), d_fn(x)

    grads, expected_logits = finite_difference_grads(reals)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-12)
    expected = np.mean(np.sum(np.asarray(grads) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(penalty, expected, rtol=1e-6)
    assert penalty.dtype == jnp.float64


def test_path_length_penalty_matches_direct_jacobian():
  rng = np.random.default_rng(0)
  batch, num_ws, w_dim, size = 3, 4, 5, 6
  mixing = jnp.asarray(rng.standard_normal((num_ws, w_dim, size * size * 3)), jnp.float32)

  def synth_fn(ws):  # A per-sample nonlinear "generator".
    return jnp.tanh(jnp.einsum("bnd,ndp->bp", ws, mixing)).reshape(batch, size, size, 3)

  ws = jnp.asarray(rng.standard_normal((batch, num_ws, w_dim)), jnp.float32)
  key = jax.random.key(7)
  pl_mean = jnp.float32(0.5)
  penalty, new_mean = losses.path_length_penalty(synth_fn, ws, key, pl_mean, decay=0.1)

  pl_noise = jax.random.normal(key, (batch, size, size, 3)) / size
  jac = jax.jacobian(synth_fn)(ws)  # [B, H, W, C, B, num_ws, w_dim]
  grads = np.einsum("bhwc,bhwcknd->knd", np.asarray(pl_noise), np.asarray(jac))
  lengths = np.sqrt(np.mean(np.sum(grads ** 2, axis=2), axis=1))
  expected_mean = 0.5 + 0.1 * (lengths.mean() - 0.5)
  np.testing.assert_allclose(new_mean, expected_mean, rtol=1e-5)
  np.testing.assert_allclose(penalty, np.mean((lengths - expected_mean) ** 2), rtol=1e-4)


def test_path_length_penalty_is_differentiable_wrt_generator_params():
  ws = jnp.ones((2, 3, 4))

  def loss(scale):
    return losses.path_length_penalty(lambda w: jnp.tanh(scale * w)[:, :, :, None] * jnp.ones(
        (1, 1, 1, 3)), ws, jax.random.key(0), jnp.float32(0.0))[0]

  assert np.isfinite(jax.grad(loss)(jnp.float32(0.3)))


def test_ema_beta_and_update():
  np.testing.assert_allclose(losses.ema_beta(16, 10), 0.5 ** (16 / 10_000))
  # Half-life: after half_life_kimg * 1000 / batch steps the old weight is halved.
  beta = losses.ema_beta(32, 1)
  np.testing.assert_allclose(beta ** (1000 / 32), 0.5, rtol=1e-9)
  # Ramp-up caps the half-life at cur_nimg * rampup.
  np.testing.assert_allclose(losses.ema_beta(16, 10, cur_nimg=1000, rampup=0.05),
                             0.5 ** (16 / 50), rtol=1e-6)

  ema = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(4.0)}}
  new = {"a": jnp.array([3.0, 2.0]), "b": {"c": jnp.array(0.0)}}
  out = losses.ema_update(ema, new, 0.75)
  np.testing.assert_allclose(out["a"], [0.75 * 1 + 0.25 * 3, 2.0])
  np.testing.assert_allclose(out["b"]["c"], 3.0)
