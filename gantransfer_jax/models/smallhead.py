"""AdaFM's tailored specific part (SmallHead) and the generator it forms with a frozen ResNet G.

The AdaFM paper (Zhao et al. 2020, §3.2) replaces the top groups of a pretrained
GAN_stability generator with a small StyleGAN-like head and keeps the m groups nearest
the image (the "general part", frozen and optionally AdaFM-modulated):

  z -> fc -> 512 x 4 x 4 -> style block -> ... -> style block -> general groups -> conv_img
  z -> pixel norm -> 8 x (linear 256, LeakyReLU 0.2) = w, fed to every AdaIN of the head

Style block: transposed conv 4x4/2 -> noise -> AdaIN -> LeakyReLU -> 3x3 conv -> noise ->
AdaIN, plus a 4x4/2 transposed-conv shortcut: `shortcut + 0.1 * out`. Each block doubles
the feature map, so the head has as many blocks as the groups it replaces (2 for G4 at
128: 4 -> 8 -> 16, where resnet_2 starts). The last block outputs the width the first
general group expects (1024 at 128, nf 64); the others keep `base_features`.

Style mixing: every AdaIN takes its own w; given a second latent `z_mix` and a `crossover`
AdaIN index, AdaIN layers from `crossover` on take w(z_mix) (StyleGAN's mixing).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gantransfer_jax import adafm
from gantransfer_jax import freezing
from gantransfer_jax.models import resnet_gan
from gantransfer_jax.models.layers import normalize_2nd_moment

Array = jax.Array
Params = freezing.Params

NOISE_MODES = ("random", "none")
ADAIN_PER_BLOCK = 2


def _check_noise_mode(noise_mode: str) -> None:
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")


class StyleMapping(nn.Module):
  """z -> w: pixel norm, then `num_layers` x (Dense(style_dim), LeakyReLU 0.2)."""

  style_dim: int = 256
  num_layers: int = 8

  @nn.compact
  def __call__(self, z: Array) -> Array:
    x = normalize_2nd_moment(z)
    for i in range(self.num_layers):
      x = resnet_gan.leaky_relu(nn.Dense(self.style_dim, name=f"fc{i}")(x))
    return x


class NoiseInjection(nn.Module):
  """Adds per-pixel Gaussian noise scaled by a learned per-channel weight (init 0)."""

  @nn.compact
  def __call__(self, x: Array, noise_mode: str) -> Array:
    weight = self.param("weight", nn.initializers.zeros, (x.shape[-1],), x.dtype)
    if noise_mode == "none":
      return x
    noise = jax.random.normal(self.make_rng("noise"), x.shape[:-1] + (1,), x.dtype)
    return x + weight * noise


class AdaIN(nn.Module):
  """Instance norm, then a per-sample scale and shift from w: x_hat * (1 + s) + b."""

  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: Array, w: Array) -> Array:
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(var + self.eps)
    # Scale offset by 1 (StyleGAN's ApplyStyle): an untrained style is the identity.
    scale, shift = jnp.split(nn.Dense(2 * x.shape[-1], name="style")(w), 2, axis=-1)
    return x * (1 + scale[:, None, None, :]) + shift[:, None, None, :]


def _upconv(features: int, name: str) -> nn.ConvTranspose:
  return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", name=name)


class StyleBlock(nn.Module):
  """x2 upsampling style block with a transposed-conv shortcut; `ws` is [2, B, style_dim]."""

  features: int

  @nn.compact
  def __call__(self, x: Array, ws: Array, noise_mode: str) -> Array:
    out = _upconv(self.features, "conv_up")(x)
    out = AdaIN(name="adain_0")(NoiseInjection(name="noise_0")(out, noise_mode), ws[0])
    out = resnet_gan.leaky_relu(out)
    out = resnet_gan.conv3x3(self.features, "conv")(out)
    out = AdaIN(name="adain_1")(NoiseInjection(name="noise_1")(out, noise_mode), ws[1])
    return _upconv(self.features, "shortcut")(x) + resnet_gan.RESIDUAL_SCALE * out


def mix_styles(w: Array, w_mix: Array | None, crossover: int | Array | None,
               num_layers: int) -> Array:
  """[num_layers, B, D]: w for AdaIN layers before `crossover`, w_mix from it on."""
  ws = jnp.broadcast_to(w, (num_layers,) + w.shape)
  if w_mix is None:
    return ws
  if crossover is None:
    raise ValueError("style mixing needs a crossover layer index")
  layer = jnp.arange(num_layers)[:, None, None]
  return jnp.where(layer < crossover, ws, w_mix[None])


class SmallHead(nn.Module):
  """z [B, z_dim] -> features [B, 4 * 2^num_blocks, same, out_features].

  Attributes:
    out_features: channels of the last block (the first general group's input width).
    base_features: channels of fc's 4 x 4 map and of the other blocks (512).
    num_blocks: style blocks, each doubling the feature map (2 in the paper).
    style_dim: width of w and of the mapping MLP (256).
    mapping_layers: depth of the mapping MLP (8).
  """

  out_features: int
  base_features: int = 512
  num_blocks: int = 2
  style_dim: int = 256
  mapping_layers: int = 8

  @property
  def num_styles(self) -> int:
    return ADAIN_PER_BLOCK * self.num_blocks

  @nn.compact
  def __call__(self, z: Array, *, z_mix: Array | None = None,
               crossover: int | Array | None = None, noise_mode: str = "random") -> Array:
    _check_noise_mode(noise_mode)
    side = resnet_gan.MIN_RESOLUTION
    x = nn.Dense(self.base_features * side * side, name="fc")(z)
    x = x.reshape(-1, self.base_features, side, side).transpose(0, 2, 3, 1)

    mapping = StyleMapping(self.style_dim, self.mapping_layers, name="mapping")
    w_mix = None if z_mix is None else mapping(z_mix)
    ws = mix_styles(mapping(z), w_mix, crossover, self.num_styles)
    for i in range(self.num_blocks):
      features = self.out_features if i == self.num_blocks - 1 else self.base_features
      block_ws = ws[ADAIN_PER_BLOCK * i:ADAIN_PER_BLOCK * (i + 1)]
      x = StyleBlock(features, name=f"block_{i}")(x, block_ws, noise_mode)
    return x


def first_general_group(resolution: int, num_general_groups: int) -> int:
  """Index of the first ResNet group kept from the pretrained G (= the head's block count)."""
  n = resnet_gan.num_groups(resolution)
  if not 1 <= num_general_groups < n:
    raise ValueError(f"the general part needs 1 to {n - 1} of the {n} groups at "
                     f"resolution {resolution}, got {num_general_groups}")
  return n - num_general_groups


class AdaFMGenerator(nn.Module):
  """SmallHead -> the pretrained G's `num_general_groups` groups nearest the image -> conv_img.

  Params: {'head': ..., 'resnet_{k}': ..., ..., 'conv_img': ...}; the general entries have
  the pretrained ResNetGenerator's names and shapes, so `generator_params` assembles them
  from a converted checkpoint (optionally AdaFM-modulated).
  """

  resolution: int
  z_dim: int = 256
  nf: int = 64
  num_general_groups: int = 4
  head_features: int = 512
  style_dim: int = 256
  mapping_layers: int = 8

  @nn.compact
  def __call__(self, z: Array, *, z_mix: Array | None = None,
               crossover: int | Array | None = None, noise_mode: str = "random") -> Array:
    first = first_general_group(self.resolution, self.num_general_groups)
    in_features = resnet_gan.generator_widths(self.resolution, self.nf)[first - 1]
    head = SmallHead(in_features, self.head_features, num_blocks=first,
                     style_dim=self.style_dim, mapping_layers=self.mapping_layers, name="head")
    x = head(z, z_mix=z_mix, crossover=crossover, noise_mode=noise_mode)
    return resnet_gan.generator_tail(x, self.resolution, self.nf, first_group=first)


def general_part(pretrained: Params, resolution: int, num_general_groups: int) -> Params:
  """The pretrained ResNetGenerator params that AdaFMGenerator keeps (and freezes)."""
  groups = resnet_gan.generator_group_names(resolution)
  prefixes = resnet_gan.frozen_prefixes(groups, num_general_groups)
  freezing.check_prefixes(pretrained, prefixes)
  _, general = freezing.split(pretrained, prefixes)
  return general


def generator_params(head: Params, general: Params,
                     modulation: Params | None = None) -> Params:
  """AdaFMGenerator params: the head's, and the general part's (AdaFM-modulated if given)."""
  if modulation is not None:
    general = adafm.apply(general, modulation)
  return {"head": head, **general}
