"""Adaptive discriminator augmentation (ADA; Karras et al. 2020), per sample, on device.

The pipeline of stylegan2-ada-pytorch `training/augment.py` (NOTES §10). Images are
[B, H, W, C] floats in [-1, 1] (C = 3, or 1 for greyscale). Every op fires per sample
with probability p times its strength; the parameters of a batch are drawn at once
(`draw`) and applied by pure functions (`apply`), so each op can be tested alone with
parameters of one's choosing. No Python loop runs over samples.

  geometric  xflip, rotate90, xint, scale, rotate, aniso, rotate, xfrac: composed into
             one inverse 3x3 matrix per sample, executed once: reflect pad, 2x
             upsample with the sym6 wavelet, bilinear affine resampling (align_corners
             False, zeros outside), 2x downsample with the same filter, crop.
  colour     brightness, contrast, lumaflip, hue, saturation: one 4x4 matrix per sample.
  filter     imgfilter: per-band gains of a 4-band sym2 filter bank.
  corruption noise (additive Gaussian), cutout.

Everything is differentiable w.r.t. the images (gathers and convolutions), so R1
can be taken through the augmentation as the official loss does.

Deviations from the official code. (1) xflip and rotate90 are executed as exact pixel
moves, then the rest of the same per-sample matrix (xint onwards) through the wavelet
resampling; the composite transform is the official one, and so is the border (the
reflect padding commutes with flips and quarter turns). The official passes flips and
quarter turns through the resampling too, where the asymmetric sym6 filter makes them
inexact at high frequencies (errors up to 0.4 on white noise in [-1, 1], 0.05 on
smooth images); integer translations stay exact there (to 1e-5) and go through it
here as well. (2) Static shapes (same result): the official pads by
the batch's largest needed margin (at most size - 1, a data-dependent shape); here
every batch is padded by size - 1. Pixels that the official margin covers come out
the same, since both are single reflections and the official margin already
includes the filter's support.

The adaptive p controller (`AdaState`, `accumulate`, `adjust`) runs inside the jitted
train step: the mean sign of D's real logits is summed per D step, and every
`interval` D steps p moves by sign(r_t - target) * images / (kimg * 1000).
"""

from __future__ import annotations

import functools
from typing import Mapping, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Daubechies' symlets, as listed in the official augment.py.
_SYM2 = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)
_SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057,
         -0.048311742585633, 0.4910559419267466, 0.787641141030194, 0.3379294217276218,
         -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
         0.0017677118642428036, -0.007800708325034148)

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
OTHER_OPS = ("imgfilter", "noise", "cutout")
OPS = GEOMETRIC_OPS + COLOR_OPS + OTHER_OPS

# The official `augpipe_specs` (training/training_loop.py): op -> probability multiplier.
_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
PIPELINES: dict[str, dict[str, float]] = {
    "blit": _BLIT,
    "geom": _GEOM,
    "color": _COLOR,
    "filter": dict(imgfilter=1),
    "noise": dict(noise=1),
    "cutout": dict(cutout=1),
    "bg": {**_BLIT, **_GEOM},
    "bgc": {**_BLIT, **_GEOM, **_COLOR},
    "bgcf": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1},
    "bgcfn": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1, "noise": 1},
    "bgcfnc": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1, "noise": 1, "cutout": 1},
}

# The official defaults of AugmentPipe's ranges.
XINT_MAX = 0.125
SCALE_STD = 0.2
ROTATE_MAX = 1.0
ANISO_STD = 0.2
XFRAC_STD = 0.125
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
HUE_MAX = 1.0
SATURATION_STD = 1.0
IMGFILTER_STD = 1.0
NOISE_STD = 0.1
CUTOUT_SIZE = 0.5

# The luma axis the colour ops reflect about, rotate around and scale away from.
_LUMA = np.asarray([1, 1, 1, 0], np.float64) / np.sqrt(3)


def _filter_bank() -> np.ndarray:
  """The official 4-band image filter bank built from sym2 ([4, 43] taps)."""
  lo = np.asarray(_SYM2)
  hi = lo * (-1.0) ** np.arange(lo.size)
  lo2 = np.convolve(lo, lo[::-1]) / 2
  hi2 = np.convolve(hi, hi[::-1]) / 2
  bank = np.eye(4, 1)
  for i in range(1, bank.shape[0]):
    bank = np.dstack([bank, np.zeros_like(bank)]).reshape(bank.shape[0], -1)[:, :-1]
    bank = np.stack([np.convolve(row, lo2) for row in bank])
    start = (bank.shape[1] - hi2.size) // 2
    bank[i, start:start + hi2.size] += hi2
  return bank.astype(np.float32)


_FILTER_BANK = _filter_bank()
_EXPECTED_POWER = np.asarray([10, 1, 1, 1], np.float32) / 13  # The 1/f spectrum of images.


class AdaParams(NamedTuple):
  """Per-sample parameters of one draw; None = the op is not in the pipeline.

  Identity values: xflip 0, rotate90 0, xint (0, 0), scale 1, rotate 0, aniso 1,
  xfrac (0, 0), brightness 0, contrast 1, lumaflip 0, hue 0, saturation 1,
  imgfilter gains 1, noise 0, cutout size 0.
  """
  xflip: Array | None = None           # [B] 0/1: mirror x.
  rotate90: Array | None = None        # [B] 0..3: quarter turns.
  xint: Array | None = None            # [B, 2] integer (x, y) translation, pixels.
  scale: Array | None = None           # [B] isotropic scale.
  rotate_pre: Array | None = None      # [B] angle (radians), before aniso.
  aniso: Array | None = None           # [B] x scale (y scale is its inverse).
  rotate_post: Array | None = None     # [B] angle, after aniso.
  xfrac: Array | None = None           # [B, 2] fractional (x, y) translation, pixels.
  brightness: Array | None = None      # [B] added.
  contrast: Array | None = None        # [B] multiplier.
  lumaflip: Array | None = None        # [B] 0/1: reflect about the luma axis.
  hue: Array | None = None             # [B] rotation about the luma axis (radians).
  saturation: Array | None = None      # [B] scale orthogonal to the luma axis.
  imgfilter: Array | None = None       # [B, 4] gains of the filter bank's bands.
  noise: Array | None = None           # [B, H, W, C] additive noise (already scaled).
  cutout_center: Array | None = None   # [B, 2] (x, y) centre in [0, 1).
  cutout_size: Array | None = None     # [B] side as a fraction of the size (0 = off).


def identity_params(batch: int, shape: tuple[int, ...] | None = None) -> AdaParams:
  """Every op present with its identity value (shape [B, H, W, C] for the noise)."""
  zeros, ones = jnp.zeros((batch,)), jnp.ones((batch,))
  return AdaParams(
      xflip=zeros, rotate90=zeros, xint=jnp.zeros((batch, 2)), scale=ones, rotate_pre=zeros,
      aniso=ones, rotate_post=zeros, xfrac=jnp.zeros((batch, 2)), brightness=zeros,
      contrast=ones, lumaflip=zeros, hue=zeros, saturation=ones,
      imgfilter=jnp.ones((batch, 4)),
      noise=None if shape is None else jnp.zeros(shape),
      cutout_center=jnp.full((batch, 2), 0.5), cutout_size=zeros)


def check_strengths(strengths: Mapping[str, float]) -> None:
  unknown = sorted(set(strengths) - set(OPS))
  if unknown:
    raise ValueError(f"unknown ADA ops {unknown}; valid: {', '.join(OPS)}")


# Fixed random columns per op, so that an op's draw does not depend on which others
# are in the pipeline, and a whole batch needs only three RNG calls.
_UNIFORM_COLUMNS = dict(xflip=2, rotate90=2, xint=3, scale=1, rotate_pre=2, aniso=1,
                        rotate_post=2, xfrac=1, brightness=1, contrast=1, lumaflip=2,
                        hue=2, saturation=1, imgfilter=4, noise=1, cutout=3)
_NORMAL_COLUMNS = dict(scale=1, aniso=1, xfrac=2, brightness=1, contrast=1, saturation=1,
                       imgfilter=4, noise=1)


def _columns(counts: Mapping[str, int]) -> dict[str, slice]:
  out, start = {}, 0
  for name, count in counts.items():
    out[name] = slice(start, start + count)
    start += count
  return out


_U = _columns(_UNIFORM_COLUMNS)
_N = _columns(_NORMAL_COLUMNS)


def draw(key: Array, shape: tuple[int, int, int, int], p: Array | float,
         strengths: Mapping[str, float]) -> AdaParams:
  """Draws the parameters of a batch of `shape` as the official AugmentPipe does.

  Args:
    key: PRNG key.
    shape: the images' [B, H, W, C].
    p: augmentation probability (a traced scalar is fine: the adaptive controller's).
    strengths: op -> probability multiplier, e.g. `PIPELINES['bgc']`.
  """
  check_strengths(strengths)
  batch, height, width, _ = shape
  k_u, k_n, k_noise = jax.random.split(key, 3)
  u = jax.random.uniform(k_u, (batch, sum(_UNIFORM_COLUMNS.values())))
  n = jax.random.normal(k_n, (batch, sum(_NORMAL_COLUMNS.values())))
  p = jnp.asarray(p, jnp.float32)

  def fires(column, strength):
    return column < strength * p

  def gated(name, strength, value, identity, gate_column=0):
    return jnp.where(fires(u[:, _U[name]][:, gate_column], strength), value, identity)

  params = {}
  s = strengths.get
  if s("xflip"):
    params["xflip"] = gated("xflip", s("xflip"), jnp.floor(u[:, _U["xflip"]][:, 1] * 2), 0.0)
  if s("rotate90"):
    params["rotate90"] = gated("rotate90", s("rotate90"),
                               jnp.floor(u[:, _U["rotate90"]][:, 1] * 4), 0.0)
  if s("xint"):
    t = (u[:, _U["xint"]][:, 1:] * 2 - 1) * XINT_MAX
    t = jnp.round(t * jnp.asarray([width, height], jnp.float32))
    params["xint"] = jnp.where(fires(u[:, _U["xint"]][:, :1], s("xint")), t, 0.0)
  if s("scale"):
    params["scale"] = gated("scale", s("scale"), jnp.exp2(n[:, _N["scale"]][:, 0] * SCALE_STD),
                            1.0)
  if s("rotate"):
    # Applied twice, so that P(pre or post) = rotate * p.
    p_rot = 1 - jnp.sqrt(jnp.clip(1 - s("rotate") * p, 0, 1))
    for name in ("rotate_pre", "rotate_post"):
      theta = (u[:, _U[name]][:, 1] * 2 - 1) * np.pi * ROTATE_MAX
      params[name] = jnp.where(u[:, _U[name]][:, 0] < p_rot, theta, 0.0)
  if s("aniso"):
    params["aniso"] = gated("aniso", s("aniso"), jnp.exp2(n[:, _N["aniso"]][:, 0] * ANISO_STD),
                            1.0)
  if s("xfrac"):
    t = n[:, _N["xfrac"]] * XFRAC_STD * jnp.asarray([width, height], jnp.float32)
    params["xfrac"] = jnp.where(fires(u[:, _U["xfrac"]], s("xfrac")), t, 0.0)
  if s("brightness"):
    params["brightness"] = gated("brightness", s("brightness"),
                                 n[:, _N["brightness"]][:, 0] * BRIGHTNESS_STD, 0.0)
  if s("contrast"):
    params["contrast"] = gated("contrast", s("contrast"),
                               jnp.exp2(n[:, _N["contrast"]][:, 0] * CONTRAST_STD), 1.0)
  if s("lumaflip"):
    params["lumaflip"] = gated("lumaflip", s("lumaflip"),
                               jnp.floor(u[:, _U["lumaflip"]][:, 1] * 2), 0.0)
  if s("hue"):
    params["hue"] = gated("hue", s("hue"), (u[:, _U["hue"]][:, 1] * 2 - 1) * np.pi * HUE_MAX,
                          0.0)
  if s("saturation"):
    params["saturation"] = gated("saturation", s("saturation"),
                                 jnp.exp2(n[:, _N["saturation"]][:, 0] * SATURATION_STD), 1.0)
  if s("imgfilter"):
    params["imgfilter"] = _imgfilter_gains(
        n[:, _N["imgfilter"]], fires(u[:, _U["imgfilter"]], s("imgfilter")))
  if s("noise"):
    sigma = gated("noise", s("noise"), jnp.abs(n[:, _N["noise"]][:, 0]) * NOISE_STD, 0.0)
    params["noise"] = jax.random.normal(k_noise, shape) * sigma[:, None, None, None]
  if s("cutout"):
    params["cutout_size"] = gated("cutout", s("cutout"), jnp.full((batch,), CUTOUT_SIZE), 0.0)
    params["cutout_center"] = u[:, _U["cutout"]][:, 1:]
  return AdaParams(**params)


def _imgfilter_gains(normals: Array, fired: Array) -> Array:
  """Per-band gains: each fired band is amplified by 2^N(0, 1), then the power renormalised."""
  num_bands = _FILTER_BANK.shape[0]
  gains = jnp.ones_like(normals)
  for band in range(num_bands):
    t_band = jnp.where(fired[:, band], jnp.exp2(normals[:, band] * IMGFILTER_STD), 1.0)
    t = jnp.ones_like(normals).at[:, band].set(t_band)
    t = t / jnp.sqrt(jnp.sum(_EXPECTED_POWER * jnp.square(t), axis=-1, keepdims=True))
    gains = gains * t
  return gains


# --------------------------------------------------------------------------------------
# Matrices: homogeneous, per sample, [B, 3, 3] (2D) or [B, 4, 4] (colour).


def _matrix(rows, batch: int) -> Array:
  rows = [[jnp.broadcast_to(jnp.asarray(v, jnp.float32), (batch,)) for v in row]
          for row in rows]
  return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def translate2d(tx, ty, batch):
  return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], batch)


def scale2d(sx, sy, batch):
  return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], batch)


def rotate2d(theta, batch):
  c, s = jnp.cos(theta), jnp.sin(theta)
  return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], batch)


def _quarter_turns(i, batch):
  # Exact cos/sin of multiples of pi/2 (float cos(pi/2) is 4e-8, not 0).
  i = jnp.asarray(i, jnp.int32) % 4
  c = jnp.asarray([1.0, 0.0, -1.0, 0.0])[i]
  s = jnp.asarray([0.0, 1.0, 0.0, -1.0])[i]
  return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], batch)


def _compose(matrices) -> Array | None:
  g = None
  for m in matrices:
    g = m if g is None else g @ m
  return g


def blit_inverse(params: AdaParams, batch: int) -> Array | None:
  """The mirror-symmetric part of G_inv (xflip, rotate90), official order."""
  matrices = []
  if params.xflip is not None:
    matrices.append(scale2d(1 - 2 * params.xflip, 1, batch))
  if params.rotate90 is not None:
    matrices.append(_quarter_turns(params.rotate90, batch))    # rotate2d_inv(-pi/2 * i)
  return _compose(matrices)


def resample_inverse(params: AdaParams, batch: int) -> Array | None:
  """The rest of G_inv (xint, scale, rotate, aniso, rotate, xfrac), official order."""
  matrices = []
  if params.xint is not None:
    matrices.append(translate2d(-params.xint[:, 0], -params.xint[:, 1], batch))
  if params.scale is not None:
    matrices.append(scale2d(1 / params.scale, 1 / params.scale, batch))
  if params.rotate_pre is not None:
    matrices.append(rotate2d(params.rotate_pre, batch))        # rotate2d_inv(-theta)
  if params.aniso is not None:
    matrices.append(scale2d(1 / params.aniso, params.aniso, batch))
  if params.rotate_post is not None:
    matrices.append(rotate2d(params.rotate_post, batch))
  if params.xfrac is not None:
    matrices.append(translate2d(-params.xfrac[:, 0], -params.xfrac[:, 1], batch))
  return _compose(matrices)


def geometric_inverse(params: AdaParams, batch: int) -> Array | None:
  """G_inv (output pixel -> input pixel, centred coordinates): the official matrix."""
  return _compose(m for m in (blit_inverse(params, batch), resample_inverse(params, batch))
                  if m is not None)


def rotate3d(v: np.ndarray, theta: Array, batch: int) -> Array:
  """Rotation by theta about the unit axis v (Rodrigues), homogeneous 4x4."""
  vx, vy, vz = (float(a) for a in v[:3])
  s, c = jnp.sin(theta), jnp.cos(theta)
  cc = 1 - c
  return _matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                  [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                  [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                  [0, 0, 0, 1]], batch)


def color_matrix(params: AdaParams, batch: int, num_channels: int = 3) -> Array | None:
  """C (colour_in -> colour_out), composed left to right in the official order."""
  c = None
  eye = jnp.eye(4)
  vv = jnp.asarray(np.outer(_LUMA, _LUMA), jnp.float32)

  def then(m):
    nonlocal c
    c = m if c is None else m @ c

  if params.brightness is not None:
    b = params.brightness
    then(_matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], batch))
  if params.contrast is not None:
    k = params.contrast
    then(_matrix([[k, 0, 0, 0], [0, k, 0, 0], [0, 0, k, 0], [0, 0, 0, 1]], batch))
  if params.lumaflip is not None:
    then(eye - 2 * vv * params.lumaflip[:, None, None])  # Householder reflection.
  # Hue and saturation are no-ops on greyscale images (official).
  if params.hue is not None and num_channels > 1:
    then(rotate3d(_LUMA, params.hue, batch))
  if params.saturation is not None and num_channels > 1:
    then(vv + (eye - vv) * params.saturation[:, None, None])
  return c


# --------------------------------------------------------------------------------------
# Execution.

_HZ_GEOM = np.asarray(_SYM6, np.float64) / np.sum(_SYM6)  # setup_filter normalises to sum 1.
_HZ_PAD = len(_SYM6) // 4


def _reflect_index(i, size: int):
  """Index into a reflect-padded axis (no edge repeat), any distance outside; numpy or
  jax integer arrays."""
  if size == 1:
    return i * 0
  period = 2 * size - 2
  return size - 1 - abs(size - 1 - i % period)


# Padding and 2x resampling along one axis are linear maps of a few dozen pixels, so
# each is one small matrix (float64 at trace time, exact in its taps) applied by a
# matmul. On XLA's CPU backend this is ~50x faster than the official's
# input-dilated depthwise convolution (ADA's dominant cost before) and its transpose,
# for the backward pass, is a matmul too.


@functools.lru_cache(maxsize=None)
def _upsample_matrix(size: int) -> np.ndarray:
  """[2 (3 size - 2), size]: reflect pad by size - 1 (the official margin's upper
  bound), then the official upsample2d(f=sym6, up=2): zero insertion, the filter
  convolved (gain 2), padding (len + 1) // 2 each side of the 2 n - 1 samples."""
  pad = size - 1
  length = size + 2 * pad
  taps = _HZ_GEOM[::-1] * 2  # Correlating with the flipped filter convolves.
  k, j = np.mgrid[0:2 * length, 0:length]
  t = 2 * j + (len(taps) + 1) // 2 - k  # The tap linking output k and padded input j.
  up = np.where((t >= 0) & (t < len(taps)), taps[np.clip(t, 0, len(taps) - 1)], 0.0)
  reflect = np.zeros((length, size))
  reflect[np.arange(length), _reflect_index(np.arange(length) - pad, size)] = 1
  return up @ reflect


@functools.lru_cache(maxsize=None)
def _downsample_matrix(size: int) -> np.ndarray:
  """[size, 2 (size + 2 Hz_pad)]: the official downsample2d(f=sym6, down=2,
  padding=-2 Hz_pad, flip_filter=True), i.e. correlation, stride 2, cropped."""
  crop = 2 * _HZ_PAD - (len(_HZ_GEOM) - 1) // 2  # Net cells removed at each end.
  i, m = np.mgrid[0:size, 0:2 * (size + 2 * _HZ_PAD)]
  t = m - 2 * i - crop
  return np.where((t >= 0) & (t < len(_HZ_GEOM)),
                  _HZ_GEOM[np.clip(t, 0, len(_HZ_GEOM) - 1)], 0.0)


def _separable(x: Array, m_h: np.ndarray, m_w: np.ndarray) -> Array:
  """[B, H, W, C] -> [B, H', W', C] through the axes' matrices [H', H] and [W', W]."""
  # HIGHEST: the default float32 matmul on GPUs/TPUs rounds to tf32/bf16 (1e-3 errors).
  highest = jax.lax.Precision.HIGHEST
  x = jnp.einsum("kh,bhwc->bkwc", jnp.asarray(m_h, x.dtype), x, precision=highest)
  return jnp.einsum("lw,bhwc->bhlc", jnp.asarray(m_w, x.dtype), x, precision=highest)


def affine_sample(x: Array, theta: Array, out_shape: tuple[int, int]) -> Array:
  """`grid_sample(x, affine_grid(theta, out_shape, align_corners=False))`, bilinear,
  zeros outside; x [B, H, W, C], theta [B, 2, 3] in normalised [-1, 1] coordinates."""
  batch, in_h, in_w, num_channels = x.shape
  out_h, out_w = out_shape
  xs = (2 * jnp.arange(out_w, dtype=jnp.float32) + 1) / out_w - 1
  ys = (2 * jnp.arange(out_h, dtype=jnp.float32) + 1) / out_h - 1
  t = theta[:, :, :, None, None]
  gx = t[:, 0, 0] * xs[None, None, :] + t[:, 0, 1] * ys[None, :, None] + t[:, 0, 2]
  gy = t[:, 1, 0] * xs[None, None, :] + t[:, 1, 1] * ys[None, :, None] + t[:, 1, 2]
  ix = ((gx + 1) * in_w - 1) / 2  # [B, out_h, out_w] input pixel coordinates.
  iy = ((gy + 1) * in_h - 1) / 2
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  wx1, wy1 = ix - x0, iy - y0
  flat = x.reshape(batch, in_h * in_w, num_channels)
  out = jnp.zeros((batch, out_h * out_w, num_channels), x.dtype)
  # Four gathers, one per corner. (One gather of the 2x2 neighbourhoods stacked along
  # channels gave wrong values under jit on XLA's CPU backend, right ones eagerly.)
  for dy, wy in ((0, 1 - wy1), (1, wy1)):
    for dx, wx in ((0, 1 - wx1), (1, wx1)):
      cx, cy = x0 + dx, y0 + dy
      inside = (cx >= 0) & (cx < in_w) & (cy >= 0) & (cy < in_h)
      index = (jnp.clip(cy, 0, in_h - 1) * in_w + jnp.clip(cx, 0, in_w - 1)).astype(jnp.int32)
      values = jnp.take_along_axis(flat, index.reshape(batch, -1, 1), axis=1)
      weight = jnp.where(inside, wx * wy, 0.0).reshape(batch, -1, 1).astype(x.dtype)
      out = out + values * weight
  return out.reshape(batch, out_h, out_w, num_channels)


def apply_geometric(images: Array, g_inv: Array) -> Array:
  """Resamples images through G_inv (pixel_out -> pixel_in, centred pixel coordinates)."""
  batch, height, width, _ = images.shape
  x = _separable(images, _upsample_matrix(height), _upsample_matrix(width))
  g = scale2d(2, 2, batch) @ g_inv @ scale2d(0.5, 0.5, batch)
  g = translate2d(-0.5, -0.5, batch) @ g @ translate2d(0.5, 0.5, batch)
  out_h, out_w = (height + 2 * _HZ_PAD) * 2, (width + 2 * _HZ_PAD) * 2
  g = scale2d(2 / x.shape[2], 2 / x.shape[1], batch) @ g @ scale2d(out_w / 2, out_h / 2, batch)
  x = affine_sample(x, g[:, :2, :], (out_h, out_w))
  return _separable(x, _downsample_matrix(height), _downsample_matrix(width))


def apply_blit(images: Array, b_inv: Array) -> Array:
  """Moves pixels exactly through an integer G_inv (flips, quarter turns; also integer
  translations, read from the image's reflection outside it)."""
  batch, height, width, num_channels = images.shape
  cx, cy = (width - 1) / 2, (height - 1) / 2
  xo = jnp.arange(width, dtype=jnp.float32)[None, None, :] - cx
  yo = jnp.arange(height, dtype=jnp.float32)[None, :, None] - cy
  m = b_inv[:, :, :, None, None]
  xi = jnp.round(m[:, 0, 0] * xo + m[:, 0, 1] * yo + m[:, 0, 2] + cx).astype(jnp.int32)
  yi = jnp.round(m[:, 1, 0] * xo + m[:, 1, 1] * yo + m[:, 1, 2] + cy).astype(jnp.int32)
  index = _reflect_index(yi, height) * width + _reflect_index(xi, width)  # [B, H, W]
  flat = images.reshape(batch, height * width, num_channels)
  out = jnp.take_along_axis(flat, index.reshape(batch, -1, 1), axis=1)
  return out.reshape(images.shape)


def apply_color(images: Array, c: Array) -> Array:
  num_channels = images.shape[-1]
  c = c.astype(images.dtype)
  if num_channels == 3:
    return jnp.einsum("bij,bhwj->bhwi", c[:, :3, :3], images) + c[:, None, None, :3, 3]
  if num_channels == 1:
    c = jnp.mean(c[:, :3, :], axis=1)  # [B, 4]
    return images * jnp.sum(c[:, :3], axis=1)[:, None, None, None] + c[:, None, None, 3:]
  raise ValueError(f"ADA's colour ops need RGB (3 channels) or L (1 channel), got "
                   f"{num_channels}")


def apply_imgfilter(images: Array, gains: Array) -> Array:
  """Filters each image with sum_b gains[b] * bank[b], separably, reflect padded."""
  batch, height, width, num_channels = images.shape
  taps = (gains @ jnp.asarray(_FILTER_BANK)).astype(images.dtype)  # [B, T]
  pad = _FILTER_BANK.shape[1] // 2
  x = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
  # Samples and channels become one depthwise axis: one convolution per direction.
  x = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, *x.shape[1:3], batch * num_channels)
  kernel = jnp.repeat(taps, num_channels, axis=0).T  # [T, B * C]
  for shape in ((-1, 1, 1, batch * num_channels), (1, -1, 1, batch * num_channels)):
    x = jax.lax.conv_general_dilated(
        x, kernel.reshape(shape), (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=batch * num_channels)
  return jnp.transpose(x.reshape(height, width, batch, num_channels), (2, 0, 1, 3))


def apply_cutout(images: Array, center: Array, size: Array) -> Array:
  """Zeroes pixels within size / 2 of the centre in both axes (fractions of the size)."""
  _, height, width, _ = images.shape
  cx = (jnp.arange(width) + 0.5) / width
  cy = (jnp.arange(height) + 0.5) / height
  half = size[:, None] / 2
  keep_x = jnp.abs(cx[None, :] - center[:, 0:1]) >= half   # [B, W]
  keep_y = jnp.abs(cy[None, :] - center[:, 1:2]) >= half   # [B, H]
  keep = keep_y[:, :, None, None] | keep_x[:, None, :, None]
  return images * keep.astype(images.dtype)


def apply(images: Array, params: AdaParams) -> Array:
  """Applies the ops present in `params` (geometric, colour, filter, noise, cutout)."""
  batch = images.shape[0]
  # The official G_inv = blits @ rest; the blits, as exact pixel moves, go first.
  b_inv = blit_inverse(params, batch)
  if b_inv is not None:
    images = apply_blit(images, b_inv)
  g_inv = resample_inverse(params, batch)
  if g_inv is not None:
    images = apply_geometric(images, g_inv)
  c = color_matrix(params, batch, images.shape[-1])
  if c is not None:
    images = apply_color(images, c)
  if params.imgfilter is not None:
    images = apply_imgfilter(images, params.imgfilter)
  if params.noise is not None:
    images = images + params.noise.astype(images.dtype)
  if params.cutout_size is not None:
    images = apply_cutout(images, params.cutout_center, params.cutout_size)
  return images


def augment(key: Array, images: Array, p: Array | float,
            strengths: Mapping[str, float] | str = "bgc") -> Array:
  """Draws per-sample parameters at probability p and applies them (differentiable)."""
  if isinstance(strengths, str):
    strengths = PIPELINES[strengths]
  return apply(images, draw(key, images.shape, p, strengths))


# --------------------------------------------------------------------------------------
# The adaptive p controller, as state of the train step.


@flax.struct.dataclass
class AdaState:
  p: jax.Array          # Augmentation probability (float32 scalar).
  sign_sum: jax.Array   # Sum over D steps of mean(sign(D(real))) since the last update.
  d_steps: jax.Array    # D steps summed in sign_sum (int32).
  rt: jax.Array         # The last r_t (the overfitting heuristic), for logging.


def init_state(p: float = 0.0) -> AdaState:
  return AdaState(p=jnp.asarray(p, jnp.float32), sign_sum=jnp.zeros((), jnp.float32),
                  d_steps=jnp.zeros((), jnp.int32), rt=jnp.zeros((), jnp.float32))


class Controller(NamedTuple):
  """The official heuristic's settings (ada_target, ada_interval, ada_kimg)."""
  batch_size: int
  target: float = 0.6
  interval: int = 4
  kimg: float = 500.0
  adaptive: bool = True


def accumulate(state: AdaState, real_sign_means: Array) -> AdaState:
  """Adds the mean real-logit signs of some D steps (one value per D step)."""
  real_sign_means = jnp.atleast_1d(real_sign_means)
  return state.replace(sign_sum=state.sign_sum + jnp.sum(real_sign_means),
                       d_steps=state.d_steps + real_sign_means.shape[0])


def adjust(state: AdaState, controller: Controller) -> AdaState:
  """Every `interval` D steps: r_t = mean sign, p += sign(r_t - target) * images / (kimg k).

  Images counts the reals D saw since the last update (batch * interval when the D
  steps per train step divide the interval, the official case). p stays >= 0.
  """
  due = state.d_steps >= controller.interval
  steps = jnp.maximum(state.d_steps, 1)
  rt = state.sign_sum / steps
  step = jnp.sign(rt - controller.target) * (
      controller.batch_size * steps.astype(jnp.float32) / (controller.kimg * 1000))
  new_p = jnp.maximum(state.p + step, 0.0) if controller.adaptive else state.p
  return AdaState(p=jnp.where(due, new_p, state.p),
                  sign_sum=jnp.where(due, 0.0, state.sign_sum),
                  d_steps=jnp.where(due, 0, state.d_steps),
                  rt=jnp.where(due, rt, state.rt))
