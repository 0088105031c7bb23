"""DIP's SNGAN/BigGAN-style generator and projection discriminator (tiny widths), with
their condition embeddings G_emb and D_emb (`transfer.condition`)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.models import sngan
from gantransfer_jax.transfer import condition
from gantransfer_jax.transfer import wrapper

PRIOR_DIM = 10
G, D = gan_lib.GENERATOR, gan_lib.DISCRIMINATOR


def _tiny_generator(resolution: int, **kwargs) -> sngan.Generator:
  blocks = sngan.num_upsamplings(resolution)
  return sngan.Generator(resolution=resolution, z_dim=3 * (blocks + 1), embedding_dim=8,
                         width=4, channel_multipliers=(2,) + (1,) * blocks, **kwargs)


def _tiny_discriminator(resolution: int) -> sngan.ProjectionDiscriminator:
  blocks = sngan.num_upsamplings(resolution) + 1
  return sngan.ProjectionDiscriminator(resolution=resolution, width=4,
                                       channel_multipliers=(1,) * (blocks - 1) + (2,))


def _gan(generator, discriminator, cond_dim: int = PRIOR_DIM) -> wrapper.TransferGan:
  """The networks behind their condition embeddings, as `builder.build_gan` puts them."""
  config = ml_collections.ConfigDict({"resolution": generator.resolution})
  family_gan = gan_lib.SNGan(generator, discriminator, config, cond_dim=cond_dim)
  return wrapper.TransferGan.wrap(family_gan, condition.from_family(family_gan))


def _normal(seed: int, shape) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), shape)


def _init_key(seed: int) -> jax.Array:
  # Initialising dozens of layers costs seconds of threefry work on CPU; 'rbg' keys are
  # far cheaper and just as good for tests.
  return jax.random.key(seed, impl="rbg")


def test_shapes_at_32_and_64():
  for resolution in (32, 64):
    generator, discriminator = _tiny_generator(resolution), _tiny_discriminator(resolution)
    gan = _gan(generator, discriminator)
    z, prior = jnp.zeros((2, generator.z_dim)), jnp.zeros((2, PRIOR_DIM))
    g_vars, d_vars = jax.eval_shape(gan.init, _init_key(0))
    g_params, g_state = gan_lib.split_variables(g_vars)
    d_params, d_state = gan_lib.split_variables(d_vars)
    images = jax.eval_shape(gan.sample, g_params, g_state, z, prior, None)
    assert images.shape == (2, resolution, resolution, 3)
    logits, _ = jax.eval_shape(gan.discriminate, d_params, d_state, images, prior)
    assert logits.shape == (2,)
    features = jax.eval_shape(
        functools.partial(discriminator.apply, method="features"),
        gan_lib.variables(gan.network_params(D, d_params), d_state), images)
    assert features.shape == (2, 4 * 2)  # width * the last multiplier.
    assert discriminator.feature_dim == 4 * 2


def test_train_step_under_jit():
  generator, discriminator = _tiny_generator(32), _tiny_discriminator(32)
  # The same latents under two different priors, in one batch.
  z = jnp.tile(_normal(0, (2, generator.z_dim)), (2, 1))
  prior = _normal(1, (4, PRIOR_DIM))
  gan = _gan(generator, discriminator)
  g_vars, d_vars = gan.init(_init_key(2))

  @jax.jit
  def train_step(g_vars, d_vars):
    fakes, g_updates = gan.generate(*gan_lib.split_variables(g_vars), z, prior, None)
    scores, d_updates = gan.discriminate(*gan_lib.split_variables(d_vars), fakes[:2],
                                         prior[:2])
    return fakes, scores, g_updates, d_updates

  fakes, scores, g_updates, d_updates = train_step(g_vars, d_vars)
  assert fakes.shape == (4, 32, 32, 3)
  assert float(jnp.max(jnp.abs(fakes))) <= 1.0
  assert scores.shape == (2,) and bool(jnp.all(jnp.isfinite(scores)))
  # Training advances batch statistics and power iterations.
  assert not np.allclose(g_updates["batch_stats"]["bn_out"]["mean"],
                         g_vars["batch_stats"]["bn_out"]["mean"])
  assert not np.allclose(d_updates["batch_stats"]["d_l"]["sn"]["dense/kernel/u"],
                         d_vars["batch_stats"]["d_l"]["sn"]["dense/kernel/u"])
  # D_emb's too: its state is D's, where the network held it before the transforms.
  assert not np.allclose(d_updates["batch_stats"]["d_emb"]["sn"]["dense/kernel/u"],
                         d_vars["batch_stats"]["d_emb"]["sn"]["dense/kernel/u"])
  # The prior steers the image through conditional batch norm.
  assert not np.allclose(fakes[:2], fakes[2:], atol=1e-4)


def test_default_widths_match_sngan_128():
  gan = _gan(sngan.Generator(resolution=128), sngan.ProjectionDiscriminator(resolution=128),
             cond_dim=1280)
  g_shapes, d_shapes = jax.eval_shape(gan.init, jax.random.key(0))
  g_flat = traverse_util.flatten_dict(g_shapes["params"], sep="/")
  d_flat = traverse_util.flatten_dict(d_shapes["params"], sep="/")
  assert g_flat["g_emb/kernel"].shape == (1280, 128)
  assert g_flat["linear/dense/kernel"].shape == (20, 4 * 4 * 1024)  # z chunk of 120 / 6.
  assert g_flat["block4/conv2/conv/kernel"].shape == (3, 3, 64, 64)
  assert g_flat["block0/cbn1/gain/dense/kernel"].shape == (128 + 20, 1024)
  assert d_flat["d_emb/dense/kernel"].shape == (1280, 1024)
  assert d_flat["d_l/dense/kernel"].shape == (1024, 1)


def test_bad_configs_are_refused():
  with pytest.raises(ValueError, match="resolution"):
    sngan.num_upsamplings(48)
  with pytest.raises(ValueError, match="chunks"):
    jax.eval_shape(sngan.Generator(resolution=32, z_dim=10).init, _init_key(0),
                   jnp.zeros((1, 10)), jnp.zeros((1, 4)))


def _unit(seed: int, size: int) -> np.ndarray:
  v = np.random.default_rng(seed).standard_normal(size)
  return (v / np.linalg.norm(v)).astype(np.float32)


def test_projection_discriminator_is_the_formula():
  """D(x, y) = D_emb(y) . D_f(x) + D_l(D_f(x)) with hand-made D_emb and D_l.

  Rank-one kernels of unit norm have top singular value exactly 1, which one power
  iteration finds, so spectral normalisation leaves them as given.
  """
  discriminator = _tiny_discriminator(32)
  gan = _gan(_tiny_generator(32), discriminator)
  images = _normal(0, (3, 32, 32, 3))
  prior = np.asarray(_normal(1, (3, PRIOR_DIM)))
  _, variables = gan.init(_init_key(2))
  params = traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")
  feature_dim = params["d_l/dense/kernel"].shape[0]
  a, b, w = _unit(0, PRIOR_DIM), _unit(1, feature_dim), _unit(2, feature_dim)
  params["d_emb/dense/kernel"] = np.outer(a, b)
  params["d_l/dense/kernel"] = w[:, None]
  params["d_l/dense/bias"] = np.array([0.25], np.float32)
  d_params = traverse_util.unflatten_dict(params, sep="/")
  d_state = {"batch_stats": variables["batch_stats"]}
  network_vars = gan_lib.variables(gan.network_params(D, d_params), d_state)

  features = np.asarray(discriminator.apply(network_vars, images, method="features"))
  expected = (prior @ a) * (features @ b) + features @ w + 0.25
  scores, _ = gan.discriminate(d_params, d_state, images, prior)
  np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
  # The same through the pieces, at any parameters: D_emb (the condition transform's)
  # and the network's own.
  embedding = gan.embed_condition(D, d_params, d_state, prior)
  pieces = discriminator.apply(
      network_vars, images, embedding,
      method=lambda d, x, e: jnp.sum(e * d.features(x), -1) + d.unconditional(d.features(x)))
  np.testing.assert_allclose(scores, pieces, rtol=1e-5, atol=1e-5)


def test_conditional_batch_norm_with_constant_prior_is_batch_norm():
  cbn = sngan.ConditionalBatchNorm(features=6)
  x = 3 * _normal(0, (5, 4, 4, 6)) + 1
  condition = jnp.tile(_normal(1, (1, 7)), (5, 1))
  variables = cbn.init(_init_key(2), x, condition, train=True)
  ours, _ = cbn.apply(variables, x, condition, train=True, mutable=["batch_stats"])
  gain, bias = cbn.apply(variables, condition, False, method="affine")

  bn = nn.BatchNorm(use_running_average=False, epsilon=1e-5)
  bn_vars = bn.init(jax.random.key(0), x)
  bn_vars = {**bn_vars, "params": {"scale": gain[0], "bias": bias[0]}}
  reference, _ = bn.apply(bn_vars, x, mutable=["batch_stats"])
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer, x_shape", [
    (sngan.SNDense(5, use_bias=False), (2, 8)),
    (sngan.SNConv(5, kernel_size=3), (1, 6, 6, 4)),
])
def test_spectral_norm_normalises(layer, x_shape):
  x = jnp.ones(x_shape)
  variables = layer.init(_init_key(0), x, train=False)
  kernel = traverse_util.flatten_dict(variables["params"], sep="/")
  kernel = np.asarray(next(v for k, v in kernel.items() if k.endswith("kernel")))
  matrix = kernel.reshape(-1, kernel.shape[-1])  # [kh * kw * in, out], as SNGAN takes it.
  top_singular = np.linalg.svd(matrix, compute_uv=False)[0]

  @jax.jit
  def power_iteration(variables):
    _, updates = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    return {**variables, **updates}

  for _ in range(30):
    variables = power_iteration(variables)
  stats = traverse_util.flatten_dict(variables["batch_stats"], sep="/")
  sigma = float(next(v for k, v in stats.items() if k.endswith("sigma")))
  np.testing.assert_allclose(sigma, top_singular, rtol=1e-3)

  # The layer's effective kernel, read off its response to unit inputs, has norm one.
  @functools.partial(jax.jit, static_argnames="train")
  def effective_dense_kernel(variables, train):
    return layer.apply(variables, jnp.eye(matrix.shape[0]), train=train)

  if isinstance(layer, sngan.SNDense):
    effective = np.asarray(effective_dense_kernel(variables, False))
    np.testing.assert_allclose(effective, matrix / sigma, rtol=1e-5, atol=1e-6)
    assert abs(np.linalg.svd(effective, compute_uv=False)[0] - 1) < 1e-3
