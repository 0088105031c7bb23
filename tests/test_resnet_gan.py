"""GAN_stability ResNet G and D: shapes, the authors' names and widths, block and pooling math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from gantransfer_jax import freezing
from gantransfer_jax.models import resnet_gan


def _shapes(tree):
  return {"/".join(p): tuple(v.shape) for p, v in traverse_util.flatten_dict(tree).items()}


def _conv_reference(x, kernel, bias=None):
  """'Same' cross-correlation of NHWC x with an HWIO kernel (odd size), in numpy."""
  k = kernel.shape[0]
  pad = k // 2
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, w = x.shape[1:3]
  out = sum(np.einsum("bhwi,io->bhwo", padded[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
            for dy in range(k) for dx in range(k))
  return out if bias is None else out + bias


def _lrelu(x):
  return np.where(x >= 0, x, 0.2 * x)


def test_generator_and_discriminator_run():
  generator = resnet_gan.ResNetGenerator(8, z_dim=6, nf=4)
  discriminator = resnet_gan.ResNetDiscriminator(8, nf=4)
  z = jax.random.normal(jax.random.key(0), (2, 6))
  rng = np.random.default_rng(0)
  draw = lambda shapes: jax.tree.map(  # eval_shape + numpy: no per-op compiles of init.
      lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  g_vars = draw(jax.eval_shape(generator.init, jax.random.key(1), z))
  images_shape = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  d_vars = draw(jax.eval_shape(discriminator.init, jax.random.key(2), images_shape))

  @jax.jit
  def run(g_vars, d_vars, z):
    images = generator.apply(g_vars, z)
    return images, discriminator.apply(d_vars, images)

  images, logits = run(g_vars, d_vars, z)
  assert images.shape == (2, 8, 8, 3) and logits.shape == (2,)
  assert float(jnp.max(jnp.abs(images))) <= 1.0
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("resolution", [16, 32, 64, 128, 256])
def test_shapes_per_resolution(resolution):
  z = jax.ShapeDtypeStruct((2, 256), jnp.float32)
  generator = resnet_gan.ResNetGenerator(resolution)
  params = jax.eval_shape(generator.init, jax.random.key(0), z)
  images = jax.eval_shape(generator.apply, params, z)
  assert images.shape == (2, resolution, resolution, 3)
  discriminator = resnet_gan.ResNetDiscriminator(resolution)
  d_params = jax.eval_shape(discriminator.init, jax.random.key(0), images)
  assert jax.eval_shape(discriminator.apply, d_params, images).shape == (2,)
  groups = resnet_gan.num_groups(resolution)
  assert sorted(k for k in params["params"] if k.startswith("resnet_")) == [
      f"resnet_{i}" for i in range(groups)]


def test_authors_widths_at_128():
  assert resnet_gan.generator_widths(128, 64) == [1024, 1024, 512, 256, 128, 64]
  assert resnet_gan.discriminator_widths(128, 64) == [128, 256, 512, 1024, 1024, 1024]
  assert resnet_gan.generator_widths(32, 64) == [512, 256, 128, 64]
  assert resnet_gan.generator_widths(256, 64)[:2] == [1024, 1024]
  with pytest.raises(ValueError, match="power of two"):
    resnet_gan.num_groups(96)


def test_parameter_names_mirror_the_authors():
  z = jax.ShapeDtypeStruct((1, 6), jnp.float32)
  g = _shapes(jax.eval_shape(resnet_gan.ResNetGenerator(8, z_dim=6, nf=4).init,
                             jax.random.key(0), z)["params"])
  assert g == {
      "fc/kernel": (6, 128), "fc/bias": (128,),
      **{f"resnet_0/{b}/conv_{c}/{leaf}": shape
         for b in "01" for c in "01" for leaf, shape in (("kernel", (3, 3, 8, 8)),
                                                         ("bias", (8,)))},
      "resnet_1/0/conv_0/kernel": (3, 3, 8, 4), "resnet_1/0/conv_0/bias": (4,),
      "resnet_1/0/conv_1/kernel": (3, 3, 4, 4), "resnet_1/0/conv_1/bias": (4,),
      "resnet_1/0/conv_s/kernel": (1, 1, 8, 4),
      "resnet_1/1/conv_0/kernel": (3, 3, 4, 4), "resnet_1/1/conv_0/bias": (4,),
      "resnet_1/1/conv_1/kernel": (3, 3, 4, 4), "resnet_1/1/conv_1/bias": (4,),
      "conv_img/kernel": (3, 3, 4, 3), "conv_img/bias": (3,),
  }
  images = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  d = _shapes(jax.eval_shape(resnet_gan.ResNetDiscriminator(8, nf=4).init,
                             jax.random.key(0), images)["params"])
  # D widens in the second block of a group: resnet_0 is 4 -> 4 -> 8, resnet_1 8 -> 8 -> 16.
  assert d["conv_img/kernel"] == (3, 3, 3, 4)
  assert d["resnet_0/0/conv_1/kernel"] == (3, 3, 4, 4)
  assert d["resnet_0/1/conv_s/kernel"] == (1, 1, 4, 8)
  assert d["resnet_1/1/conv_1/kernel"] == (3, 3, 8, 16)
  assert "resnet_0/0/conv_s/kernel" not in d
  assert d["fc/kernel"] == (16 * 4 * 4, 1)


@pytest.mark.parametrize("features", [4, 6])
def test_residual_block_formula(features):
  x = np.random.default_rng(0).standard_normal((2, 5, 5, 4)).astype(np.float32)
  block = resnet_gan.ResnetBlock(features)
  rng = np.random.default_rng(1)
  p = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32),
                   jax.eval_shape(block.init, jax.random.key(0), x)["params"])
  dx = _conv_reference(_lrelu(x), p["conv_0"]["kernel"], p["conv_0"]["bias"])
  dx = _conv_reference(_lrelu(dx), p["conv_1"]["kernel"], p["conv_1"]["bias"])
  shortcut = x if features == 4 else _conv_reference(x, p["conv_s"]["kernel"])
  assert ("conv_s" in p) == (features != 4)
  np.testing.assert_allclose(block.apply({"params": p}, x), shortcut + 0.1 * dx,
                             rtol=1e-5, atol=1e-5)


def _avg_pool_reference(x):
  """torch's avg_pool2d(x, 3, stride=2, padding=1) with count_include_pad=True, NHWC."""
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out_h, out_w = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]), x.dtype)
  for i in range(out_h):
    for j in range(out_w):
      out[:, i, j] = padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum(axis=(1, 2)) / 9
  return out


def test_avg_pool_matches_the_authors():
  x = np.random.default_rng(1).standard_normal((2, 8, 8, 3)).astype(np.float32)
  expected = _avg_pool_reference(x)
  np.testing.assert_allclose(resnet_gan.avg_pool_3x3(x), expected, rtol=1e-6, atol=1e-6)
  try:
    import torch  # Optional: the authors' exact call.
  except ImportError:
    return
  pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 3,
                                          stride=2, padding=1)
  np.testing.assert_allclose(pooled.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-6,
                             atol=1e-6)


def test_upsample_is_nearest():
  x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
  up = np.asarray(resnet_gan.upsample_nearest(x))
  assert up.shape == (1, 4, 4, 2)
  np.testing.assert_array_equal(up[0, :2, :2], np.broadcast_to(x[0, 0, 0], (2, 2, 2)))
  np.testing.assert_array_equal(up[0, 2:, 2:], np.broadcast_to(x[0, 1, 1], (2, 2, 2)))


def test_group_names_split_g4d2_at_128():
  g_groups = resnet_gan.generator_group_names(128)
  assert g_groups[0] == ("resnet_5", "conv_img")
  assert resnet_gan.frozen_prefixes(g_groups, 4) == [
      ("resnet_5",), ("conv_img",), ("resnet_4",), ("resnet_3",), ("resnet_2",)]
  d_groups = resnet_gan.discriminator_group_names(128)
  assert resnet_gan.frozen_prefixes(d_groups, 2) == [("conv_img",), ("resnet_0",)]
  with pytest.raises(ValueError):
    resnet_gan.frozen_prefixes(g_groups, 7)

  z = jax.ShapeDtypeStruct((1, 256), jnp.float32)
  params = jax.eval_shape(resnet_gan.ResNetGenerator(128).init, jax.random.key(0), z)["params"]
  trainable, frozen = freezing.split(params, resnet_gan.frozen_prefixes(g_groups, 4))
  assert sorted(trainable) == ["fc", "resnet_0", "resnet_1"]
  assert sorted(frozen) == ["conv_img", "resnet_2", "resnet_3", "resnet_4", "resnet_5"]
