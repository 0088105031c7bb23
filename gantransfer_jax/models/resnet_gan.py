"""The ResNet GAN of GAN_stability (Mescheder et al. 2018), which AdaFM transfers from.

AdaFM (Zhao et al. 2020) starts from the authors' ImageNet 128 x 128 GP-GAN: nf 64, z 256,
six groups of two residual blocks in each network. Activations are NHWC and conv kernels
HWIO; convs are plain `nn.Conv` (no equalized learning rate), as in the original.

Groups and channels. A network at resolution R has n = log2(R / 4) + 1 groups
`resnet_0` ... `resnet_{n-1}`, one per feature-map size (4 x 4 ... R x R), each holding
residual blocks `0` and `1`. Widths grow by 2 per halving of the feature map and are
capped at 16 nf:

* G: group i (0 = the 4 x 4 group) outputs nf * min(2^(n-1-i), 16) channels; `fc` maps z
  to the first group's width at 4 x 4. At 128 (nf 64): fc -> 1024 x 4 x 4, then
  1024, 1024, 512, 256, 128, 64 for resnet_0..5, as in the authors' model.
* D: `conv_img` maps RGB to nf channels; group j (0 = the R x R group) outputs
  nf * min(2^(j+1), 16). At 128: 128, 256, 512, 1024, 1024, 1024.

In a G group the first block changes the width and the second keeps it; in a D group the
first keeps it and the second changes it (the authors' order). A block whose width changes
has a learned 1x1 shortcut `conv_s` (no bias); its hidden width is min(in, out).

Parameter names mirror the authors' state dict (`resnet_2.0.conv_0.weight` is our
`resnet_2/0/conv_0/kernel`), so `gantransfer_jax.convert.gan_stability` is a rename plus
a layout change. G's `fc` output and D's `fc` input are ordered channel-major (C, H, W),
as torch's `view` orders them, so those weights need no reordering either.

Transfer splits (GmDn) freeze the groups nearest the image; `generator_group_names` and
`discriminator_group_names` list them in that order for `freezing.split`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gantransfer_jax import freezing

Array = jax.Array
Prefix = tuple[str, ...]

MIN_RESOLUTION = 4
MAX_WIDTH_MULTIPLIER = 16
RESIDUAL_SCALE = 0.1  # The authors' `x_s + 0.1 * dx`: keeps each block close to identity.
# The family's config section (`config.resnet`) as a new config starts it: the
# authors' 128 x 128 model (NOTES §3).
CONFIG_DEFAULTS = dict(z_dim=256, nf=64)


def num_groups(resolution: int) -> int:
  """Groups of residual blocks: one per feature-map size from 4 x 4 up to `resolution`."""
  levels = resolution.bit_length() - 1
  if resolution < 2 * MIN_RESOLUTION or resolution != 1 << levels:
    raise ValueError(f"resolution must be a power of two >= {2 * MIN_RESOLUTION}, "
                     f"got {resolution}")
  return levels - 1


def generator_widths(resolution: int, nf: int) -> list[int]:
  """Output channels of G's groups resnet_0 ... resnet_{n-1} (fc outputs the first)."""
  n = num_groups(resolution)
  return [nf * min(2 ** (n - 1 - i), MAX_WIDTH_MULTIPLIER) for i in range(n)]


def discriminator_widths(resolution: int, nf: int) -> list[int]:
  """Output channels of D's groups resnet_0 ... resnet_{n-1} (conv_img outputs nf)."""
  return [nf * min(2 ** (j + 1), MAX_WIDTH_MULTIPLIER) for j in range(num_groups(resolution))]


def generator_group_names(resolution: int) -> list[Prefix]:
  """G's groups from the image side: each entry names the top-level params of one group.

  A group is all layers at one feature-map size, so the output conv belongs to the last
  residual group: the AdaFM paper's G4 at 128 freezes resnet_2..5 and conv_img.
  """
  n = num_groups(resolution)
  return [(f"resnet_{n - 1}", "conv_img")] + [(f"resnet_{i}",) for i in range(n - 2, -1, -1)]


def discriminator_group_names(resolution: int) -> list[Prefix]:
  """D's groups from the image side; the input conv counts as a group of its own.

  That is the authors' D2 (AdaFM NOTES §3): the input conv and resnet_0 are frozen.
  """
  return [("conv_img",)] + [(f"resnet_{j}",) for j in range(num_groups(resolution))]


def frozen_prefixes(groups: Sequence[Prefix], num_frozen: int) -> list[Prefix]:
  """`freezing.split` prefixes for the first `num_frozen` of `groups` (image side first),
  each group given by its top-level names."""
  return list(freezing.group_prefixes(freezing.named_groups(groups), num_frozen))


def leaky_relu(x: Array) -> Array:
  return jax.nn.leaky_relu(x, 0.2)


def conv3x3(features: int, name: str, use_bias: bool = True) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=use_bias, name=name)


def upsample_nearest(x: Array) -> Array:
  """x2 nearest-neighbour upsampling (torch's `F.interpolate(x, scale_factor=2)`)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool_3x3(x: Array) -> Array:
  """`F.avg_pool2d(x, 3, stride=2, padding=1)`: zero padding counts in the mean (/ 9)."""
  return nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                     count_include_pad=True)


class ResnetBlock(nn.Module):
  """`shortcut(x) + 0.1 * conv_1(lrelu(conv_0(lrelu(x))))`, the authors' ResnetBlock."""

  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    hidden = min(in_features, self.features)
    dx = conv3x3(hidden, "conv_0")(leaky_relu(x))
    dx = conv3x3(self.features, "conv_1")(leaky_relu(dx))
    if in_features != self.features:
      x = nn.Conv(self.features, (1, 1), use_bias=False, name="conv_s")(x)
    return x + RESIDUAL_SCALE * dx


class ResnetGroup(nn.Module):
  """Two residual blocks `0` and `1`; `widen_first` says which one changes the width."""

  features: int
  widen_first: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    first = self.features if self.widen_first else x.shape[-1]
    x = ResnetBlock(first, name="0")(x)
    return ResnetBlock(self.features, name="1")(x)


def generator_tail(x: Array, resolution: int, nf: int, first_group: int) -> Array:
  """G's groups first_group ... n-1 and the output conv: [B, r, r, C] -> images in [-1, 1].

  Called inside a compact method, so the layers become children of the calling module
  under the authors' names. `x` is at group `first_group`'s feature-map size: the
  upsampling in front of that group is the caller's (SmallHead's transposed convs do it).
  """
  widths = generator_widths(resolution, nf)
  for group in range(first_group, len(widths)):
    if group > first_group:
      x = upsample_nearest(x)
    x = ResnetGroup(widths[group], widen_first=True, name=f"resnet_{group}")(x)
  x = conv3x3(3, "conv_img")(leaky_relu(x))
  return jnp.tanh(x)


class ResNetGenerator(nn.Module):
  """z [B, z_dim] -> images [B, R, R, 3] in [-1, 1] (unconditional GAN_stability G)."""

  resolution: int
  z_dim: int = 256
  nf: int = 64

  @nn.compact
  def __call__(self, z: Array) -> Array:
    width = generator_widths(self.resolution, self.nf)[0]
    x = nn.Dense(width * MIN_RESOLUTION ** 2, name="fc")(z)
    # Channel-major, as the authors' `view(B, C, 4, 4)`: their fc weights load unchanged.
    x = x.reshape(-1, width, MIN_RESOLUTION, MIN_RESOLUTION).transpose(0, 2, 3, 1)
    return generator_tail(x, self.resolution, self.nf, first_group=0)


class ResNetDiscriminator(nn.Module):
  """images [B, R, R, 3] -> logits [B] (unconditional GAN_stability D)."""

  resolution: int
  nf: int = 64

  @nn.compact
  def __call__(self, images: Array) -> Array:
    x = conv3x3(self.nf, "conv_img")(images)
    for group, width in enumerate(discriminator_widths(self.resolution, self.nf)):
      if group > 0:
        x = avg_pool_3x3(x)
      x = ResnetGroup(width, widen_first=False, name=f"resnet_{group}")(x)
    # Channel-major flatten, as torch's NCHW `view(B, -1)`.
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)
    return nn.Dense(1, name="fc")(leaky_relu(x))[:, 0]
