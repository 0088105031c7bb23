"""StyleGAN2 (config-f / StyleGAN2-ADA) generator and resnet discriminator in flax.linen.

Layer structure, parameter names and parameter shapes follow the official PyTorch
StyleGAN2-ADA `training/networks.py` (skip generator, resnet discriminator), up to the
kernel layout (HWIO convs, [in, out] dense), so official checkpoints convert by a layout
change alone:

  Generator params
    mapping/fc{i}/{weight,bias}
    g_emb/{fc0,fc1}/{weight,bias}                       (DIP variant: `PriorEmbedding`)
    synthesis/b4/const                                  [4, 4, C]  (official [C, 4, 4])
    synthesis/b{res}/{conv0,conv1}/{affine/{weight,bias},weight,bias,noise_strength}
    synthesis/b{res}/torgb/{affine/{weight,bias},weight,bias}
  Generator other collections
    stats/w_avg                                         [w_dim]    (official mapping.w_avg)
    noise_consts/synthesis/b{res}/conv{0,1}/noise_const [res, res]
  Discriminator params
    b{res}/{fromrgb (top block only),conv0,conv1,skip}/{weight,bias}
    b4/{conv,fc,out}/{weight,bias}
    d_emb/weight                                        (DIP variant: `projection_embedding`)

The DIP variant (paper 003, appendix: `conditional`) conditions both networks on a
prior C(x) of a frozen network (or a one-hot label): G_emb, a 2-layer ReLU MLP, maps it
to a 512-d conditional space whose output joins z as the mapping network's input, and
D adds the projection term D_emb(C(x)) . D_f(x) to its logit (eq. 4), D_f being the
epilogue's fc features. The networks take the embeddings, G_emb(C(x)) and D_emb(C(x));
the embeddings are modules of their own (`PriorEmbedding`, `projection_embedding`),
which the condition transform (`transfer.condition`) holds and runs, their params
still under `g_emb` and `d_emb` of G's and D's. Two details the paper leaves open follow StyleGAN2-ADA's
conditional networks: z and G_emb's output are 2nd-moment normalised apart before the
concatenation, and the projection is scaled by 1/sqrt(dim(D_f)) (a constant factor on
D_emb, so the same function class as eq. 4) to keep it at the logit's scale at init.

Activations are NHWC; images are [B, R, R, 3] in roughly [-1, 1].
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gantransfer_jax.models import layers

Array = jax.Array
Dtype = Any
PyTree = Any

NOISE_MODES = ("random", "const", "none")
# The official train.py's conv_clamp (activations clamped to +-256 after every conv;
# its --fp32 runs use None, no clamping).
DEFAULT_CONV_CLAMP = 256.0

# The family's config section (`config.stylegan2`) as a new config starts it: the
# official StyleGAN2-ADA layout at 256 x 256, with the Primitives-PS recipe's 2 mapping
# layers (configs' presets narrow it).
# embedding_dim: G_emb's output in the DIP variant (used only when conditioned).
# mbstd_group_size: official 4 (configs stylegan2, paper1024; paper256/512 use 8).
# conv_clamp: official 256 (None: no clamping, as official --fp32 runs).
# Memory and speed (README, "Memory and throughput"); neither changes a parameter:
# mixed_precision: compute dtype of the num_fp16_res highest resolutions of G and D,
#   as the official code's fp16 (4 of them): 'auto' = bfloat16 on TPU, float16 on GPU
#   (with conv_clamp), float32 on CPU; or 'bfloat16' / 'float16' / 'float32'.
#   Mapping, epilogue, images, losses and parameters stay float32.
# remat: 'synthesis' and/or 'discriminator' (comma-separated) recompute their blocks'
#   activations in the backward pass (jax.checkpoint) instead of storing them.
CONFIG_DEFAULTS = dict(
    z_dim=512, w_dim=512, mapping_layers=2, channel_base=32768, channel_max=512,
    mbstd_group_size=4, conv_clamp=DEFAULT_CONV_CLAMP, truncation_psi=1.0,
    embedding_dim=512, num_fp16_res=4, mixed_precision="auto", remat="")


def _log2_resolution(resolution: int, minimum: int) -> int:
  if resolution < minimum or resolution & (resolution - 1):
    raise ValueError(f"resolution must be a power of two >= {minimum}, got {resolution}")
  return int(math.log2(resolution))


def num_channels(resolution: int, channel_base: int, channel_max: int) -> int:
  """Feature maps at `resolution`, as official: min(channel_base // res, channel_max)."""
  return min(channel_base // resolution, channel_max)


def count_params(tree: PyTree) -> int:
  """Total number of scalars in a pytree of arrays (or of ShapeDtypeStructs)."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def block_dtype(res: int, resolution: int, dtype: Dtype | None,
                num_fp16_res: int | None) -> Dtype | None:
  """Compute dtype of the block at `res`: `dtype` in the `num_fp16_res` highest
  resolutions (None: all), else None (float32 from the params).

  As the official networks' `use_fp16 = res >= fp16_resolution`, with
  fp16_resolution = max(2 ** (log2(resolution) + 1 - num_fp16_res), 8): 4 at 256 x 256
  covers the 32-256 blocks, and the 4 x 4 block (G) and epilogue (D) never qualify.
  """
  if dtype is None or num_fp16_res is None:
    return dtype
  low_resolution = max(2 ** (int(math.log2(resolution)) + 1 - num_fp16_res), 8)
  return dtype if res >= low_resolution else None


MIXED_PRECISION = ("auto", "bfloat16", "float16", "float32")
REMAT_NETWORKS = ("synthesis", "discriminator")


def mixed_precision_dtype(name: str | None, backend: str | None = None) -> Dtype | None:
  """The reduced compute dtype a `stylegan2.mixed_precision` name asks for; None: float32.

  'auto' picks what each backend runs fast and safely: bfloat16 on TPU (float32's
  range, so no clamping is needed), float16 on GPU (the official choice, made safe by
  conv_clamp and the modulated conv's pre-normalisation), float32 on CPU (whose
  reduced-precision convolutions are emulated, and slower).
  """
  name = name or "float32"
  if name not in MIXED_PRECISION:
    raise ValueError(f"stylegan2.mixed_precision must be one of {MIXED_PRECISION}, "
                     f"got {name!r}")
  if name == "auto":
    backend = backend or jax.default_backend()
    name = {"tpu": "bfloat16", "gpu": "float16", "cuda": "float16"}.get(backend, "float32")
  return None if name == "float32" else jnp.dtype(name)


def remat_networks(spec: str) -> tuple[str, ...]:
  """'synthesis,discriminator' -> the networks whose blocks `jax.checkpoint` wraps."""
  names = tuple(name for name in spec.split(",") if name)
  unknown = [name for name in names if name not in REMAT_NETWORKS]
  if unknown:
    raise ValueError(f"stylegan2.remat takes a comma-separated subset of {REMAT_NETWORKS}, "
                     f"got {spec!r}")
  return names


def _check_noise_mode(noise_mode: str) -> None:
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")


# --------------------------------------------------------------------------------------
# Mapping network, style mixing.


class MappingNetwork(nn.Module):
  """z -> w: 2nd-moment normalisation, then `num_layers` lrelu dense layers `fc{i}`.

  A conditional mapping (DIP) also takes the conditional embedding [B, E]: normalised
  on its own and concatenated after z, so `fc0` is [z_dim + E, w_dim] and the z half
  sees the inputs an unconditional mapping would.
  """
  w_dim: int
  num_layers: int = 8
  lr_multiplier: float = 0.01

  @nn.compact
  def __call__(self, z: Array, embedding: Array | None = None) -> Array:
    x = layers.normalize_2nd_moment(layers.at_least_float32(z))
    if embedding is not None:
      embedding = layers.normalize_2nd_moment(layers.at_least_float32(embedding))
      x = jnp.concatenate([x, embedding], axis=-1)
    for idx in range(self.num_layers):
      x = layers.FullyConnectedLayer(self.w_dim, activation="lrelu",
                                     lr_multiplier=self.lr_multiplier, name=f"fc{idx}")(x)
    return x


def style_mix(key: Array, ws: Array, ws_other: Array, prob: float, *,
              per_sample: bool = True) -> Array:
  """Style-mixing regularisation: layers >= cutoff take their w from `ws_other`.

  With probability `prob` the cutoff is uniform in [1, num_ws), otherwise num_ws (no
  mixing). `per_sample=True` draws the coin and the cutoff for every sample; the
  official code draws a single pair per (per-GPU) minibatch, which `per_sample=False`
  reproduces. Both have the same expectation; per-sample draws have lower variance.

  Args:
    key: PRNG key.
    ws: [B, num_ws, w_dim] main styles.
    ws_other: [B, num_ws, w_dim] styles of other latents (same shape).
    prob: mixing probability.
    per_sample: one draw per sample (default) or one per batch (official).

  Returns:
    [B, num_ws, w_dim] mixed styles.
  """
  batch_size, num_ws = ws.shape[:2]
  draws = batch_size if per_sample else 1
  coin_key, cutoff_key = jax.random.split(key)
  cutoff = jax.random.randint(cutoff_key, (draws,), 1, num_ws)
  cutoff = jnp.where(jax.random.uniform(coin_key, (draws,)) < prob, cutoff, num_ws)
  take_other = jnp.arange(num_ws)[None, :] >= cutoff[:, None]  # [draws, num_ws]
  return jnp.where(take_other[:, :, None], ws_other, ws)


# --------------------------------------------------------------------------------------
# Synthesis network.


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv (+ optional 2x upsampling), noise, bias, lrelu, clamp."""
  features: int
  resolution: int  # Output resolution (the noise map size).
  kernel_size: int = 3
  up: int = 1
  use_noise: bool = True
  activation: str = "lrelu"
  resample_taps: Sequence[float] = layers.DEFAULT_RESAMPLE_TAPS
  conv_clamp: float | None = None
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array, w: Array, noise_mode: str = "random", gain: float = 1.0,
               random_noise: Array | None = None) -> Array:
    """Applies the layer; `random_noise` [B, res, res, 1] replaces the layer's own draw
    from the 'noise' rng stream in 'random' mode."""
    in_channels = x.shape[-1]
    k = self.kernel_size
    styles = layers.FullyConnectedLayer(in_channels, bias_init=1.0, name="affine")(w)
    weight = self.param("weight", nn.initializers.normal(stddev=1.0),
                        (k, k, in_channels, self.features))

    noise = None
    if self.use_noise:
      noise_strength = self.param("noise_strength", nn.initializers.zeros, ())
      noise_shape = (self.resolution, self.resolution)
      # Created at init so that 'const' mode works later; 'random' and 'none' never read
      # it, so callers need not carry the collection for training.
      if noise_mode == "const" or self.is_initializing():
        noise_const = self.variable(
            "noise_consts", "noise_const",
            lambda: jax.random.normal(self.make_rng("params"), noise_shape))
      if noise_mode == "random":
        if random_noise is None:
          random_noise = jax.random.normal(self.make_rng("noise"),
                                           (x.shape[0], *noise_shape, 1))
        noise = random_noise * noise_strength
      elif noise_mode == "const":
        noise = noise_const.value[None, :, :, None] * noise_strength

    resample_filter = layers.setup_filter(self.resample_taps) if self.up > 1 else None
    x = x.astype(layers.compute_dtype(self.dtype, x, weight))
    x = layers.modulated_conv2d(x, weight, styles, noise=noise, up=self.up,
                                padding=k // 2, resample_filter=resample_filter)
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    act_gain = layers.ACTIVATIONS[self.activation].default_gain * gain
    act_clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return layers.bias_act(x, bias, self.activation, gain=act_gain, clamp=act_clamp)


class ToRGBLayer(nn.Module):
  """Modulated 1x1 conv to RGB without demodulation, bias, clamp; >= float32 output."""
  features: int = 3
  kernel_size: int = 1
  conv_clamp: float | None = None
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array, w: Array) -> Array:
    in_channels = x.shape[-1]
    k = self.kernel_size
    styles = layers.FullyConnectedLayer(in_channels, bias_init=1.0, name="affine")(w)
    # Without demodulation the equalized-lr gain must be applied; folding it into the
    # styles is what the official layer does.
    styles = styles * (1 / np.sqrt(in_channels * k * k))
    weight = self.param("weight", nn.initializers.normal(stddev=1.0),
                        (k, k, in_channels, self.features))
    x = x.astype(layers.compute_dtype(self.dtype, x, weight))
    x = layers.modulated_conv2d(x, weight, styles, padding=k // 2, demodulate=False)
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return layers.at_least_float32(layers.bias_act(x, bias, "linear", clamp=self.conv_clamp))


class SynthesisBlock(nn.Module):
  """One resolution of the skip generator: [const | conv0 (up)], conv1, torgb.

  Consumes `num_conv + 1` w vectors: one per conv and one for torgb, which shares its
  w with the next block's conv0 (the official w indexing).
  """
  channels: int
  resolution: int
  img_channels: int = 3
  use_noise: bool = True
  resample_taps: Sequence[float] = layers.DEFAULT_RESAMPLE_TAPS
  conv_clamp: float | None = None
  dtype: Dtype | None = None

  @property
  def is_first(self) -> bool:
    return self.resolution == 4

  @property
  def num_conv(self) -> int:
    return 1 if self.is_first else 2

  @nn.compact
  def __call__(self, x: Array | None, img: Array | None, ws: Array,
               noise_mode: str = "random",
               random_noise: Sequence[Array | None] = (None, None)) -> tuple[Array, Array]:
    """`random_noise`: optional pre-drawn noise maps for the block's convs, in order."""
    conv_kwargs = dict(features=self.channels, resolution=self.resolution,
                       use_noise=self.use_noise, resample_taps=self.resample_taps,
                       conv_clamp=self.conv_clamp, dtype=self.dtype)
    if self.is_first:
      const = self.param("const", nn.initializers.normal(stddev=1.0),
                         (self.resolution, self.resolution, self.channels))
      const = const.astype(layers.compute_dtype(self.dtype, const))
      x = jnp.broadcast_to(const, (ws.shape[0], *const.shape))
    else:
      x = SynthesisLayer(up=2, name="conv0", **conv_kwargs)(
          x, ws[:, 0], noise_mode, random_noise=random_noise[0])
    x = SynthesisLayer(name="conv1", **conv_kwargs)(
        x, ws[:, self.num_conv - 1], noise_mode, random_noise=random_noise[self.num_conv - 1])

    if img is not None:
      img = layers.upsample2d(img, layers.setup_filter(self.resample_taps))
    y = ToRGBLayer(self.img_channels, conv_clamp=self.conv_clamp, dtype=self.dtype,
                   name="torgb")(x, ws[:, self.num_conv])
    img = y if img is None else img + y
    return x, img


class SynthesisNetwork(nn.Module):
  """ws [B, num_ws, w_dim] -> images [B, R, R, img_channels] (skip architecture)."""
  resolution: int
  img_channels: int = 3
  channel_base: int = 32768
  channel_max: int = 512
  use_noise: bool = True
  resample_taps: Sequence[float] = layers.DEFAULT_RESAMPLE_TAPS
  conv_clamp: float | None = None
  dtype: Dtype | None = None
  num_fp16_res: int | None = None  # Blocks computing in `dtype` (see `block_dtype`).
  remat: bool = False  # Recompute each block's activations in the backward pass.

  @property
  def block_resolutions(self) -> list[int]:
    return _synthesis_block_resolutions(self.resolution)

  @property
  def num_ws(self) -> int:
    return 2 * len(self.block_resolutions)

  @nn.compact
  def __call__(self, ws: Array, noise_mode: str = "random") -> Array:
    _check_noise_mode(noise_mode)
    if ws.ndim != 3 or ws.shape[1] != self.num_ws:
      raise ValueError(f"expected ws of shape [B, {self.num_ws}, w_dim], got {ws.shape}")
    ws = layers.at_least_float32(ws)
    draw_noise = noise_mode == "random" and self.use_noise
    noise_maps = iter(self._random_noise(ws.shape[0]) if draw_noise else [])
    x = img = None
    w_idx = 0
    # noise_mode (argument 4, counting the module) is a Python string.
    block_cls = nn.remat(SynthesisBlock, static_argnums=(4,)) if self.remat else SynthesisBlock
    for res in self.block_resolutions:
      block = block_cls(
          num_channels(res, self.channel_base, self.channel_max), res,
          img_channels=self.img_channels, use_noise=self.use_noise,
          resample_taps=self.resample_taps, conv_clamp=self.conv_clamp,
          dtype=block_dtype(res, self.resolution, self.dtype, self.num_fp16_res),
          name=f"b{res}")
      block_noise = [next(noise_maps, None) for _ in range(block.num_conv)]
      x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise_mode, block_noise)
      w_idx += block.num_conv
    return img

  def _random_noise(self, batch_size: int) -> list[Array]:
    """Per-pixel N(0, 1) maps for every conv, in layer order, from one RNG call.

    One large draw instead of one per layer: same distribution, but a single RNG kernel,
    which keeps XLA compile times down (notably on CPU).
    """
    sizes = [res for res in self.block_resolutions for _ in range(1 if res == 4 else 2)]
    flat = jax.random.normal(self.make_rng("noise"), (batch_size, sum(s * s for s in sizes)))
    splits = np.cumsum([s * s for s in sizes])[:-1]
    return [chunk.reshape(batch_size, s, s, 1)
            for chunk, s in zip(jnp.split(flat, splits, axis=1), sizes)]


# --------------------------------------------------------------------------------------
# Generator.


class PriorEmbedding(nn.Module):
  """G_emb of the DIP generator: a 2-layer ReLU MLP, [B, cond_dim] -> [B, features]
  (paper 003: 512), the generator's `embedding`. Equalized-lr layers, like the rest of
  StyleGAN2."""
  features: int = 512

  @nn.compact
  def __call__(self, cond: Array) -> Array:
    hidden = layers.FullyConnectedLayer(self.features, activation="relu", name="fc0")(
        layers.at_least_float32(cond))
    return layers.FullyConnectedLayer(self.features, name="fc1")(hidden)


class Generator(nn.Module):
  """StyleGAN2 generator: mapping network + skip synthesis network.

  Variables: 'params' (mapping/..., synthesis/...), 'stats' {'w_avg': [w_dim]} (the
  moving average of w used by truncation) and 'noise_consts' (the fixed noise maps of
  noise_mode='const'; only needed in that mode).

  `conditional`: the DIP variant (module docstring): every call takes `embedding`, the
  conditional input G_emb(cond) [B, embedding_dim] shared by every w, or
  [num_ws, B, embedding_dim], one per w (what inversion optimises; `num_blocks` names
  that count for `gantransfer_jax.dip`).
  """
  resolution: int            # Power of two >= 4.
  z_dim: int = 512
  w_dim: int = 512
  mapping_layers: int = 8
  channel_base: int = 32768
  channel_max: int = 512
  w_avg_beta: float = 0.995
  mapping_lr_multiplier: float = 0.01
  img_channels: int = 3
  conv_clamp: float | None = DEFAULT_CONV_CLAMP
  use_noise: bool = True
  resample_taps: Sequence[float] = layers.DEFAULT_RESAMPLE_TAPS
  # Compute dtype of the synthesis convs (e.g. bfloat16); None: float32 from the params.
  # Mapping, torgb outputs and images stay (at least) float32.
  dtype: Dtype | None = None
  # How many of the highest-resolution blocks use `dtype` (official num_fp16_res;
  # None: all of them).
  num_fp16_res: int | None = None
  remat: bool = False  # jax.checkpoint each synthesis block (less memory, more compute).
  conditional: bool = False  # Takes G_emb(cond) (the DIP variant).
  embedding_dim: int = 512   # Width of G_emb's output (DIP variant only).

  def setup(self):
    _log2_resolution(self.resolution, 4)
    self.mapping = MappingNetwork(self.w_dim, self.mapping_layers, self.mapping_lr_multiplier)
    self.synthesis = SynthesisNetwork(
        self.resolution, img_channels=self.img_channels, channel_base=self.channel_base,
        channel_max=self.channel_max, use_noise=self.use_noise,
        resample_taps=self.resample_taps, conv_clamp=self.conv_clamp, dtype=self.dtype,
        num_fp16_res=self.num_fp16_res, remat=self.remat)
    # Declared only where it exists or can be created, so that synthesis-only callers
    # may pass {'params'} alone.
    if self.has_variable("stats", "w_avg") or self.is_mutable_collection("stats"):
      self.w_avg = self.variable("stats", "w_avg", jnp.zeros, (self.w_dim,), jnp.float32)

  @property
  def num_ws(self) -> int:
    """w vectors the synthesis consumes: one per conv plus the last torgb."""
    return 2 * _log2_resolution(self.resolution, 4) - 2

  @property
  def num_blocks(self) -> int:
    """How many embeddings `embedding=` may give separately: one per w."""
    return self.num_ws

  def __call__(self, z: Array, embedding: Array | None = None, *,
               truncation_psi: float | Array = 1.0, truncation_cutoff: int | None = None,
               noise_mode: str = "random", update_w_avg: bool = False) -> Array:
    """z [B, z_dim] (and the embedding) -> images [B, R, R, img_channels]."""
    ws = self.map(z, embedding, truncation_psi=truncation_psi,
                  truncation_cutoff=truncation_cutoff, update_w_avg=update_w_avg)
    return self.synthesize(ws, noise_mode=noise_mode)

  def _check_embedding(self, embedding: Array | None) -> None:
    if not self.conditional:
      if embedding is not None:
        raise ValueError("this generator is unconditional; pass no condition embedding")
      return
    if embedding is None:
      raise ValueError("a conditional generator takes the embedding G_emb(cond)")
    if embedding.ndim == 3 and embedding.shape[0] != self.num_ws or embedding.ndim not in (2, 3):
      raise ValueError(f"embedding must be [B, E] or [{self.num_ws} ws, B, E], "
                       f"got shape {embedding.shape}")

  def map(self, z: Array, embedding: Array | None = None, *,
          truncation_psi: float | Array = 1.0, truncation_cutoff: int | None = None,
          update_w_avg: bool = False) -> Array:
    """z [B, z_dim] (and the embedding, see the class docstring) -> ws [B, num_ws, w_dim].

    With `update_w_avg` and a mutable 'stats' collection, first moves w_avg towards the
    batch mean of w: w_avg <- lerp(mean_b w, w_avg, w_avg_beta). Truncation then lerps
    the first `truncation_cutoff` (default: all) ws towards w_avg by `truncation_psi`.
    """
    if z.ndim != 2 or z.shape[1] != self.z_dim:
      raise ValueError(f"expected z of shape [B, {self.z_dim}], got {z.shape}")
    self._check_embedding(embedding)
    if embedding is None or embedding.ndim == 2:
      w = self.mapping(z, embedding)
      ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], self.num_ws, self.w_dim))
    else:  # One w per layer, each from its own embedding: one mapping call over all.
      batch = z.shape[0]
      flat = self.mapping(jnp.tile(z, (self.num_ws, 1)),
                          embedding.reshape(self.num_ws * batch, -1))
      ws = jnp.swapaxes(flat.reshape(self.num_ws, batch, self.w_dim), 0, 1)
    if update_w_avg and self.is_mutable_collection("stats"):
      batch_mean = jax.lax.stop_gradient(jnp.mean(ws, axis=(0, 1)))
      self.w_avg.value = batch_mean + self.w_avg_beta * (self.w_avg.value - batch_mean)
    if isinstance(truncation_psi, (int, float)) and truncation_psi == 1:
      return ws
    if not hasattr(self, "w_avg"):
      raise ValueError("truncation needs the 'stats' collection (w_avg) in the variables")
    w_avg = self.w_avg.value
    truncated = w_avg + truncation_psi * (ws - w_avg)
    if truncation_cutoff is None:
      return truncated
    layer_idx = jnp.arange(self.num_ws)[None, :, None]
    return jnp.where(layer_idx < truncation_cutoff, truncated, ws)

  def synthesize(self, ws: Array, *, noise_mode: str = "random") -> Array:
    """ws [B, num_ws, w_dim] -> images [B, R, R, img_channels], roughly in [-1, 1].

    noise_mode 'random' draws per-pixel noise from the 'noise' rng stream; 'const' uses
    the 'noise_consts' collection; 'none' adds no noise.
    """
    return self.synthesis(ws, noise_mode)


# --------------------------------------------------------------------------------------
# Discriminator.


def minibatch_std(x: Array, group_size: int | None = 4, num_channels: int = 1) -> Array:
  """Appends minibatch-stddev features (official `MinibatchStdLayer`) to NHWC `x`.

  Sample i belongs to group i % (N // G), G = min(group_size, N) (None: G = N). The
  stddev over each group is averaged over pixels and over `C // num_channels` channel
  slices, broadcast over the group and the pixels, and concatenated as `num_channels`
  new channels.
  """
  n, h, w, c = x.shape
  group = n if group_size is None else min(group_size, n)
  if n % group:
    raise ValueError(f"minibatch-stddev group size {group} must divide the batch size {n}; "
                     "change the batch size or mbstd_group_size")
  if c % num_channels:
    raise ValueError(f"mbstd_num_channels {num_channels} must divide channels {c}")
  y = layers.at_least_float32(x)
  y = y.reshape(group, n // group, h, w, num_channels, c // num_channels)
  y = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)         # [n/G, H, W, F, c]
  y = jnp.mean(y, axis=(1, 2, 4))                 # [n/G, F]
  y = jnp.tile(y, (group, 1))                     # [N, F], sample i gets y[i % (N/G)]
  y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, num_channels))
  return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class DiscriminatorBlock(nn.Module):
  """Resnet discriminator block: [fromrgb], conv0, conv1 (down) + skip (1x1, down)."""
  tmp_channels: int
  out_channels: int
  from_rgb: bool = False
  resample_taps: Sequence[float] = layers.DEFAULT_RESAMPLE_TAPS
  conv_clamp: float | None = None
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(layers.Conv2dLayer, resample_taps=self.resample_taps,
                             dtype=self.dtype)
    if self.from_rgb:
      x = conv(self.tmp_channels, 1, activation="lrelu", conv_clamp=self.conv_clamp,
               name="fromrgb")(x)
    # sqrt(0.5) on both branches keeps the sum at the variance of either branch.
    y = conv(self.out_channels, 1, use_bias=False, down=2, name="skip")(x, gain=np.sqrt(0.5))
    x = conv(self.tmp_channels, 3, activation="lrelu", conv_clamp=self.conv_clamp,
             name="conv0")(x)
    x = conv(self.out_channels, 3, activation="lrelu", down=2, conv_clamp=self.conv_clamp,
             name="conv1")(x, gain=np.sqrt(0.5))
    return y + x


class DiscriminatorEpilogue(nn.Module):
  """4x4 head: minibatch stddev, conv, fc, out (at least float32, like the official one)."""
  channels: int
  mbstd_group_size: int | None = 4
  mbstd_num_channels: int = 1
  conv_clamp: float | None = None

  @nn.compact
  def __call__(self, x: Array, cond_embedding: Array | None = None) -> Array:
    """x [B, 4, 4, C] -> logits [B]; `cond_embedding` D_emb(cond) [B, channels] adds the
    projection term (DIP variant)."""
    x = layers.at_least_float32(x)
    if self.mbstd_num_channels > 0:
      x = minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = layers.Conv2dLayer(self.channels, 3, activation="lrelu", conv_clamp=self.conv_clamp,
                           name="conv")(x)
    # Flatten channel-major, as torch's NCHW flatten does, so that the official fc
    # weight converts by a transpose only.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    features = layers.FullyConnectedLayer(self.channels, activation="lrelu", name="fc")(x)
    logits = layers.FullyConnectedLayer(1, name="out")(features)[:, 0]
    if cond_embedding is None:
      return logits
    projection = jnp.sum(cond_embedding * features, axis=-1)
    return logits + projection * (1 / np.sqrt(self.channels))


def projection_embedding(discriminator: Discriminator) -> nn.Module:
  """D_emb of the DIP discriminator: linear, no bias, [B, cond_dim] -> [B, feature_dim]."""
  return layers.FullyConnectedLayer(discriminator.feature_dim, use_bias=False)


def _synthesis_block_resolutions(resolution: int) -> list[int]:
  """Resolutions of the synthesis blocks, lowest (4) first."""
  log2 = _log2_resolution(resolution, 4)
  return [2 ** i for i in range(2, log2 + 1)]


def synthesis_block_names(resolution: int) -> list[str]:
  """The synthesis blocks' param names (under `synthesis`), highest resolution first:
  `freeze_g` freezes a prefix of this list (the blocks nearest the image)."""
  return [f"b{res}" for res in reversed(_synthesis_block_resolutions(resolution))]


def _discriminator_block_resolutions(resolution: int) -> list[int]:
  """Resolutions of the resnet blocks, highest first; b4 is the epilogue."""
  log2 = _log2_resolution(resolution, 8)
  return [2 ** i for i in range(log2, 2, -1)]


def discriminator_block_names(resolution: int) -> list[str]:
  """Top-level discriminator param names, highest resolution first, epilogue last.

  FreezeD freezes a prefix of this list (the blocks nearest the image).
  """
  return [f"b{res}" for res in _discriminator_block_resolutions(resolution)] + ["b4"]


class Discriminator(nn.Module):
  """StyleGAN2 resnet discriminator: images [B, R, R, 3] -> logits [B].

  `conditional` (DIP variant): it also takes `embedding`, D_emb(cond) [B, `feature_dim`]
  (`projection_embedding`), and adds its projection on the epilogue's features.
  """
  resolution: int
  channel_base: int = 32768
  channel_max: int = 512
  mbstd_group_size: int | None = 4
  mbstd_num_channels: int = 1
  img_channels: int = 3
  conv_clamp: float | None = DEFAULT_CONV_CLAMP
  resample_taps: Sequence[float] = layers.DEFAULT_RESAMPLE_TAPS
  # Compute dtype of the blocks (e.g. bfloat16); None: float32 from the params.
  # The epilogue stays (at least) float32.
  dtype: Dtype | None = None
  # How many of the highest-resolution blocks use `dtype` (official num_fp16_res;
  # None: all of them).
  num_fp16_res: int | None = None
  remat: bool = False  # jax.checkpoint each resnet block (less memory, more compute).
  conditional: bool = False  # Takes D_emb(cond) (the DIP variant).

  @property
  def feature_dim(self) -> int:
    """Width of the epilogue's features D_f(x), hence of D_emb(cond)."""
    return num_channels(4, self.channel_base, self.channel_max)

  @nn.compact
  def __call__(self, images: Array, embedding: Array | None = None) -> Array:
    expected = (self.resolution, self.resolution, self.img_channels)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise ValueError(f"expected images of shape [B, {', '.join(map(str, expected))}], "
                       f"got {images.shape}")
    channels = lambda res: num_channels(res, self.channel_base, self.channel_max)
    if self.conditional:
      if embedding is None or embedding.shape != (images.shape[0], self.feature_dim):
        got = None if embedding is None else embedding.shape
        raise ValueError(f"expected the embedding D_emb(cond) of shape "
                         f"[{images.shape[0]}, {self.feature_dim}], got {got}")
    elif embedding is not None:
      raise ValueError("this discriminator is unconditional; pass no condition embedding")
    x = images
    block_cls = nn.remat(DiscriminatorBlock) if self.remat else DiscriminatorBlock
    for res in _discriminator_block_resolutions(self.resolution):
      x = block_cls(channels(res), channels(res // 2), from_rgb=res == self.resolution,
                    resample_taps=self.resample_taps, conv_clamp=self.conv_clamp,
                    dtype=block_dtype(res, self.resolution, self.dtype, self.num_fp16_res),
                    name=f"b{res}")(x)
    return DiscriminatorEpilogue(channels(4), self.mbstd_group_size, self.mbstd_num_channels,
                                 conv_clamp=self.conv_clamp, name="b4")(x, embedding)
