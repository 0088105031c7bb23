"""DiffAugment (Zhao et al., 2020): differentiable per-sample augmentation for GANs.

`config.augment` also selects ADA (`gantransfer_jax.ada`): see `parse`, `apply`.

Applied to real and fake images alike, in D and G steps, so that D never sees an
un-augmented image and G still gets gradients through the augmentation. Images are
[B, H, W, C] floats in [-1, 1]. Every op draws its parameters independently per sample;
the ops run in policy order:

  color       = brightness, saturation, contrast
  translation = integer shift by up to 1/8 of the size per axis, zero fill
  cutout      = a zeroed square of half the size at a random centre

The deterministic ops take their parameters explicitly, so they can be tested and
reused; the `random_*` wrappers draw those parameters as the authors' code does.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from gantransfer_jax import ada

Array = jax.Array

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


# --------------------------------------------------------------------------------------
# Deterministic ops; parameters are per sample, leading dimension B.


def _per_sample(values: Array, x: Array) -> Array:
  return jnp.asarray(values, x.dtype).reshape(-1, 1, 1, 1)


def adjust_brightness(x: Array, shift: Array) -> Array:
  """x + shift[b]."""
  return x + _per_sample(shift, x)


def adjust_saturation(x: Array, factor: Array) -> Array:
  """(x - mean_c) * factor[b] + mean_c, mean over channels per pixel."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  return (x - mean) * _per_sample(factor, x) + mean


def adjust_contrast(x: Array, factor: Array) -> Array:
  """(x - mean_chw) * factor[b] + mean_chw, mean over each whole image."""
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * _per_sample(factor, x) + mean


def translate(x: Array, shift_yx: Array) -> Array:
  """Shifts image b by integer shift_yx[b] = (dy, dx) pixels, filling with zeros.

  out[b, i, j] = x[b, i - dy, j - dx] where that pixel exists, else 0.
  """
  _, height, width, _ = x.shape
  shift_yx = jnp.asarray(shift_yx, jnp.int32)
  src_rows = jnp.arange(height)[None, :] - shift_yx[:, 0:1]  # [B, H]
  src_cols = jnp.arange(width)[None, :] - shift_yx[:, 1:2]   # [B, W]
  # Gather rows, then columns, from clipped indices; the masks zero what came from
  # outside the image (the clipped indices only serve to keep the gather in bounds).
  x = jnp.take_along_axis(x, jnp.clip(src_rows, 0, height - 1)[:, :, None, None], axis=1)
  x = jnp.take_along_axis(x, jnp.clip(src_cols, 0, width - 1)[:, None, :, None], axis=2)
  row_ok = (src_rows >= 0) & (src_rows < height)
  col_ok = (src_cols >= 0) & (src_cols < width)
  inside = row_ok[:, :, None, None] & col_ok[:, None, :, None]
  return jnp.where(inside, x, jnp.zeros_like(x))


def cutout(x: Array, center_yx: Array, size: int | tuple[int, int]) -> Array:
  """Zeroes, in image b, rows [cy - sh // 2, cy - sh // 2 + sh) and likewise columns.

  The square is clipped at the border, as in the authors' code (which clamps indices).
  """
  _, height, width, _ = x.shape
  size_h, size_w = (size, size) if isinstance(size, int) else size
  center_yx = jnp.asarray(center_yx, jnp.int32)
  top = center_yx[:, 0:1] - size_h // 2   # [B, 1]
  left = center_yx[:, 1:2] - size_w // 2
  rows = jnp.arange(height)[None, :]
  cols = jnp.arange(width)[None, :]
  in_rows = (rows >= top) & (rows < top + size_h)   # [B, H]
  in_cols = (cols >= left) & (cols < left + size_w)  # [B, W]
  cut = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return jnp.where(cut, jnp.zeros_like(x), x)


# --------------------------------------------------------------------------------------
# Random ops. Each maps per-sample uniforms u in [0, 1) to its parameters with the
# authors' distributions, so that `diff_augment` can draw all of them with one RNG call
# (one RNG kernel instead of five keeps XLA compile times down).


def _uniform_int(u: Array, low: Array | int, high: Array | int) -> Array:
  """Integers uniform in [low, high) from uniforms in [0, 1)."""
  span = high - low
  # The clip guards against u * span rounding up to span in float32.
  return low + jnp.clip(jnp.floor(u * span).astype(jnp.int32), 0, span - 1)


def _brightness(x: Array, u: Array) -> Array:
  return adjust_brightness(x, u[:, 0] - 0.5)


def _saturation(x: Array, u: Array) -> Array:
  return adjust_saturation(x, u[:, 0] * 2)


def _contrast(x: Array, u: Array) -> Array:
  return adjust_contrast(x, u[:, 0] + 0.5)


def _translation(x: Array, u: Array, ratio: float = TRANSLATION_RATIO) -> Array:
  """Shifts uniform in {-m, ..., m} per axis, m = round(size * ratio)."""
  _, height, width, _ = x.shape
  max_shift = jnp.array([int(height * ratio + 0.5), int(width * ratio + 0.5)])
  return translate(x, _uniform_int(u, -max_shift, max_shift + 1))


def _cutout(x: Array, u: Array, ratio: float = CUTOUT_RATIO) -> Array:
  """Square of round(size * ratio); centre uniform in [0, size + (1 - side % 2))."""
  _, height, width, _ = x.shape
  size = (int(height * ratio + 0.5), int(width * ratio + 0.5))
  # The authors' centre range: for even sides the square can start at any row in
  # [-side/2, size - side/2], i.e. reach either border equally often.
  center_max = jnp.array([height + (1 - size[0] % 2), width + (1 - size[1] % 2)])
  return cutout(x, _uniform_int(u, 0, center_max), size)


class _RandomOp(NamedTuple):
  apply: Callable[[Array, Array], Array]  # (images, uniforms [B, num_uniforms]) -> images
  num_uniforms: int


_BRIGHTNESS = _RandomOp(_brightness, 1)
_SATURATION = _RandomOp(_saturation, 1)
_CONTRAST = _RandomOp(_contrast, 1)
_TRANSLATION = _RandomOp(_translation, 2)
_CUTOUT = _RandomOp(_cutout, 2)

POLICIES: dict[str, tuple[_RandomOp, ...]] = {
    "color": (_BRIGHTNESS, _SATURATION, _CONTRAST),
    "translation": (_TRANSLATION,),
    "cutout": (_CUTOUT,),
}


def _random(op: _RandomOp, key: Array, x: Array) -> Array:
  return op.apply(x, jax.random.uniform(key, (x.shape[0], op.num_uniforms)))


def random_brightness(key: Array, x: Array) -> Array:
  """Adds U(-0.5, 0.5) per sample."""
  return _random(_BRIGHTNESS, key, x)


def random_saturation(key: Array, x: Array) -> Array:
  """Scales the deviation from the channel mean by U(0, 2) per sample."""
  return _random(_SATURATION, key, x)


def random_contrast(key: Array, x: Array) -> Array:
  """Scales the deviation from the image mean by U(0.5, 1.5) per sample."""
  return _random(_CONTRAST, key, x)


def random_translation(key: Array, x: Array) -> Array:
  """Integer shifts uniform in {-m, ..., m} per axis, m = round(size / 8), zero fill."""
  return _random(_TRANSLATION, key, x)


def random_cutout(key: Array, x: Array) -> Array:
  """Zeroes a square of side round(size / 2) at a uniform random centre."""
  return _random(_CUTOUT, key, x)


ADA_FORMS = "ada | ada:PIPELINE | ada_fixed:P | ada_fixed:P:PIPELINE"


def validate_policy(policy: str | Sequence[str]) -> tuple[str, ...]:
  """Parses 'color,translation' or a sequence of names; raises on unknown names."""
  names = policy.split(",") if isinstance(policy, str) else list(policy)
  names = tuple(name.strip() for name in names if name.strip())
  for name in names:
    if name not in POLICIES:
      raise ValueError(f"unknown DiffAugment policy {name!r}; valid choices: "
                       f"{', '.join(POLICIES)} (comma-separated, or empty for none), "
                       f"or ADA: {ADA_FORMS}")
  return names


class AugmentSpec(NamedTuple):
  """What `config.augment` asks for: DiffAugment ops, or ADA (adaptive or fixed p)."""
  diffaugment: tuple[str, ...] = ()
  ada_pipeline: str | None = None    # An `ada.PIPELINES` name; None = no ADA.
  ada_fixed_p: float | None = None   # None = adaptive p (the controller's).

  @property
  def is_ada(self) -> bool:
    return self.ada_pipeline is not None

  @property
  def active(self) -> bool:
    return bool(self.diffaugment) or self.is_ada


def parse(text: str) -> AugmentSpec:
  """Parses `config.augment`.

    'color,translation,cutout'  DiffAugment policies in order ('' = no augmentation)
    'ada'                      adaptive ADA, the default 'bgc' pipeline
    'ada:bgcfnc'               adaptive ADA with another pipeline (ada.PIPELINES)
    'ada_fixed:0.2'            ADA at a fixed p (no controller), 'bgc'
    'ada_fixed:0.2:bgcfnc'     ADA at a fixed p with another pipeline
  """
  text = text.strip()
  kind, _, rest = text.partition(":")
  if kind not in ("ada", "ada_fixed"):
    return AugmentSpec(diffaugment=validate_policy(text))
  fields = rest.split(":") if rest else []
  fixed_p = None
  if kind == "ada_fixed":
    try:
      fixed_p = float(fields.pop(0)) if fields else None
    except ValueError:
      fixed_p = None
    if fixed_p is None or not 0 <= fixed_p <= 1:
      raise ValueError(f"augment {text!r}: ada_fixed needs a probability in [0, 1], e.g. "
                       f"'ada_fixed:0.2' (forms: {ADA_FORMS})")
  pipeline = fields.pop(0) if fields else "bgc"
  if fields or pipeline not in ada.PIPELINES:
    raise ValueError(f"augment {text!r}: unknown ADA pipeline; valid: "
                     f"{', '.join(ada.PIPELINES)} (forms: {ADA_FORMS})")
  return AugmentSpec(ada_pipeline=pipeline, ada_fixed_p=fixed_p)


def apply(spec: AugmentSpec, key: Array, images: Array, p: Array | float = 0.0) -> Array:
  """Augments what D is about to see: DiffAugment, or ADA at probability p."""
  if spec.is_ada:
    return ada.augment(key, images, p, spec.ada_pipeline)
  if spec.diffaugment:
    return diff_augment(key, images, spec.diffaugment)
  return images


def diff_augment(key: Array, images: Array, policy: str | Sequence[str]) -> Array:
  """Applies the policy's ops in order, each with its own per-sample parameters.

  Deterministic for a given key and differentiable w.r.t. `images` (translation and
  cutout are gathers and masks, so their gradients route to the source pixels). An
  empty policy returns the images unchanged.
  """
  ops = [op for name in validate_policy(policy) for op in POLICIES[name]]
  if not ops:
    return images
  # One draw for all ops; op i reads its own columns.
  uniforms = jax.random.uniform(key, (images.shape[0], sum(op.num_uniforms for op in ops)))
  column = 0
  for op in ops:
    images = op.apply(images, uniforms[:, column:column + op.num_uniforms])
    column += op.num_uniforms
  return images


# ADA's controller settings (`config.ada`), the official defaults for training from
# scratch; transfers use kimg 100 (paper 004, StyleGAN2-ADA's resume default).
ADA_DEFAULTS = dict(target=0.6, interval=4, kimg=500.0, initial_p=0.0)


def ada_controller(config) -> tuple[ada.Controller, float]:
  """(controller, initial p) of a config whose `augment` is an ADA form; ValueError
  on settings that cannot work."""
  spec = parse(config.augment)
  settings = {**ADA_DEFAULTS, **(config.get("ada") or {})}
  problems = []
  if not 0 < settings["target"] < 1:
    problems.append(f"ada.target must be in (0, 1), got {settings['target']}")
  if int(settings["interval"]) < 1:
    problems.append(f"ada.interval must be >= 1, got {settings['interval']}")
  if settings["kimg"] <= 0:
    problems.append(f"ada.kimg must be > 0, got {settings['kimg']}")
  if settings["initial_p"] < 0:
    problems.append(f"ada.initial_p must be >= 0, got {settings['initial_p']}")
  if problems:
    raise ValueError("; ".join(problems))
  controller = ada.Controller(
      batch_size=config.batch_size, target=float(settings["target"]),
      interval=int(settings["interval"]), kimg=float(settings["kimg"]),
      adaptive=spec.ada_fixed_p is None)
  initial_p = spec.ada_fixed_p if spec.ada_fixed_p is not None else settings["initial_p"]
  return controller, float(initial_p)
