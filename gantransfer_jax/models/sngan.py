"""SNGAN / BigGAN-style ResNet GAN conditioned on a data instance prior (DIP, paper 003).

The prior is a frozen feature C(x) of a real image (`gantransfer_jax.priors`):

* Generator G(z, prior): `G_emb`, a linear map, embeds the prior; every residual block
  normalises with conditional batch norm whose per-channel gain and bias are linear maps
  of `G_emb(prior)`, BigGAN-style concatenated with the block's chunk of z when the
  latent is hierarchical. Nearest-neighbour upsampling, 3x3 convolutions, tanh output.
* Projection discriminator: D(x, prior) = D_emb(prior) . D_f(x) + D_l(D_f(x)) (eq. 4),
  with D_f the ReLU'd, spatially summed output of the residual blocks, D_l a linear map
  to a scalar and D_emb a linear map of the prior to D_f's width.

The networks take the embeddings G_emb(prior) and D_emb(prior); G_emb and D_emb are
modules of their own (`prior_embedding`, `projection_embedding`), which the condition
transform (`transfer.condition`) holds and runs, their variables still under `g_emb`
and `d_emb` of G's and D's.

Spectral normalisation (`flax.linen.SpectralNorm`, one power iteration per step, its
`u` and `sigma` in the 'batch_stats' collection) is applied to every convolution and
linear map of G and D, BigGAN's choice, except `G_emb` (BigGAN's shared embedding is
not normalised either). Batch statistics and power iterations advance when `train` is
true, so apply with `mutable=['batch_stats']` then.

Resolutions 32..128 (any 4 * 2^k); widths are `width` times per-stage multipliers
(defaults after BigGAN: 256 channels throughout at 32 x 32, 1024..64 at 128 x 128).

The StyleGAN2 variant of DIP lives in `models.stylegan2` (its `conditional`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Channel multipliers of `width`: the input of the first block, then each block's output.
DEFAULT_G_MULTIPLIERS = {32: (4, 4, 4, 4), 64: (16, 8, 4, 2, 1), 128: (16, 16, 8, 4, 2, 1)}
# Each block's output; the last block keeps the 4 x 4 resolution.
DEFAULT_D_MULTIPLIERS = {32: (4, 4, 4, 4), 64: (1, 2, 4, 8, 16), 128: (1, 2, 4, 8, 16, 16)}

# The family's config section (`config.sngan`) as a new config starts it: DIP's
# few-shot SNGAN at 128 x 128 (NOTES §4). Empty multipliers: the tables above.
CONFIG_DEFAULTS = dict(z_dim=120, embedding_dim=128, g_width=64, d_width=64,
                       hierarchical_z=True, g_multipliers=(), d_multipliers=())

_BN_EPSILON = 1e-5
_MOMENTUM = 0.9


def num_upsamplings(resolution: int) -> int:
  """How many 2x stages take a 4 x 4 map to `resolution`."""
  stages = int(round(math.log2(resolution))) - 2
  if resolution < 8 or 4 * 2 ** stages != resolution:
    raise ValueError(f"resolution must be 4 * 2^k >= 8, got {resolution}")
  return stages


def _multipliers(table: dict[int, Sequence[int]], given: Sequence[int] | None,
                 resolution: int, length: int) -> tuple[int, ...]:
  if given is None:
    if resolution not in table:
      raise ValueError(f"no default channel multipliers at {resolution}; pass them")
    given = table[resolution]
  if len(given) != length:
    raise ValueError(f"{length} channel multipliers needed at {resolution}, got {len(given)}")
  return tuple(given)


# ---- Spectrally normalised layers -------------------------------------------------------


class SNDense(nn.Module):
  """nn.Dense whose kernel is divided by its top singular value (power iteration)."""

  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dense = nn.Dense(self.features, use_bias=self.use_bias, name="dense")
    return nn.SpectralNorm(dense, name="sn")(x, update_stats=train)


class SNConv(nn.Module):
  """nn.Conv (symmetric 'same' padding) with a spectrally normalised kernel, taken as a
  [kh * kw * in, out] matrix as in SNGAN and BigGAN."""

  features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = nn.Conv(self.features, (self.kernel_size, self.kernel_size), padding="SAME",
                   name="conv")
    return nn.SpectralNorm(conv, name="sn")(x, update_stats=train)


# ---- Generator --------------------------------------------------------------------------


def _upsample(x: jax.Array) -> jax.Array:
  """2x nearest-neighbour upsampling of [N, H, W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _downsample(x: jax.Array) -> jax.Array:
  """2x2 average pooling of [N, H, W, C]."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ConditionalBatchNorm(nn.Module):
  """Batch norm without its own affine, then per example and channel a gain
  1 + linear(condition) and a bias linear(condition) (De Vries et al.; Dumoulin et al.)."""

  features: int

  def setup(self):
    self.bn = nn.BatchNorm(momentum=_MOMENTUM, epsilon=_BN_EPSILON, use_scale=False,
                           use_bias=False)
    self.gain = SNDense(self.features)
    self.bias = SNDense(self.features)

  def affine(self, condition: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    """(gain, bias), each [N, features], applied to the normalised activations."""
    # The gain is centred on one so that a fresh layer starts close to plain batch norm.
    return 1 + self.gain(condition, train), self.bias(condition, train)

  def __call__(self, x: jax.Array, condition: jax.Array, train: bool) -> jax.Array:
    x = self.bn(x, use_running_average=not train)
    gain, bias = self.affine(condition, train)
    return x * gain[:, None, None, :] + bias[:, None, None, :]


class GeneratorBlock(nn.Module):
  """BigGAN's up block: CBN -> ReLU -> up -> conv3x3 -> CBN -> ReLU -> conv3x3, plus a
  shortcut up -> conv1x1."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, condition: jax.Array, train: bool) -> jax.Array:
    h = nn.relu(ConditionalBatchNorm(x.shape[-1], name="cbn1")(x, condition, train))
    h = SNConv(self.features, name="conv1")(_upsample(h), train)
    h = nn.relu(ConditionalBatchNorm(self.features, name="cbn2")(h, condition, train))
    h = SNConv(self.features, name="conv2")(h, train)
    return h + SNConv(self.features, 1, name="shortcut")(_upsample(x), train)


class Generator(nn.Module):
  """G(z | G_emb(prior)): [N, z_dim], [N, embedding_dim] -> images [N, resolution,
  resolution, 3] in [-1, 1].

  G works in the conditional space, as the inference-time DIP tools
  (`gantransfer_jax.dip`) do: sampling from K-means centroids or a GMM fitted on
  G_emb(priors) produces embeddings with no prior behind them, and inversion optimises
  one embedding per block (paper 003, appendix C).

  Attributes:
    resolution: output size, 4 * 2^k (32, 64, 128, ...).
    z_dim: latent size; with `hierarchical_z` split evenly into one chunk for the 4 x 4
      input map and one per block (BigGAN), so it must divide by blocks + 1.
    embedding_dim: width of G_emb(prior), the conditional space (paper: 128).
    width: channel unit; stage widths are `width` times `channel_multipliers`.
    channel_multipliers: the 4 x 4 input's, then each block's (blocks + 1 entries);
      None takes `DEFAULT_G_MULTIPLIERS[resolution]`.
    hierarchical_z: condition each block on [G_emb(prior), its z chunk] instead of
      G_emb(prior) alone (the paper's DIP runs use the hierarchical latent).
  """

  resolution: int = 128
  z_dim: int = 120
  embedding_dim: int = 128
  width: int = 64
  channel_multipliers: Sequence[int] | None = None
  hierarchical_z: bool = True
  out_channels: int = 3

  @property
  def num_blocks(self) -> int:
    """Residual (upsampling) blocks, hence per-block embeddings `__call__` takes."""
    return num_upsamplings(self.resolution)

  @nn.compact
  def __call__(self, z: jax.Array, embedding: jax.Array, train: bool = False) -> jax.Array:
    """Images from z and the conditional input.

    Args:
      z: [N, z_dim] latents.
      embedding: the conditional input G_emb(prior): [N, embedding_dim] shared by every
        block, or [num_blocks, N, embedding_dim], one per block.
      train: update batch statistics and power iterations (apply with
        mutable=['batch_stats']).
    """
    blocks = self.num_blocks
    multipliers = _multipliers(DEFAULT_G_MULTIPLIERS, self.channel_multipliers,
                               self.resolution, blocks + 1)
    if embedding.ndim == 2:
      embeddings = [embedding] * blocks
    elif embedding.ndim == 3 and embedding.shape[0] == blocks:
      embeddings = list(embedding)
    else:
      raise ValueError(f"embedding must be [N, E] or [{blocks} blocks, N, E], "
                       f"got shape {embedding.shape}")
    if self.hierarchical_z:
      if self.z_dim % (blocks + 1):
        raise ValueError(f"z_dim {self.z_dim} does not split into {blocks + 1} chunks")
      z_input, *z_blocks = jnp.split(z, blocks + 1, axis=-1)
      conditions = [jnp.concatenate([e, chunk], axis=-1)
                    for e, chunk in zip(embeddings, z_blocks)]
    else:
      z_input, conditions = z, embeddings

    channels = self.width * multipliers[0]
    x = SNDense(4 * 4 * channels, name="linear")(z_input, train)
    x = x.reshape(-1, 4, 4, channels)
    for index, (condition, multiplier) in enumerate(zip(conditions, multipliers[1:])):
      x = GeneratorBlock(self.width * multiplier, name=f"block{index}")(x, condition, train)
    x = nn.BatchNorm(use_running_average=not train, momentum=_MOMENTUM, epsilon=_BN_EPSILON,
                     name="bn_out")(x)
    x = SNConv(self.out_channels, name="conv_out")(nn.relu(x), train)
    return jnp.tanh(x)


# ---- Projection discriminator -----------------------------------------------------------


class DiscriminatorBlock(nn.Module):
  """BigGAN's down block: [ReLU] -> conv3x3 -> ReLU -> conv3x3 -> [pool], plus a shortcut.

  The first block sees the image, so it skips the leading ReLU and pools its shortcut
  before the 1x1 conv (SNGAN's "optimised" block); later ones convolve, then pool.
  """

  features: int
  downsample: bool
  first: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = x if self.first else nn.relu(x)
    h = SNConv(self.features, name="conv1")(h, train)
    h = SNConv(self.features, name="conv2")(nn.relu(h), train)
    if self.downsample:
      h = _downsample(h)

    shortcut = x
    if self.first:
      shortcut = _downsample(shortcut) if self.downsample else shortcut
      shortcut = SNConv(self.features, 1, name="shortcut")(shortcut, train)
    elif self.downsample or x.shape[-1] != self.features:
      shortcut = SNConv(self.features, 1, name="shortcut")(shortcut, train)
      shortcut = _downsample(shortcut) if self.downsample else shortcut
    return h + shortcut


def prior_embedding(generator: Generator) -> nn.Module:
  """G_emb: a linear map, [N, prior_dim] -> [N, embedding_dim]; no spectral norm (see the
  module docstring) and no state, so the same in train and eval mode."""
  return nn.Dense(generator.embedding_dim)


class ProjectionDiscriminator(nn.Module):
  """D(x | D_emb(prior)) = D_emb(prior) . D_f(x) + D_l(D_f(x)) (eq. 4): images
  [N, R, R, C] and embeddings [N, feature_dim] -> scores [N].

  D_f(x) is the sum over space of the ReLU'd last block output ([N, width * last
  multiplier]; paper: 1024). Blocks halve the resolution down to 4 x 4, then one more
  block runs at 4 x 4 (SNGAN's 128 x 128 discriminator).

  Attributes:
    resolution: input size, 4 * 2^k.
    width: channel unit.
    channel_multipliers: each block's output (blocks = log2(resolution) - 1 entries);
      None takes `DEFAULT_D_MULTIPLIERS[resolution]`.
  """

  resolution: int = 128
  width: int = 64
  channel_multipliers: Sequence[int] | None = None

  def _stage_multipliers(self) -> tuple[int, ...]:
    return _multipliers(DEFAULT_D_MULTIPLIERS, self.channel_multipliers, self.resolution,
                        num_upsamplings(self.resolution) + 1)

  @property
  def feature_dim(self) -> int:
    """Width of D_f(x), hence of D_emb(prior)."""
    return self.width * self._stage_multipliers()[-1]

  def setup(self):
    downsamplings = num_upsamplings(self.resolution)
    multipliers = self._stage_multipliers()
    self.blocks = [
        DiscriminatorBlock(self.width * multiplier, downsample=index < downsamplings,
                           first=index == 0)
        for index, multiplier in enumerate(multipliers)
    ]
    self.d_l = SNDense(1)

  def features(self, images: jax.Array, train: bool = False) -> jax.Array:
    """D_f(x): [N, R, R, C] -> [N, feature_dim]."""
    x = images
    for block in self.blocks:
      x = block(x, train)
    return jnp.sum(nn.relu(x), axis=(1, 2))

  def unconditional(self, features: jax.Array, train: bool = False) -> jax.Array:
    """D_l(D_f(x)): [N, feature_dim] -> [N]."""
    return self.d_l(features, train)[:, 0]

  def __call__(self, images: jax.Array, embedding: jax.Array,
               train: bool = False) -> jax.Array:
    features = self.features(images, train)
    projection = jnp.sum(embedding * features, axis=-1)
    return projection + self.unconditional(features, train)


def projection_embedding(discriminator: ProjectionDiscriminator) -> nn.Module:
  """D_emb: a spectrally normalised linear map, no bias, [N, prior_dim] ->
  [N, feature_dim]; its power iteration advances in train mode."""
  return SNDense(discriminator.feature_dim, use_bias=False)
