"""Equalized-learning-rate layers and FIR resampling, as in StyleGAN2-ADA (NHWC).

Everything here follows the official PyTorch ops (`torch_utils/ops/upfirdn2d.py`,
`conv2d_resample.py`, `bias_act.py` and the layer classes of `training/networks.py`)
closely enough that official weights load by a pure layout change:

* activations are NHWC, conv kernels HWIO ([k, k, in, out]), dense kernels [in, out];
* parameters keep the official names (`weight`, `bias`) and the official storage scale
  (`randn / lr_multiplier`); the equalized-learning-rate gain
  `lr_multiplier / sqrt(fan_in)` is applied at run time;
* correlation vs. convolution and the zero-insertion conventions of `upfirdn2d` are
  reproduced exactly, including for non-symmetric kernels and filters.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

# The binomial low-pass filter StyleGAN2 uses around every resampling step.
DEFAULT_RESAMPLE_TAPS = (1, 3, 3, 1)

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


class Activation(NamedTuple):
  fn: Callable[[Array], Array]
  default_gain: float


# `default_gain` keeps the activations' second moment unchanged (He et al.), as in
# the official `bias_act.activation_funcs`.
ACTIVATIONS = {
    "linear": Activation(lambda x: x, 1.0),
    "relu": Activation(jax.nn.relu, float(np.sqrt(2))),
    "lrelu": Activation(lambda x: jax.nn.leaky_relu(x, 0.2), float(np.sqrt(2))),
}


def bias_act(x: Array, bias: Array | None = None, activation: str = "linear",
             gain: float | None = None, clamp: float | None = None) -> Array:
  """Adds a per-channel bias, applies the activation, scales by `gain`, clamps.

  `gain=None` means the activation's default gain; `clamp=None` disables clamping.
  The bias is added along the last (channel) axis.
  """
  act = ACTIVATIONS[activation]
  if bias is not None:
    x = x + bias.astype(x.dtype)
  x = act.fn(x)
  # Python floats are weakly typed and keep x's dtype; a numpy float64 gain (e.g.
  # np.sqrt(0.5)) would promote reduced-precision activations to float32.
  gain = float(act.default_gain if gain is None else gain)
  if gain != 1:
    x = x * gain
  if clamp is not None:
    x = jnp.clip(x, -float(clamp), float(clamp))
  return x


def at_least_float32(x: Array) -> Array:
  """Casts low-precision floats up to float32; float32 and float64 pass unchanged."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def compute_dtype(dtype: Dtype | None, *arrays: Array) -> Dtype:
  """`dtype` if given, else the promoted dtype of the arrays (flax's convention)."""
  return jnp.result_type(*arrays) if dtype is None else dtype


def normalize_2nd_moment(x: Array, axis: int = -1, eps: float = 1e-8) -> Array:
  """Scales `x` to unit mean square along `axis` (the mapping network's input norm)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


# --------------------------------------------------------------------------------------
# FIR resampling (upfirdn2d).


def setup_filter(taps: Sequence[float] | np.ndarray = DEFAULT_RESAMPLE_TAPS) -> np.ndarray:
  """Returns the normalised 2D FIR filter (outer product of 1D taps, sum 1)."""
  f = np.asarray(taps, dtype=np.float64)
  if f.ndim == 1:
    f = np.outer(f, f)
  if f.ndim != 2:
    raise ValueError(f"filter must be 1D taps or a 2D array, got shape {f.shape}")
  return (f / f.sum()).astype(np.float32)


def _pairs(padding: int | Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """Normalises padding to ((top, bottom), (left, right))."""
  if isinstance(padding, int):
    return (padding, padding), (padding, padding)
  if len(padding) == 2:
    return (padding[0], padding[0]), (padding[1], padding[1])
  top, bottom, left, right = padding
  return (top, bottom), (left, right)


def upfirdn2d(x: Array, f: np.ndarray, *, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, gain: float = 1.0) -> Array:
  """Upsample (zero insertion), pad, FIR-filter and downsample each channel.

  Same semantics as the official `upfirdn2d(x, f, up, down, padding, flip_filter=False,
  gain)`: `f` is applied as a true convolution, `padding` (int, (y, x) or
  (top, bottom, left, right); negative values crop) is relative to the upsampled image.

  Args:
    x: [N, H, W, C] activations.
    f: 2D filter, e.g. from `setup_filter`; a constant, never a parameter.
    up: integer upsampling factor.
    down: integer downsampling factor.
    padding: padding of the upsampled image.
    gain: overall scale of the result.

  Returns:
    [N, H', W', C] with H' = (H * up + top + bottom - fh + 1) // down rounded up.
  """
  f = np.asarray(f, dtype=np.float64) * gain
  (top, bottom), (left, right) = _pairs(padding)
  # Zero insertion (`interior`; the original also appends up - 1 zeros after the last
  # pixel) and padding, negative values cropping, in one lax.pad.
  x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                  ((0, 0, 0), (top, bottom + up - 1, up - 1), (left, right + up - 1, up - 1),
                   (0, 0, 0)))
  # The filter runs as a sum of shifted, strided slices rather than as a depthwise
  # (feature_group_count = C) convolution: XLA's CPU depthwise convolutions and their
  # gradients were 10-20x slower for these 4-tap filters (e.g. 27 ms vs 1.3 ms for a
  # 16 x 35 x 35 x 16 forward and backward), and the slices fuse into one loop on every
  # backend. A rank-1 filter (every `setup_filter` filter) runs as two 1D passes.
  rows, total = f.sum(axis=1), f.sum()
  cols = f.sum(axis=0) / total if total else np.zeros(f.shape[1])
  if total and np.allclose(np.outer(rows, cols), f, rtol=1e-6, atol=1e-12):
    x = _correlate_axis(x, rows[::-1], axis=1, stride=down)
    return _correlate_axis(x, cols[::-1], axis=2, stride=down)
  return _correlate_2d(x, f[::-1, ::-1], stride=down)


def _taps(x: Array, size: int, axis: int, stride: int) -> tuple[int, Sequence[Array]]:
  """The `size` shifted slices of `x` along `axis` a `size`-tap filter with `stride` reads."""
  out = (x.shape[axis] - size) // stride + 1
  return [jax.lax.slice_in_dim(x, i, i + stride * (out - 1) + 1, stride, axis)
          for i in range(size)]


def _correlate_axis(x: Array, taps: np.ndarray, *, axis: int, stride: int) -> Array:
  """1D correlation of every channel with constant `taps` along `axis`."""
  # Python floats keep the activations' dtype (bfloat16/float16 under mixed precision).
  return sum(float(t) * s for t, s in zip(taps, _taps(x, len(taps), axis, stride)))


def _correlate_2d(x: Array, taps: np.ndarray, *, stride: int) -> Array:
  """2D correlation of every channel with a constant, not separable, filter."""
  rows = _taps(x, taps.shape[0], axis=1, stride=stride)
  return sum(float(taps[i, j]) * s for i, row in enumerate(rows)
             for j, s in enumerate(_taps(row, taps.shape[1], axis=2, stride=stride)))


def upsample2d(x: Array, f: np.ndarray, up: int = 2) -> Array:
  """FIR upsampling by `up`: output is exactly `up` times larger (official `upsample2d`)."""
  fh = np.asarray(f).shape[0]
  pad = ((fh + up - 1) // 2, (fh - up) // 2)
  return upfirdn2d(x, f, up=up, padding=(*pad, *pad), gain=up * up)


def downsample2d(x: Array, f: np.ndarray, down: int = 2) -> Array:
  """FIR downsampling by `down`: output is exactly `down` times smaller."""
  fh = np.asarray(f).shape[0]
  pad = ((fh - down + 1) // 2, (fh - down) // 2)
  return upfirdn2d(x, f, down=down, padding=(*pad, *pad))


def _conv(x: Array, w: Array, *, stride: int = 1, padding: tuple[int, int] = (0, 0),
          lhs_dilation: int = 1) -> Array:
  """Plain NHWC x HWIO cross-correlation with symmetric per-axis padding."""
  return jax.lax.conv_general_dilated(
      x, w, window_strides=(stride, stride), padding=(padding, padding),
      lhs_dilation=(lhs_dilation, lhs_dilation), dimension_numbers=_DIMENSION_NUMBERS)


def conv2d_resample(x: Array, w: Array, f: np.ndarray | None = None, *, up: int = 1,
                    down: int = 1, padding: int = 0) -> Array:
  """2D convolution with optional FIR up- or downsampling (official `conv2d_resample`).

  Reproduces the official layers' conventions: without upsampling the kernel is
  cross-correlated (`flip_weight=True`); with upsampling the official layers run a
  strided transposed convolution with the unflipped kernel, i.e. a true convolution of
  the zero-upsampled input, followed by the FIR filter with gain up**2. Downsampling
  filters first and then runs a strided convolution.

  Args:
    x: [N, H, W, Cin] activations.
    w: [k, k, Cin, Cout] kernel (already scaled by any runtime gain).
    f: 2D FIR filter for resampling; required when up > 1 or down > 1.
    up: 1 or an integer upsampling factor.
    down: 1 or an integer downsampling factor (not both with `up`).
    padding: padding with respect to the upsampled image (`k // 2` in the layers).

  Returns:
    [N, H * up // down, W * up // down, Cout] for `padding = k // 2`.
  """
  if up > 1 and down > 1:
    raise NotImplementedError("simultaneous up- and downsampling is not used by StyleGAN2")
  kernel_size = w.shape[0]
  if w.shape[1] != kernel_size:
    raise ValueError(f"expected a square kernel, got shape {w.shape}")
  filter_size = 1 if f is None else np.asarray(f).shape[0]
  pad0 = pad1 = padding

  if up > 1:
    pad0 += (filter_size + up - 1) // 2 - (kernel_size - 1)
    pad1 += (filter_size - up) // 2 - (kernel_size - up)
    # A stride-`up` transposed convolution (no padding) equals correlating the
    # zero-dilated input, bordered by k - 1 zeros, with the spatially flipped kernel.
    x = _conv(x, w[::-1, ::-1], padding=(kernel_size - 1, kernel_size - 1),
              lhs_dilation=up)
    return upfirdn2d(x, f, padding=(pad0, pad1, pad0, pad1), gain=up * up)

  if down > 1:
    pad0 += (filter_size - down + 1) // 2
    pad1 += (filter_size - down) // 2
    if kernel_size == 1:
      # A 1x1 conv commutes with the (depthwise) filter: downsample first, it is cheaper.
      x = upfirdn2d(x, f, down=down, padding=(pad0, pad1, pad0, pad1))
      return _conv(x, w)
    x = upfirdn2d(x, f, padding=(pad0, pad1, pad0, pad1))
    return _conv(x, w, stride=down)

  return _conv(x, w, padding=(pad0, pad1))


def modulated_conv2d(x: Array, weight: Array, styles: Array, *, noise: Array | None = None,
                     up: int = 1, padding: int = 0, resample_filter: np.ndarray | None = None,
                     demodulate: bool = True) -> Array:
  """StyleGAN2 modulated convolution in its non-fused form.

  The official code offers a fused form (per-sample weights `w_b = weight * s_b * d_b`
  run as one grouped convolution) and this non-fused form; they are mathematically
  equal because scaling input channel i by s_b[i] before a shared-weight convolution is
  the same as scaling the kernel's input channel i, and scaling output channel o by
  d_b[o] afterwards is the same as scaling the kernel's output channel o. The non-fused
  form keeps one shared kernel, which XLA maps onto a plain batched convolution.

  Args:
    x: [B, H, W, Cin] activations.
    weight: [k, k, Cin, Cout] unscaled kernel (demodulation makes its scale irrelevant).
    styles: [B, Cin] per-sample modulation coefficients.
    noise: optional noise broadcastable to the output, added after demodulation.
    up: 1 or 2 (transposed-convolution upsampling, see `conv2d_resample`).
    padding: `k // 2` for "same" output size.
    resample_filter: FIR filter for upsampling.
    demodulate: divide each output channel by the norm of its modulated kernel.

  Returns:
    [B, H * up, W * up, Cout] activations.
  """
  dtype = x.dtype
  if dtype == jnp.float16 and demodulate:
    # As official: pre-normalise so that the modulated activations cannot overflow fp16.
    # Demodulation divides these scales out again.
    fan_in = weight.shape[0] * weight.shape[1] * weight.shape[2]
    weight = weight * (1 / np.sqrt(fan_in) / jnp.max(jnp.abs(weight), axis=(0, 1, 2),
                                                      keepdims=True))
    styles = styles / jnp.max(jnp.abs(styles), axis=1, keepdims=True)

  x = x * styles[:, None, None, :].astype(dtype)
  x = conv2d_resample(x, weight.astype(dtype), resample_filter, up=up, padding=padding)
  if demodulate:
    # sum_{k,k,i} (w[k,k,i,o] * s[b,i])^2 = sum_i s[b,i]^2 * sum_{k,k} w[k,k,i,o]^2: the
    # same coefficients as the official code without materialising [B, k, k, Cin, Cout].
    weight_energy = jnp.sum(jnp.square(at_least_float32(weight)), axis=(0, 1))
    dcoefs = jax.lax.rsqrt(jnp.square(at_least_float32(styles)) @ weight_energy + 1e-8)
    x = x * dcoefs[:, None, None, :].astype(dtype)
  if noise is not None:
    x = x + noise.astype(dtype)
  return x


# --------------------------------------------------------------------------------------
# Equalized-learning-rate layers.


class FullyConnectedLayer(nn.Module):
  """Dense layer with equalized learning rate (official `FullyConnectedLayer`).

  Parameters: `weight` [in, out] stored as N(0, 1 / lr_multiplier^2) and `bias` [out]
  stored as `bias_init`; at run time the weight is scaled by lr_multiplier / sqrt(in) and
  the bias by lr_multiplier, so that Adam's per-parameter step sizes are equalized.
  """
  features: int
  activation: str = "linear"
  lr_multiplier: float = 1.0
  bias_init: float = 0.0
  use_bias: bool = True
  dtype: Dtype | None = None  # Compute dtype; None: promote inputs and params.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    weight = self.param("weight", nn.initializers.normal(stddev=1.0 / self.lr_multiplier),
                        (in_features, self.features))
    weight = weight * (self.lr_multiplier / np.sqrt(in_features))
    dtype = compute_dtype(self.dtype, x, weight)
    x = x.astype(dtype) @ weight.astype(dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
      bias = bias * self.lr_multiplier
    return bias_act(x, bias, self.activation)


class Conv2dLayer(nn.Module):
  """Conv layer with equalized learning rate and FIR resampling (official `Conv2dLayer`).

  Parameters: `weight` [k, k, in, out] ~ N(0, 1), scaled by 1 / sqrt(in * k * k) at
  run time, and optional `bias` [out]. `gain` in `__call__` multiplies the activation
  gain and the clamp, as the residual branches of the discriminator need.
  """
  features: int
  kernel_size: int
  use_bias: bool = True
  activation: str = "linear"
  up: int = 1
  down: int = 1
  resample_taps: Sequence[float] = DEFAULT_RESAMPLE_TAPS
  conv_clamp: float | None = None
  dtype: Dtype | None = None  # Compute dtype; None: promote inputs and params.

  @nn.compact
  def __call__(self, x: Array, gain: float = 1.0) -> Array:
    in_channels = x.shape[-1]
    k = self.kernel_size
    weight = self.param("weight", nn.initializers.normal(stddev=1.0),
                        (k, k, in_channels, self.features))
    weight = weight * (1 / np.sqrt(in_channels * k * k))
    resample_filter = setup_filter(self.resample_taps) if self.up > 1 or self.down > 1 else None
    dtype = compute_dtype(self.dtype, x, weight)
    x = conv2d_resample(x.astype(dtype), weight.astype(dtype), resample_filter,
                        up=self.up, down=self.down, padding=k // 2)
    bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
    act_gain = ACTIVATIONS[self.activation].default_gain * gain
    act_clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return bias_act(x, bias, self.activation, gain=act_gain, clamp=act_clamp)
