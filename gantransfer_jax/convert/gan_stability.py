"""GAN_stability ResNet GAN checkpoints (AdaFM's ImageNet source) -> our flax variables, torch-free.

Reads (through the restricted unpickler of `gantransfer_jax.metrics.torch_pickle`) a
PyTorch state dict of the authors' conditional ResNet G and D, in any `torch.save` format
or as a plain pickle of numpy arrays:

* a checkpoint {'generator': G state dict, 'discriminator': D state dict, ...} (optimizer
  states and counters are ignored; `generator_key='generator_test'` picks the EMA G);
* a bare G or D state dict (told apart by `conv_img`: G's maps nf -> 3 channels, D's 3 -> nf);
* either with DataParallel's 'module.' prefix on every name.

The architecture (resolution from the number of groups, nf, z_dim) is read off G's
tensors; every converted array is checked against `jax.eval_shape` of our init, and
anything else (missing, unexpected or misshapen tensors) fails with a `LayoutError`.

Name mapping (g a group 0..n-1, b a block 0/1, c in conv_0, conv_1, conv_s):

| authors' key             | ours (params/...)          | layout          |
| ------------------------ | -------------------------- | --------------- |
| resnet_{g}.{b}.{c}.weight | resnet_{g}/{b}/{c}/kernel | OIHW -> HWIO    |
| resnet_{g}.{b}.{c}.bias   | resnet_{g}/{b}/{c}/bias   | as is           |
| conv_img.weight / .bias   | conv_img/kernel / bias    | OIHW -> HWIO    |
| fc.weight / fc.bias       | fc/kernel / fc/bias       | see below       |
| embedding.weight (G)      | dropped                   |                 |

The class condition. The authors' G computes `fc(cat([z, e_y / |e_y|]))`: z comes first,
so fc.weight is [16 nf * 16, z_dim + embed_size] and its first z_dim columns act on z.
Our unconditional G keeps exactly those columns (kernel = weight[:, :z_dim].T) and the
bias, and drops the embedding and its columns: the converted fc equals the authors' fc
with the label term removed. (The AdaFM authors re-initialise G's and D's fc anyway,
paper App. C, and SmallHead replaces G's fc; the slice keeps the rest of G usable.)
D's fc has one output per class ([nlabels, 16 nf * 16]) and the authors pick the row of
the label; ours has one output: `discriminator_class=k` keeps row k, the default None
re-initialises it (seed `seed`), as the authors do. G's fc output and D's fc input are
channel-major in both codes, so fc needs no reordering.

Outputs. `convert_file` writes a flat .npz of the networks' params (`load_npz`).
`convert_file_to_workdir` writes a checkpoint workdir that a finetune reads as
`--config.init_checkpoint=DIR` (as `convert.stylegan2_ada` does for StyleGAN2): config =
the given base config (configs/ps_pretrain.py:resnet) with model 'resnet' and the
inferred resolution, resnet.nf and resnet.z_dim; state = {'step': 0, 'g_params': G,
'g_ema_params': the checkpoint's 'generator_test' (GAN_stability's EMA copy, which AdaFM
transfers) or G when absent, 'g_state': {}, 'd_params': D, 'd_state': {}}. A file
without D gets a freshly initialised one (seed `seed`), with a warning: AdaFM's recipe
freezes D's groups nearest the image, which would then stay random.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from gantransfer_jax import checkpoints
from gantransfer_jax.metrics import torch_pickle
from gantransfer_jax.models import resnet_gan

PyTree = Any
StateDict = dict[str, np.ndarray]

GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
EMA_GENERATOR = "generator_test"  # GAN_stability's name for its averaged G.
_DATA_PARALLEL_PREFIX = "module."
_EMBEDDING = "embedding.weight"
_MAX_LISTED = 20


class LayoutError(ValueError):
  """The file is not a supported GAN_stability ResNet checkpoint; the message says why."""


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The fields that fix our ResNetGenerator / ResNetDiscriminator shapes."""

  resolution: int
  nf: int
  z_dim: int

  def generator(self) -> resnet_gan.ResNetGenerator:
    return resnet_gan.ResNetGenerator(self.resolution, z_dim=self.z_dim, nf=self.nf)

  def discriminator(self) -> resnet_gan.ResNetDiscriminator:
    return resnet_gan.ResNetDiscriminator(self.resolution, nf=self.nf)


# ---- Reading the authors' files -----------------------------------------------------------


def _strip_data_parallel(state_dict: StateDict) -> StateDict:
  return {k.removeprefix(_DATA_PARALLEL_PREFIX): v for k, v in state_dict.items()}


def _network_of_bare(state_dict: StateDict) -> str:
  weight = state_dict.get("conv_img.weight")
  if weight is None or weight.ndim != 4 or 3 not in weight.shape[:2]:
    found = ", ".join(sorted(state_dict)[:_MAX_LISTED]) or "no tensors"
    raise LayoutError(
        "not a GAN_stability ResNet checkpoint: expected {'generator': ..., "
        "'discriminator': ...} or a state dict with 'conv_img.weight' [3, nf, 3, 3] (G) or "
        f"[nf, 3, 3, 3] (D); found: {found}")
  return GENERATOR if weight.shape[0] == 3 else DISCRIMINATOR


def _by_top_level(arrays: StateDict) -> dict[str, StateDict]:
  by_top: dict[str, StateDict] = {}
  for key, array in arrays.items():
    top, _, name = key.partition(".")
    by_top.setdefault(top, {})[name] = array
  return by_top


def split_networks(arrays: StateDict, generator_key: str = GENERATOR) -> dict[str, StateDict]:
  """{'generator', 'discriminator'} state dicts (either may be absent) from a flat dict."""
  by_top = _by_top_level(arrays)
  if generator_key in by_top or DISCRIMINATOR in by_top:
    networks = {GENERATOR: by_top.get(generator_key), DISCRIMINATOR: by_top.get(DISCRIMINATOR)}
    return {k: _strip_data_parallel(v) for k, v in networks.items() if v}
  bare = _strip_data_parallel(arrays)
  return {_network_of_bare(bare): bare}


def ema_generator(arrays: StateDict) -> StateDict | None:
  """The checkpoint's 'generator_test' state dict (GAN_stability's EMA G), or None."""
  found = _by_top_level(arrays).get(EMA_GENERATOR)
  return _strip_data_parallel(found) if found else None


def _load_arrays(source: torch_pickle.PathOrFile) -> StateDict:
  return torch_pickle.flatten_arrays(torch_pickle.load(source))


def _require_generator(networks: dict[str, StateDict], generator_key: str) -> None:
  if GENERATOR not in networks:
    raise LayoutError(f"the file holds no generator (looked for '{generator_key}.*' keys or "
                      "a bare G state dict)")


def read_networks(source: torch_pickle.PathOrFile,
                  generator_key: str = GENERATOR) -> dict[str, StateDict]:
  """The authors' G (required) and D (optional) state dicts, as numpy arrays."""
  networks = split_networks(_load_arrays(source), generator_key)
  _require_generator(networks, generator_key)
  return networks


def infer_architecture(generator: Mapping[str, np.ndarray]) -> Architecture:
  """Resolution (from the number of groups), nf and z_dim, read off G's tensors."""
  groups = sorted({int(m.group(1)) for key in generator
                   if (m := re.match(r"resnet_(\d+)\.", key))})
  if not groups or groups != list(range(len(groups))):
    raise LayoutError(f"expected generator groups resnet_0 ... resnet_<n-1>, found {groups}")
  for key in ("conv_img.weight", "fc.weight"):
    if key not in generator:
      raise LayoutError(f"cannot infer the architecture: the generator has no '{key}'")
  embed_size = generator[_EMBEDDING].shape[1] if _EMBEDDING in generator else 0
  z_dim = generator["fc.weight"].shape[1] - embed_size
  return Architecture(resolution=resnet_gan.MIN_RESOLUTION << (len(groups) - 1),
                      nf=generator["conv_img.weight"].shape[1], z_dim=z_dim)


# ---- The layout rule ----------------------------------------------------------------------


def official_name(path: tuple[str, ...]) -> str:
  """The authors' key of one of our params: ('resnet_2', '0', 'conv_0', 'kernel') ->
  'resnet_2.0.conv_0.weight'."""
  *modules, leaf = path
  return ".".join([*modules, "weight" if leaf == "kernel" else leaf])


def to_flax(array: np.ndarray) -> np.ndarray:
  """OIHW -> HWIO, [out, in] -> [in, out]; vectors as is; as float32."""
  array = np.asarray(array, np.float32)
  axes = {4: (2, 3, 1, 0), 2: (1, 0)}.get(array.ndim)
  return array if axes is None else np.ascontiguousarray(array.transpose(axes))


def to_official(array: np.ndarray) -> np.ndarray:
  """The inverse of `to_flax`."""
  array = np.asarray(array)
  axes = {4: (3, 2, 0, 1), 2: (1, 0)}.get(array.ndim)
  return array if axes is None else np.ascontiguousarray(array.transpose(axes))


def export_network(params: PyTree) -> StateDict:
  """Our params of one network -> the authors' state dict (unconditional: no embedding)."""
  return {official_name(path): to_official(np.asarray(value))
          for path, value in traverse_util.flatten_dict(params).items()}


# ---- Conversion ---------------------------------------------------------------------------


def expected_params(architecture: Architecture) -> dict[str, PyTree]:
  """{'generator', 'discriminator'}: ShapeDtypeStructs of our params (no compute)."""
  z = jnp.zeros((1, architecture.z_dim), jnp.float32)
  images = jnp.zeros((1, architecture.resolution, architecture.resolution, 3), jnp.float32)
  key = jax.random.key(0)
  return {GENERATOR: jax.eval_shape(architecture.generator().init, key, z)["params"],
          DISCRIMINATOR: jax.eval_shape(architecture.discriminator().init, key, images)["params"]}


def _conditional_fc(official: StateDict, network: str, architecture: Architecture,
                    discriminator_class: int | None, seed: int) -> dict[str, np.ndarray]:
  """Our fc {'kernel', 'bias'} from the authors' class-conditional fc (module docstring)."""
  weight, bias = official["fc.weight"], official["fc.bias"]
  if network == GENERATOR:
    return {"kernel": to_flax(weight[:, :architecture.z_dim]), "bias": to_flax(bias)}
  if discriminator_class is None:
    fresh = nn.Dense(1).init(jax.random.key(seed), jnp.zeros((1, weight.shape[1])))["params"]
    return jax.tree.map(np.asarray, fresh)
  if not 0 <= discriminator_class < weight.shape[0]:
    raise LayoutError(f"discriminator_class {discriminator_class} is out of range: D's fc has "
                      f"{weight.shape[0]} class outputs")
  rows = slice(discriminator_class, discriminator_class + 1)
  return {"kernel": to_flax(weight[rows]), "bias": to_flax(bias[rows])}


def convert_network(official: StateDict, network: str, architecture: Architecture, *,
                    discriminator_class: int | None = None, seed: int = 0) -> PyTree:
  """Our params of `network` ('generator' or 'discriminator') from the authors' state dict.

  Raises:
    LayoutError: listing every missing, unexpected and misshapen tensor.
  """
  expected = traverse_util.flatten_dict(expected_params(architecture)[network])
  problems = []
  converted = {}
  for path, spec in expected.items():
    name = official_name(path)
    if name not in official:
      problems.append(f"missing {network}.{name}")
    elif path[0] != "fc":
      converted[path] = to_flax(official[name])
  if not problems:
    fc = _conditional_fc(official, network, architecture, discriminator_class, seed)
    converted.update({("fc", leaf): value for leaf, value in fc.items()})
  for path, array in converted.items():
    if array.shape != expected[path].shape:
      problems.append(f"wrong shape {network}.{official_name(path)}: converts to "
                      f"{array.shape}, our {'/'.join(path)} is {expected[path].shape}")
  known = {official_name(path) for path in expected} | {_EMBEDDING}
  problems.extend(f"unexpected {network}.{name}" for name in sorted(official)
                  if name not in known)
  if problems:
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise LayoutError(
        f"the {network} does not fit a GAN_stability ResNet with {architecture} "
        "(groups resnet_<g>.<b>.conv_{0,1,s}, conv_img, fc):\n  "
        + "\n  ".join(problems[:_MAX_LISTED]) + more)
  return traverse_util.unflatten_dict(converted)


def convert(networks: Mapping[str, StateDict], *, discriminator_class: int | None = None,
            seed: int = 0) -> tuple[dict[str, PyTree], Architecture]:
  """({'generator': params, 'discriminator': params if present}, architecture)."""
  architecture = infer_architecture(networks[GENERATOR])
  params = {name: convert_network(state_dict, name, architecture,
                                  discriminator_class=discriminator_class, seed=seed)
            for name, state_dict in networks.items()}
  return params, architecture


# ---- Files --------------------------------------------------------------------------------


def save_npz(path: str | os.PathLike, params: Mapping[str, PyTree],
             architecture: Architecture) -> None:
  """Flat npz: '<network>/params/<module path>' arrays and 'architecture/<field>' ints."""
  arrays = {f"{network}/params/{'/'.join(p)}": np.asarray(v)
            for network, tree in params.items()
            for p, v in traverse_util.flatten_dict(tree).items()}
  arrays.update({f"architecture/{k}": np.asarray(v)
                 for k, v in dataclasses.asdict(architecture).items()})
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> tuple[dict[str, PyTree], Architecture]:
  """The inverse of `save_npz`: ({network: {'params': ...}}, architecture)."""
  with np.load(path) as data:
    flat = {tuple(key.split("/")): data[key] for key in data.files}
  fields = {path[1]: int(v) for path, v in flat.items() if path[0] == "architecture"}
  variables = traverse_util.unflatten_dict(
      {path: v for path, v in flat.items() if path[0] != "architecture"})
  return variables, Architecture(**fields)


def convert_file(source: str | os.PathLike, out: str | os.PathLike, *,
                 generator_key: str = GENERATOR, discriminator_class: int | None = None,
                 seed: int = 0) -> Architecture:
  """Reads the authors' checkpoint `source`, converts it, writes flax variables to `out`."""
  params, architecture = convert(read_networks(source, generator_key),
                                 discriminator_class=discriminator_class, seed=seed)
  save_npz(out, params, architecture)
  return architecture


# ---- Checkpoint workdirs ------------------------------------------------------------------


def model_config(base_config: ml_collections.ConfigDict, architecture: Architecture, *,
                 source: str = "") -> ml_collections.ConfigDict:
  """`base_config` (configs/ps_pretrain.py:resnet) with model 'resnet' and `architecture`."""
  config = ml_collections.ConfigDict(base_config.to_dict())
  config.model = "resnet"
  config.resolution = architecture.resolution
  if config.get("resnet") is None:
    config.resnet = ml_collections.ConfigDict()
  config.resnet.update(nf=architecture.nf, z_dim=architecture.z_dim)
  config.converted_from = source
  return config


@functools.cache
def _compiled_discriminator_init(architecture: Architecture):
  # One compiled init, reused (op by op, each of D's initialisers compiles on its own).
  return jax.jit(architecture.discriminator().init)


def initial_discriminator(architecture: Architecture, seed: int = 0) -> PyTree:
  """Freshly initialised D params (numpy), for files that hold no D.

  The key is an 'rbg' key: XLA's RngBitGenerator compiles in seconds on CPU, where
  threefry's per-parameter hashes take ~20 s; a fresh D is reproducible per seed on one
  platform, and needs no more.
  """
  images = jnp.zeros((1, architecture.resolution, architecture.resolution, 3), jnp.float32)
  key = jax.random.key(seed, impl="rbg")
  params = _compiled_discriminator_init(architecture)(key, images)["params"]
  return jax.tree.map(np.asarray, params)


def convert_checkpoint(networks: Mapping[str, StateDict], base_config: ml_collections.ConfigDict,
                       *, ema: StateDict | None = None, source: str = "",
                       discriminator_class: int | None = None,
                       seed: int = 0) -> tuple[ml_collections.ConfigDict, dict[str, PyTree]]:
  """(config, checkpoint state) of the authors' networks (module docstring, Outputs).

  Args:
    networks: from `read_networks`: G, and D when the file has one (else a fresh D).
    base_config: the config to complete (configs/ps_pretrain.py:resnet).
    ema: the EMA G's state dict (`ema_generator`); None: G serves as G_ema too.
    source: recorded as `config.converted_from`.
    discriminator_class, seed: as for `convert`; `seed` also initialises a missing D.
  """
  params, architecture = convert(networks, discriminator_class=discriminator_class, seed=seed)
  g_ema = params[GENERATOR]
  if ema is not None:
    try:
      g_ema = convert_network(ema, GENERATOR, architecture, seed=seed)
    except LayoutError as error:
      raise LayoutError(f"'{EMA_GENERATOR}' (the EMA generator): {error}") from None
  d_params = params.get(DISCRIMINATOR)
  if d_params is None:
    warnings.warn(f"the file holds no discriminator: D is initialised from seed {seed}, so a "
                  "finetune that freezes D's groups (adafm.general_d) freezes random weights",
                  stacklevel=2)
    d_params = initial_discriminator(architecture, seed)
  state = {
      "step": np.zeros((), np.int32),
      "g_params": params[GENERATOR],
      "g_ema_params": g_ema,
      "g_state": {},
      "d_params": d_params,
      "d_state": {},
  }
  return model_config(base_config, architecture, source=source), state


def convert_file_to_workdir(source: str | os.PathLike, workdir: str | os.PathLike,
                            base_config: ml_collections.ConfigDict, *,
                            generator_key: str = GENERATOR,
                            discriminator_class: int | None = None,
                            seed: int = 0) -> ml_collections.ConfigDict:
  """Converts the authors' checkpoint into checkpoint 0 of a new workdir; returns its config.

  Raises:
    FileExistsError: `workdir` already holds checkpoints (nothing is written).
    LayoutError: the file does not fit (the message names `source`).
  """
  source = os.path.abspath(os.fspath(source))
  try:
    arrays = _load_arrays(source)
    networks = split_networks(arrays, generator_key)
    _require_generator(networks, generator_key)
    config, state = convert_checkpoint(networks, base_config, ema=ema_generator(arrays),
                                       source=source, discriminator_class=discriminator_class,
                                       seed=seed)
  except LayoutError as error:
    raise LayoutError(f"{source}: {error}") from None
  checkpoints.save_new_workdir(os.fspath(workdir), state, config)
  return config
