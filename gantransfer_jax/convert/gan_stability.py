"""GAN_stability ResNet GAN checkpoints (AdaFM's ImageNet source) -> our flax variables, torch-free.

Reads (through the restricted unpickler of `gantransfer_jax.pretrained.torch_pickle`) the
authors' `resnet2` networks (LMescheder/GAN_stability, `gan_training/models/resnet2.py`,
the family of `configs/imagenet.yaml` and of the published `imagenet-8c505f47.pt`), in
any `torch.save` format or as a plain pickle of numpy arrays, in both forms they exist in:

* the training checkpoint that GAN_stability's `CheckpointIO` writes: {'generator',
  'discriminator', 'generator_test' (the EMA G), 'g_optimizer', 'd_optimizer', 'it'},
  every network a DataParallel state dict (keys prefixed 'module.'); the optimizer
  states and the counter are ignored;
* a bare G or D state dict, as the AdaFM authors' `download_pretrainedGAN.py` saves them
  (`generator.module.state_dict()`: no 'module.' prefix; G and D in two files). The two
  are told apart by `conv_img`: G's maps nf -> 3 channels, D's 3 -> nf.

Which G. AdaFM transfers the authors' 'generator' entry, the trained G, not the EMA copy
'generator_test': `download_pretrainedGAN.py` loads the checkpoint and saves
`generator.module.state_dict()` as the source model (paper 002 says only "the pretrained
GP-GAN model"). So by default the selected entry 'generator' becomes both our G and our
G_ema (AdaFM builds its frozen general part from G_ema); `generator_key='generator_test'`
selects the EMA G instead. What went where is recorded in the converted config
(`converted_entries`) and printed by `launch/convert_gan_stability.py`.

The architecture (nf, z_dim; the resolution from the number of groups) is read off G's
tensors; every converted array is checked against `jax.eval_shape` of our init, and
anything else (missing, unexpected or misshapen tensors) fails with a `LayoutError`.
resnet2 always has six groups and a first feature map of size // 32, which our
ResNetGenerator (first map 4 x 4) matches at size 128 only: other sizes fail, naming the
size their fc implies. GAN_stability's other families ('resnet': blocks in a Sequential,
`resnet.<i>.conv_0`; 'resnet3', 'resnet4') fail as not resnet2.

Name mapping (g a group 0..n-1, b a block 0/1, c in conv_0, conv_1, conv_s):

| authors' key (after 'module.') | ours (params/...)          | layout          |
| ------------------------------ | -------------------------- | --------------- |
| resnet_{g}_{b}.{c}.weight      | resnet_{g}/{b}/{c}/kernel  | OIHW -> HWIO    |
| resnet_{g}_{b}.{c}.bias        | resnet_{g}/{b}/{c}/bias    | as is           |
| conv_img.weight / .bias        | conv_img/kernel / bias     | OIHW -> HWIO    |
| fc.weight / fc.bias            | fc/kernel / fc/bias        | see below       |
| embedding.weight (G)           | folded into fc or dropped  |                 |

The class condition. The authors' G computes `fc(cat([z, e_y / |e_y|]))`: z comes first,
so fc.weight is [16 nf * 16, z_dim + embed_size] and its first z_dim columns act on z.
Ours is unconditional: kernel = weight[:, :z_dim].T, and the bias is either fc.bias
(`generator_class=None`, the default: the label term is dropped) or
`fc.bias + weight[:, z_dim:] @ (e_k / |e_k|)` (`generator_class=k`: the label term of
class k is a constant, so the converted G equals the authors' G(z, k)). D's fc has one
output per class ([nlabels, 16 nf * 16]) and the authors pick the row of the label;
ours has one output: `discriminator_class=k` keeps row k (our D equals the authors'
D(x, k)), the default None re-initialises it (seed `seed`). The class-free default is
the AdaFM paper's choice (App. C: both fc layers are re-initialised, as the source's
labels mean nothing for the target; SmallHead replaces G's fc anyway). G's fc output and
D's fc input are channel-major in both codes, so fc needs no reordering.

Outputs. `convert_file` writes a flat .npz of the networks' params (`load_npz`).
`convert_file_to_workdir` writes a checkpoint workdir that a finetune reads as
`--config.init_checkpoint=DIR`: config = the given base config
(configs/ps_pretrain.py:resnet) with model 'resnet' and the inferred resolution,
resnet.nf and resnet.z_dim; state = {'step': 0, 'g_params': G, 'g_ema_params': G,
'g_state': {}, 'd_params': D, 'd_state': {}}. A file without D (a bare G) gets the D of
`discriminator_source` (AdaFM's second file) or a freshly initialised one (seed `seed`),
with a warning: AdaFM's recipe freezes D's groups nearest the image, which would then
stay random.
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
from gantransfer_jax import errors
from gantransfer_jax import progress
from gantransfer_jax.models import resnet_gan
from gantransfer_jax.pretrained import torch_pickle

PyTree = Any
StateDict = dict[str, np.ndarray]

GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
EMA_GENERATOR = "generator_test"  # GAN_stability's name for its averaged G.
NETWORK_ENTRIES = (GENERATOR, DISCRIMINATOR, EMA_GENERATOR)
_DATA_PARALLEL_PREFIX = "module."
_EMBEDDING = "embedding.weight"
_BLOCK = re.compile(r"resnet_(\d+)_(\d+)\.")
_MAX_LISTED = 20


class LayoutError(errors.UserError, ValueError):
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


def _listed(names) -> str:
  names = sorted(names)
  more = f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else ""
  return (", ".join(names[:_MAX_LISTED]) + more) if names else "no tensors"


def _network_of_bare(state_dict: StateDict) -> str:
  weight = state_dict.get("conv_img.weight")
  if weight is None or weight.ndim != 4 or 3 not in weight.shape[:2]:
    raise LayoutError(
        "not a GAN_stability ResNet checkpoint: expected {'generator': ..., "
        "'discriminator': ...} or a state dict with 'conv_img.weight' [3, nf, 3, 3] (G) or "
        f"[nf, 3, 3, 3] (D); found: {_listed(state_dict)}")
  return GENERATOR if weight.shape[0] == 3 else DISCRIMINATOR


def split_entries(arrays: StateDict) -> dict[str, StateDict]:
  """The networks of a flat {key: array} dict, by entry, 'module.' stripped.

  A training checkpoint gives its 'generator', 'discriminator' and 'generator_test'
  entries (those present); a bare state dict gives {'generator': ...} or
  {'discriminator': ...}.
  """
  by_top: dict[str, StateDict] = {}
  for key, array in arrays.items():
    top, _, name = key.partition(".")
    by_top.setdefault(top, {})[name] = array
  if any(by_top.get(entry) for entry in NETWORK_ENTRIES):
    return {entry: _strip_data_parallel(by_top[entry]) for entry in NETWORK_ENTRIES
            if by_top.get(entry)}
  bare = _strip_data_parallel(arrays)
  return {_network_of_bare(bare): bare}


def read_entries(source: torch_pickle.PathOrFile) -> dict[str, StateDict]:
  """`split_entries` of a file (path, bytes or binary file object)."""
  try:
    data = torch_pickle.load(source)
  except torch_pickle.TorchPickleError as error:
    raise LayoutError(f"not a GAN_stability checkpoint: {error}") from None
  return split_entries(torch_pickle.flatten_arrays(data))


def select_networks(entries: Mapping[str, StateDict],
                    generator_key: str = GENERATOR) -> dict[str, StateDict]:
  """{'generator': the `generator_key` entry, 'discriminator': D if present}."""
  if generator_key not in NETWORK_ENTRIES or generator_key == DISCRIMINATOR:
    raise LayoutError(f"generator_key must be '{GENERATOR}' or '{EMA_GENERATOR}', "
                      f"got {generator_key!r}")
  if generator_key not in entries:
    raise LayoutError(f"the file holds no '{generator_key}' network (it holds: "
                      f"{', '.join(sorted(entries))})")
  networks = {GENERATOR: entries[generator_key]}
  if DISCRIMINATOR in entries:
    networks[DISCRIMINATOR] = entries[DISCRIMINATOR]
  return networks


def read_networks(source: torch_pickle.PathOrFile,
                  generator_key: str = GENERATOR) -> dict[str, StateDict]:
  """The authors' G (the `generator_key` entry) and D (if present), as numpy arrays."""
  return select_networks(read_entries(source), generator_key)


def infer_architecture(generator: Mapping[str, np.ndarray]) -> Architecture:
  """Resolution (from the number of groups), nf and z_dim, read off G's tensors."""
  blocks = {(int(m.group(1)), int(m.group(2))) for key in generator
            if (m := _BLOCK.match(key))}
  groups = sorted({group for group, _ in blocks})
  if not groups or groups != list(range(len(groups))):
    hint = (" (GAN_stability's 'resnet' family, blocks resnet.<i>, is not supported)"
            if any(key.startswith("resnet.") for key in generator) else "")
    raise LayoutError("not a GAN_stability resnet2 generator: expected blocks "
                      f"resnet_<group>_<block> for groups 0 ... n-1, found groups {groups}; "
                      f"the keys are: {_listed(generator)}{hint}")
  if blocks != {(group, block) for group in groups for block in (0, 1)}:
    # resnet3 (GAN_stability's LSUN models) has one block per group, 7 x 7 image convs.
    raise LayoutError("not a GAN_stability resnet2 generator: expected blocks "
                      f"resnet_<group>_0 and _1 in every group, found {sorted(blocks)} "
                      "(GAN_stability's 'resnet3' family, one block per group, is not "
                      "supported)")
  for key in ("conv_img.weight", "fc.weight"):
    if key not in generator:
      raise LayoutError(f"cannot infer the architecture: the generator has no '{key}'")
  embed_size = generator[_EMBEDDING].shape[1] if _EMBEDDING in generator else 0
  architecture = Architecture(resolution=resnet_gan.MIN_RESOLUTION << (len(groups) - 1),
                              nf=generator["conv_img.weight"].shape[1],
                              z_dim=generator["fc.weight"].shape[1] - embed_size)
  width = resnet_gan.generator_widths(architecture.resolution, architecture.nf)[0]
  fc_out = generator["fc.weight"].shape[0]
  if fc_out != width * resnet_gan.MIN_RESOLUTION ** 2:
    # resnet2's first map is size // 32; ours is 4 x 4 (size 128 for six groups).
    side = int(round(np.sqrt(fc_out / width)))
    what = (f"{width} x {side} x {side}: a resnet2 of size {32 * side}"
            if width * side * side == fc_out else f"not {width} x s x s: not a resnet2")
    raise LayoutError(
        f"G's fc outputs {fc_out} features, {what}; only size {architecture.resolution} "
        "(first feature map 4 x 4) converts")
  return architecture


# ---- The layout rule ----------------------------------------------------------------------


def official_name(path: tuple[str, ...]) -> str:
  """The authors' key of one of our params: ('resnet_2', '0', 'conv_0', 'kernel') ->
  'resnet_2_0.conv_0.weight'."""
  *modules, leaf = path
  if modules[0].startswith("resnet_") and len(modules) > 1:
    modules = [f"{modules[0]}_{modules[1]}", *modules[2:]]
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


def _check_class(index: int, count: int, what: str) -> None:
  if not 0 <= index < count:
    raise LayoutError(f"{what} {index} is out of range: the file has {count} classes")


def class_bias(official: StateDict, z_dim: int, class_index: int) -> np.ndarray:
  """G's fc bias with class `class_index`'s label term folded in (module docstring)."""
  if _EMBEDDING not in official:
    raise LayoutError("generator_class needs a class-conditional G: the generator has no "
                      f"'{_EMBEDDING}'")
  embedding = official[_EMBEDDING].astype(np.float64)
  _check_class(class_index, embedding.shape[0], "generator_class")
  unit = embedding[class_index] / np.linalg.norm(embedding[class_index])
  weight = official["fc.weight"].astype(np.float64)
  return official["fc.bias"].astype(np.float64) + weight[:, z_dim:] @ unit


def _converted_fc(official: StateDict, network: str, architecture: Architecture,
                  class_index: int | None, seed: int) -> dict[str, np.ndarray]:
  """Our fc {'kernel', 'bias'} from the authors' class-conditional fc (module docstring)."""
  weight, bias = official["fc.weight"], official["fc.bias"]
  if network == GENERATOR:
    if class_index is not None:
      bias = class_bias(official, architecture.z_dim, class_index)
    return {"kernel": to_flax(weight[:, :architecture.z_dim]), "bias": to_flax(bias)}
  if class_index is None:
    fresh = nn.Dense(1).init(jax.random.key(seed), jnp.zeros((1, weight.shape[1])))["params"]
    return jax.tree.map(np.asarray, fresh)
  _check_class(class_index, weight.shape[0], "discriminator_class")
  rows = slice(class_index, class_index + 1)
  return {"kernel": to_flax(weight[rows]), "bias": to_flax(bias[rows])}


def convert_network(official: StateDict, network: str, architecture: Architecture, *,
                    class_index: int | None = None, seed: int = 0) -> PyTree:
  """Our params of `network` ('generator' or 'discriminator') from the authors' state dict.

  Args:
    class_index: G: the class folded into fc's bias; D: the fc row kept (None: the
      label term dropped / a fresh fc; module docstring).

  Raises:
    LayoutError: listing every missing, unexpected and misshapen tensor.
  """
  expected = traverse_util.flatten_dict(expected_params(architecture)[network])
  problems = []
  converted = {}
  for path in expected:
    name = official_name(path)
    if name not in official:
      problems.append(f"missing {network}.{name}")
    elif path[0] != "fc":
      converted[path] = to_flax(official[name])
  if not problems:
    fc = _converted_fc(official, network, architecture, class_index, seed)
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
        f"the {network} does not fit a GAN_stability resnet2 with {architecture} "
        "(blocks resnet_<g>_<b>.conv_{0,1,s}, conv_img, fc):\n  "
        + "\n  ".join(problems[:_MAX_LISTED]) + more)
  return traverse_util.unflatten_dict(converted)


def convert(networks: Mapping[str, StateDict], *, generator_class: int | None = None,
            discriminator_class: int | None = None,
            seed: int = 0) -> tuple[dict[str, PyTree], Architecture]:
  """({'generator': params, 'discriminator': params if present}, architecture)."""
  architecture = infer_architecture(networks[GENERATOR])
  classes = {GENERATOR: generator_class, DISCRIMINATOR: discriminator_class}
  params = {name: convert_network(state_dict, name, architecture, class_index=classes[name],
                                  seed=seed)
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
                 generator_key: str = GENERATOR, generator_class: int | None = None,
                 discriminator_class: int | None = None, seed: int = 0) -> Architecture:
  """Reads the authors' checkpoint `source`, converts it, writes flax variables to `out`."""
  with progress.phase(f"reading {source}"):
    networks = read_networks(source, generator_key)
  with progress.phase("converting generator and discriminator"):
    params, architecture = convert(networks, generator_class=generator_class,
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


def _entry_notes(generator_key: str, generator_class: int | None,
                 discriminator: str | None, discriminator_class: int | None,
                 seed: int) -> dict[str, str]:
  """`config.converted_entries`: where each converted network came from, in words."""
  kind = "the EMA G" if generator_key == EMA_GENERATOR else "the trained G, which AdaFM transfers"
  if generator_class is None:
    g_fc = "label term dropped (class-free)"
  else:
    g_fc = f"class {generator_class}'s normalised embedding folded into the bias: G(z, {generator_class})"
  if discriminator is None:
    d = f"freshly initialised (seed {seed}): the file holds no discriminator"
  elif discriminator_class is None:
    d = f"'{discriminator}', fc re-initialised (seed {seed})"
  else:
    d = f"'{discriminator}', fc row {discriminator_class}: D(x, {discriminator_class})"
  return {"g_params": f"'{generator_key}' ({kind})", "g_ema_params": f"'{generator_key}'",
          "g_fc": g_fc, "d_params": d}


def convert_checkpoint(networks: Mapping[str, StateDict], base_config: ml_collections.ConfigDict,
                       *, source: str = "", generator_key: str = GENERATOR,
                       discriminator_entry: str = DISCRIMINATOR,
                       generator_class: int | None = None,
                       discriminator_class: int | None = None,
                       seed: int = 0) -> tuple[ml_collections.ConfigDict, dict[str, PyTree]]:
  """(config, checkpoint state) of the authors' networks (module docstring, Outputs).

  Args:
    networks: from `read_networks`: G, and D when the file has one (else a fresh D).
    base_config: the config to complete (configs/ps_pretrain.py:resnet).
    source: recorded as `config.converted_from`.
    generator_key, discriminator_entry: the entries `networks` came from (recorded in
      `config.converted_entries`).
    generator_class, discriminator_class, seed: as for `convert`; `seed` also
      initialises a missing D.
  """
  params, architecture = convert(networks, generator_class=generator_class,
                                 discriminator_class=discriminator_class, seed=seed)
  d_params = params.get(DISCRIMINATOR)
  if d_params is None:
    warnings.warn(f"the file holds no discriminator: D is initialised from seed {seed}, so a "
                  "finetune that freezes D's groups (adafm.general_d) freezes random weights",
                  stacklevel=2)
    d_params = initial_discriminator(architecture, seed)
  state = {
      "step": np.zeros((), np.int32),
      "g_params": params[GENERATOR],
      "g_ema_params": params[GENERATOR],
      "g_state": {},
      "d_params": d_params,
      "d_state": {},
  }
  config = model_config(base_config, architecture, source=source)
  config.converted_entries = _entry_notes(
      generator_key, generator_class,
      discriminator_entry if DISCRIMINATOR in params else None, discriminator_class, seed)
  return config, state


def _read_discriminator(source: str) -> StateDict:
  entries = read_entries(source)
  if DISCRIMINATOR not in entries:
    raise LayoutError(f"{source} holds no discriminator (it holds: "
                      f"{', '.join(sorted(entries))})")
  return entries[DISCRIMINATOR]


def convert_file_to_workdir(source: str | os.PathLike, workdir: str | os.PathLike,
                            base_config: ml_collections.ConfigDict, *,
                            generator_key: str = GENERATOR,
                            discriminator_source: str | os.PathLike | None = None,
                            generator_class: int | None = None,
                            discriminator_class: int | None = None,
                            seed: int = 0) -> ml_collections.ConfigDict:
  """Converts the authors' checkpoint into checkpoint 0 of a new workdir; returns its config.

  Args:
    discriminator_source: a second file whose D to take (AdaFM's
      `ImageNetPre_discriminator` beside a bare G); None: `source`'s D, if any.

  Raises:
    FileExistsError: `workdir` already holds checkpoints (nothing is written).
    LayoutError: the file does not fit (the message names the file).
  """
  source = os.path.abspath(os.fspath(source))
  current = source
  try:
    networks = read_networks(source, generator_key)
    discriminator_entry = DISCRIMINATOR
    if discriminator_source is not None:
      current = os.path.abspath(os.fspath(discriminator_source))
      networks[DISCRIMINATOR] = _read_discriminator(current)
      discriminator_entry = f"{current}: {DISCRIMINATOR}"
      current = source
    config, state = convert_checkpoint(
        networks, base_config, source=source, generator_key=generator_key,
        discriminator_entry=discriminator_entry, generator_class=generator_class,
        discriminator_class=discriminator_class, seed=seed)
  except LayoutError as error:
    raise LayoutError(f"{current}: {error}") from None
  checkpoints.save_new_workdir(os.fspath(workdir), state, config)
  return config


def summary(config: ml_collections.ConfigDict) -> str:
  """What a converted workdir holds and where each network came from, for the log."""
  lines = [f"model {config.model}, {config.resolution}x{config.resolution}, "
           f"nf {config.resnet.nf}, z_dim {config.resnet.z_dim}"]
  entries = config.get("converted_entries") or {}
  lines += [f"  {name} <- {note}" for name, note in entries.items()]
  return "\n".join(lines)
