"""StyleGAN2 layers and networks against the official architecture and direct references.

Kept fast: tiny resolutions and widths; most networks get random-normal parameters built
from `jax.eval_shape` (no RNG kernels to compile) and one real init checks init values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from gantransfer_jax.models import layers, stylegan2

# Resolution 8 keeps every kind of block: b4 (const, conv1, torgb) and b8 (conv0 up).
TINY_G = dict(resolution=8, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128,
              channel_max=32)


def _random_like(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def _g_shapes(gen, batch=2):
  return jax.eval_shape(gen.init, {"params": jax.random.key(0), "noise": jax.random.key(1)},
                        jnp.zeros((batch, gen.z_dim)))


@pytest.fixture(scope="module")
def tiny_g():
  gen = stylegan2.Generator(**TINY_G)
  z = jax.random.normal(jax.random.key(0), (4, gen.z_dim))
  # The non-partitionable threefry compiles ~3x faster on CPU; init has one RNG kernel
  # per parameter, so this dominates the test's time.
  with jax.threefry_partitionable(False):
    variables = jax.jit(gen.init)({"params": jax.random.key(1), "noise": jax.random.key(2)}, z)
  return gen, variables, z


# --------------------------------------------------------------------------------------
# Parameter structure and counts.


def _expected_g_params(res, z_dim, w_dim, mapping_layers, channel_base, channel_max):
  """Parameter count of the official skip generator, from its layer list."""
  ch = lambda r: min(channel_base // r, channel_max)
  dense = lambda i, o: i * o + o
  synthesis_layer = lambda i, o: dense(w_dim, i) + 9 * i * o + o + 1  # + noise_strength
  torgb = lambda i: dense(w_dim, i) + 3 * i + 3
  total = dense(z_dim, w_dim) + (mapping_layers - 1) * dense(w_dim, w_dim)
  total += 16 * ch(4) + synthesis_layer(ch(4), ch(4)) + torgb(ch(4))
  r = 8
  while r <= res:
    total += synthesis_layer(ch(r // 2), ch(r)) + synthesis_layer(ch(r), ch(r)) + torgb(ch(r))
    r *= 2
  return total


def _expected_d_params(res, channel_base, channel_max, mbstd_channels=1):
  """Parameter count of the official resnet discriminator, from its layer list."""
  ch = lambda r: min(channel_base // r, channel_max)
  conv = lambda i, o, k, bias=True: i * o * k * k + (o if bias else 0)
  total = conv(3, ch(res), 1)  # fromrgb of the top block
  r = res
  while r >= 8:
    total += conv(ch(r), ch(r), 3) + conv(ch(r), ch(r // 2), 3) + conv(ch(r), ch(r // 2), 1, False)
    r //= 2
  c4 = ch(4)
  return total + conv(c4 + mbstd_channels, c4, 3) + (16 * c4 * c4 + c4) + (c4 + 1)


@pytest.mark.parametrize("config", [
    dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=64),
    dict(resolution=32, z_dim=8, w_dim=16, mapping_layers=3, channel_base=512, channel_max=32),
    # The NOTES §2 recipe: 256 x 256, 2 mapping layers.
    dict(resolution=256, z_dim=512, w_dim=512, mapping_layers=2, channel_base=32768,
         channel_max=512),
])
def test_parameter_counts_match_the_official_architecture(config):
  gen = stylegan2.Generator(**config)
  g_params = _g_shapes(gen)["params"]
  assert stylegan2.count_params(g_params) == _expected_g_params(
      config["resolution"], config["z_dim"], config["w_dim"], config["mapping_layers"],
      config["channel_base"], config["channel_max"])

  disc = stylegan2.Discriminator(config["resolution"], config["channel_base"],
                                 config["channel_max"])
  images = jnp.zeros((4, config["resolution"], config["resolution"], 3))
  d_params = jax.eval_shape(disc.init, jax.random.key(0), images)["params"]
  assert stylegan2.count_params(d_params) == _expected_d_params(
      config["resolution"], config["channel_base"], config["channel_max"])


def test_config_f_1024_generator_has_the_official_parameter_count():
  # The official StyleGAN2-ADA config-f FFHQ 1024 generator has 30,370,060 parameters.
  shapes = _g_shapes(stylegan2.Generator(1024), batch=1)["params"]
  assert stylegan2.count_params(shapes) == 30_370_060


def test_generator_variables_names_shapes_and_init(tiny_g):
  gen, variables, _ = tiny_g
  params = variables["params"]
  assert set(params["mapping"]) == {"fc0", "fc1"}
  assert set(params["synthesis"]) == {"b4", "b8"}
  b4, b8 = params["synthesis"]["b4"], params["synthesis"]["b8"]
  assert set(b4) == {"const", "conv1", "torgb"}
  assert set(b8) == {"conv0", "conv1", "torgb"}
  assert b4["const"].shape == (4, 4, 32)
  assert b8["conv0"]["weight"].shape == (3, 3, 32, 16)      # HWIO
  assert b8["conv0"]["affine"]["weight"].shape == (16, 32)  # [w_dim, in_channels]
  assert b8["torgb"]["weight"].shape == (1, 1, 16, 3)
  assert "noise_strength" not in b8["torgb"]
  # Official init: affine bias 1, noise strength 0, weights randn / lr_multiplier.
  np.testing.assert_array_equal(b8["conv1"]["affine"]["bias"], 1.0)
  assert b8["conv1"]["noise_strength"].shape == () and b8["conv1"]["noise_strength"] == 0
  assert 50 < np.std(params["mapping"]["fc1"]["weight"]) < 200    # ~ 1 / 0.01
  assert 0.8 < np.std(b8["conv1"]["weight"]) < 1.2
  np.testing.assert_array_equal(variables["stats"]["w_avg"], np.zeros(16))
  consts = variables["noise_consts"]["synthesis"]
  assert consts["b8"]["conv0"]["noise_const"].shape == (8, 8)
  assert consts["b4"]["conv1"]["noise_const"].shape == (4, 4)


def test_discriminator_names_and_freezed_block_order():
  disc = stylegan2.Discriminator(32, channel_base=256, channel_max=32)
  params = jax.eval_shape(disc.init, jax.random.key(0), jnp.zeros((4, 32, 32, 3)))["params"]
  names = stylegan2.discriminator_block_names(32)
  assert names == ["b32", "b16", "b8", "b4"]
  assert set(params) == set(names)
  assert set(params["b32"]) == {"fromrgb", "conv0", "conv1", "skip"}
  assert set(params["b16"]) == {"conv0", "conv1", "skip"}
  assert set(params["b4"]) == {"conv", "fc", "out"}
  assert "bias" not in params["b16"]["skip"]
  assert params["b4"]["conv"]["weight"].shape == (3, 3, 33, 32)  # + 1 mbstd channel
  assert stylegan2.discriminator_block_names(256)[:2] == ["b256", "b128"]
  with pytest.raises(ValueError):
    stylegan2.discriminator_block_names(4)


def test_count_params():
  assert stylegan2.count_params({"a": jnp.zeros((2, 3)), "b": [jnp.zeros(()), jnp.ones(4)]}) == 11


# --------------------------------------------------------------------------------------
# Generator behaviour.


def test_generator_shapes_jit_and_noise_modes():
  gen = stylegan2.Generator(resolution=16, z_dim=8, w_dim=8, mapping_layers=1,
                            channel_base=64, channel_max=16)
  variables = _random_like(_g_shapes(gen, batch=3))
  z = jax.random.normal(jax.random.key(0), (3, 8))
  assert gen.num_ws == 6

  ws = jax.jit(lambda v, z: gen.apply(v, z, method=gen.map))(variables, z)
  assert ws.shape == (3, 6, 8)

  synthesize = jax.jit(
      lambda v, ws, key, mode: gen.apply(v, ws, noise_mode=mode, method=gen.synthesize,
                                         rngs={"noise": key}), static_argnums=3)
  random_a = synthesize(variables, ws, jax.random.key(1), "random")
  random_b = synthesize(variables, ws, jax.random.key(2), "random")
  assert random_a.shape == (3, 16, 16, 3) and random_a.dtype == jnp.float32
  assert np.all(np.isfinite(random_a))
  assert not np.allclose(random_a, random_b)  # noise_strength != 0 here
  np.testing.assert_array_equal(random_a, synthesize(variables, ws, jax.random.key(1), "random"))
  const_a = synthesize(variables, ws, jax.random.key(1), "const")
  np.testing.assert_array_equal(const_a, synthesize(variables, ws, jax.random.key(2), "const"))
  assert not np.allclose(const_a, random_a)

  # noise_mode='none' needs neither an rng nor 'noise_consts' nor 'stats'.
  params_only = {"params": variables["params"]}
  none = jax.eval_shape(lambda: gen.apply(params_only, ws, noise_mode="none",
                                          method=gen.synthesize))
  assert none.shape == (3, 16, 16, 3)
  with pytest.raises(ValueError, match="noise_mode"):
    gen.apply(params_only, ws, noise_mode="off", method=gen.synthesize)


def test_truncation_and_w_avg_update(tiny_g):
  gen, variables, z = tiny_g
  w_avg = jax.random.normal(jax.random.key(3), (gen.w_dim,))
  variables = {**variables, "stats": {"w_avg": w_avg}}
  ws = gen.apply(variables, z, method=gen.map)

  truncated = gen.apply(variables, z, truncation_psi=0.0, method=gen.map)
  np.testing.assert_allclose(truncated, np.broadcast_to(w_avg, ws.shape), rtol=1e-6)
  half = gen.apply(variables, z, truncation_psi=0.5, truncation_cutoff=2, method=gen.map)
  np.testing.assert_allclose(half[:, :2], (w_avg + 0.5 * (ws - w_avg))[:, :2], rtol=1e-5)
  np.testing.assert_array_equal(half[:, 2:], ws[:, 2:])

  # EMA of the batch-mean w: w_avg <- mean + beta * (w_avg - mean).
  _, updated = gen.apply(variables, z, update_w_avg=True, method=gen.map, mutable=["stats"])
  batch_mean = ws[:, 0].mean(axis=0)
  np.testing.assert_allclose(updated["stats"]["w_avg"],
                             batch_mean + 0.995 * (w_avg - batch_mean), rtol=1e-5)
  # Not requested, or the collection is immutable: no update, no error.
  _, same = gen.apply(variables, z, method=gen.map, mutable=["stats"])
  np.testing.assert_array_equal(same["stats"]["w_avg"], w_avg)
  gen.apply(variables, z, update_w_avg=True, method=gen.map)


def test_style_mix():
  batch, num_ws = 64, 6
  ws = jnp.zeros((batch, num_ws, 3))
  other = jnp.ones((batch, num_ws, 3))
  mix = jax.jit(stylegan2.style_mix, static_argnames="per_sample")
  mixed = np.asarray(mix(jax.random.key(0), ws, other, 1.0))[..., 0]
  cutoffs = num_ws - mixed.sum(axis=1)
  # Every sample: ws below the cutoff, ws_other from it on, cutoff in [1, num_ws).
  np.testing.assert_array_equal(mixed, np.arange(num_ws)[None] >= cutoffs[:, None])
  assert cutoffs.min() >= 1 and cutoffs.max() <= num_ws - 1
  assert len(np.unique(cutoffs)) == num_ws - 1

  np.testing.assert_array_equal(mix(jax.random.key(0), ws, other, 0.0), ws)
  half = np.asarray(mix(jax.random.key(1), ws, other, 0.5))[..., 0]
  assert 0.2 < np.mean(half.any(axis=1)) < 0.8
  per_batch = np.asarray(mix(jax.random.key(0), ws, other, 1.0, per_sample=False))[..., 0]
  assert np.all(per_batch == per_batch[:1])


def test_bfloat16_generator_close_to_float32(tiny_g):
  gen, variables, z = tiny_g
  params = {"params": variables["params"]}
  low = stylegan2.Generator(**TINY_G, dtype=jnp.bfloat16)
  run = lambda g: jax.jit(lambda v, z: g.apply(v, z, noise_mode="none"))(params, z)
  reference, result = run(gen), run(low)
  assert result.dtype == jnp.float32
  np.testing.assert_allclose(result, reference, atol=0.05 * np.std(reference) + 1e-3)


# --------------------------------------------------------------------------------------
# Layers against direct references.


def _upfirdn2d_reference(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
  """numpy/scipy transcription of the official `_upfirdn2d_ref` (NHWC)."""
  n, h, w, c = x.shape
  y = np.zeros((n, h * up, w * up, c))
  y[:, ::up, ::up] = x
  top, bottom, left, right = pad
  y = np.pad(y, ((0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)), (0, 0)))
  y = y[:, max(-top, 0):y.shape[1] - max(-bottom, 0), max(-left, 0):y.shape[2] - max(-right, 0)]
  y = scipy.signal.convolve(y, f[None, :, :, None] * gain, mode="valid")  # true convolution
  return y[:, ::down, ::down]


def _channel_conv(x, w, correlate):
  """[N, H, W, I] x [k, k, I, O] 'valid' convolution or correlation, per channel pair."""
  op = scipy.signal.correlate2d if correlate else scipy.signal.convolve2d
  n, _, _, cin = x.shape
  return np.stack([
      np.stack([sum(op(x[b, :, :, i], w[:, :, i, o], mode="valid") for i in range(cin))
                for o in range(w.shape[3])], axis=-1) for b in range(n)])


def test_upfirdn2d_matches_official_reference_with_asymmetric_filter():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
  full_rank = rng.standard_normal((4, 4)).astype(np.float32)  # asymmetric: catches flips
  # Rank 1 but with different row and column taps: the separable path's two 1D passes.
  separable = np.outer([1.0, -2.0, 0.5, 3.0], [0.25, 1.0, 2.0, -1.0]).astype(np.float32)
  for f in (full_rank, separable):
    for up, down, pad in [(1, 1, (1, 2, 0, 3)), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)),
                          (2, 1, (-1, 2, 3, -2)), (1, 2, (0, 1, 2, 0))]:
      expected = _upfirdn2d_reference(x, f, up, down, pad, gain=1.5)
      result = layers.upfirdn2d(jnp.asarray(x), f, up=up, down=down, padding=pad, gain=1.5)
      np.testing.assert_allclose(result, expected, atol=1e-4, err_msg=f"{f} {up} {down} {pad}")


def test_resampling_preserves_constants_and_sizes():
  f = layers.setup_filter()
  np.testing.assert_allclose(f, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)
  x = jnp.ones((1, 8, 8, 2))
  up = layers.upsample2d(x, f)
  down = layers.downsample2d(x, f)
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(up[:, 2:-2, 2:-2], 1.0, rtol=1e-6)  # away from the zero border
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, rtol=1e-6)


def test_conv2d_resample_matches_the_official_generic_path():
  """The official fast paths (transposed conv, strided conv) against its generic path."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
  w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
  f = rng.uniform(0.1, 1.0, (4, 4)).astype(np.float32)  # asymmetric

  # Upsampling layers (flip_weight=False): filter-upsample padded by (3, 2), then a true
  # convolution with the kernel.
  up = _upfirdn2d_reference(x, f, up=2, pad=(3, 2, 3, 2), gain=4)
  expected_up = _channel_conv(up, w, correlate=False)
  result_up = layers.conv2d_resample(jnp.asarray(x), jnp.asarray(w), f, up=2, padding=1)
  assert result_up.shape == (2, 8, 8, 2)
  np.testing.assert_allclose(result_up, expected_up, atol=1e-4)

  # Downsampling layers (flip_weight=True): pad by 2, correlate, filter and decimate.
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  expected_down = _upfirdn2d_reference(_channel_conv(padded, w, correlate=True), f, down=2)
  result_down = layers.conv2d_resample(jnp.asarray(x), jnp.asarray(w), f, down=2, padding=1)
  assert result_down.shape == (2, 2, 2, 2)
  np.testing.assert_allclose(result_down, expected_down, atol=1e-4)

  # 1x1 downsampling (the resnet skip): pad by 1, 1x1 conv, filter and decimate.
  w1 = w[1:2, 1:2]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected_skip = _upfirdn2d_reference(_channel_conv(padded, w1, correlate=True), f, down=2)
  result_skip = layers.conv2d_resample(jnp.asarray(x), jnp.asarray(w1), f, down=2)
  np.testing.assert_allclose(result_skip, expected_skip, atol=1e-4)

  # No resampling: 'same' correlation.
  expected_same = _channel_conv(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), w, correlate=True)
  np.testing.assert_allclose(layers.conv2d_resample(jnp.asarray(x), jnp.asarray(w), padding=1),
                             expected_same, atol=1e-4)


def _demodulated_weights(weight, styles):
  """Official per-sample weights [B, k, k, I, O]: w * s, divided by their norm."""
  w = weight[None] * styles[:, None, None, :, None]
  return w / np.sqrt(np.sum(w ** 2, axis=(1, 2, 3), keepdims=True) + 1e-8)


def test_modulated_conv_equals_grouped_per_sample_convolution():
  rng = np.random.default_rng(2)
  batch, cin, cout = 3, 4, 5
  x = rng.standard_normal((batch, 6, 6, cin)).astype(np.float32)
  weight = rng.standard_normal((3, 3, cin, cout)).astype(np.float32)
  styles = rng.uniform(0.2, 2.0, (batch, cin)).astype(np.float32)
  per_sample = _demodulated_weights(weight, styles)

  # The official fused form: one grouped convolution, group b = sample b.
  grouped_x = jnp.asarray(x.transpose(1, 2, 0, 3).reshape(1, 6, 6, batch * cin))
  grouped_w = jnp.asarray(per_sample.transpose(1, 2, 3, 0, 4).reshape(3, 3, cin, batch * cout))
  fused = jax.lax.conv_general_dilated(grouped_x, grouped_w, (1, 1), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=batch)
  fused = np.asarray(fused).reshape(6, 6, batch, cout).transpose(2, 0, 1, 3)
  result = layers.modulated_conv2d(jnp.asarray(x), jnp.asarray(weight), jnp.asarray(styles),
                                   padding=1)
  np.testing.assert_allclose(result, fused, atol=1e-4)

  # With upsampling: a per-sample convolution with each sample's own weights.
  f = layers.setup_filter()
  direct = jax.vmap(lambda xb, wb: layers.conv2d_resample(xb[None], wb, f, up=2, padding=1)[0])(
      jnp.asarray(x), jnp.asarray(per_sample))
  result_up = layers.modulated_conv2d(jnp.asarray(x), jnp.asarray(weight), jnp.asarray(styles),
                                      up=2, padding=1, resample_filter=f)
  np.testing.assert_allclose(result_up, direct, atol=1e-4)


@pytest.mark.parametrize("style_scale", [0.01, 1.0, 100.0])
def test_demodulation_keeps_unit_variance_for_any_style_scale(style_scale):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((4, 12, 12, 64)), jnp.float32)
  weight = jnp.asarray(rng.standard_normal((3, 3, 64, 32)), jnp.float32)
  styles = style_scale * jnp.asarray(rng.uniform(0.5, 1.5, (4, 64)), jnp.float32)
  out = layers.modulated_conv2d(x, weight, styles, padding=1)
  interior_std = float(jnp.std(out[:, 1:-1, 1:-1]))  # away from the zero padding
  assert 0.9 < interior_std < 1.1


def test_minibatch_std_matches_official_formula():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((8, 3, 3, 6)).astype(np.float32)
  result = np.asarray(stylegan2.minibatch_std(jnp.asarray(x), group_size=4, num_channels=2))

  # The official NCHW computation, transcribed.
  xc = x.transpose(0, 3, 1, 2)
  y = xc.reshape(4, -1, 2, 3, 3, 3)
  y = np.sqrt(((y - y.mean(axis=0)) ** 2).mean(axis=0) + 1e-8).mean(axis=(2, 3, 4))
  y = np.tile(y.reshape(-1, 2, 1, 1), (4, 1, 3, 3))
  expected = np.concatenate([xc, y], axis=1).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(result, expected, rtol=1e-5)

  small = stylegan2.minibatch_std(jnp.asarray(x[:2]), group_size=4)  # group = min(4, N)
  assert small.shape == (2, 3, 3, 7)
  with pytest.raises(ValueError, match="divide the batch"):
    stylegan2.minibatch_std(jnp.asarray(x[:6]), group_size=4)


def test_discriminator_returns_one_logit_per_sample_under_jit():
  disc = stylegan2.Discriminator(16, channel_base=64, channel_max=16)
  images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = _random_like(jax.eval_shape(disc.init, jax.random.key(0), images))
  logits = jax.jit(disc.apply)(variables, images)
  assert logits.shape == (4,) and np.all(np.isfinite(logits))
  assert len(np.unique(np.asarray(logits))) == 4
  six = jnp.concatenate([images, images[:2]])
  with pytest.raises(ValueError, match="divide the batch"):
    jax.eval_shape(disc.apply, variables, six)
  with pytest.raises(ValueError, match="expected images"):
    jax.eval_shape(disc.apply, variables, images[:, :8, :8])
