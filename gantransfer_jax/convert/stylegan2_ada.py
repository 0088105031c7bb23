"""Official StyleGAN2-ADA (PyTorch) checkpoints -> this package's Flax G, G_ema and D.

Reads, without torch and without the authors' `dnnlib` / `torch_utils` modules (through
the restricted unpickler of `gantransfer_jax.pretrained.torch_pickle`):

* network pickles (`network-snapshot-*.pkl`): a pickle dict whose 'G', 'D' and 'G_ema'
  are `torch_utils.persistence` objects holding the module tree and its tensors (other
  entries, 'augment_pipe' and 'training_set_kwargs', are ignored);
* state dicts (`.pt` / `.pth` in any `torch.save` format, or a plain pickle of numpy
  arrays), flat with network-prefixed keys ('G_ema.synthesis.b4.conv1.weight') or nested
  as {'G': state_dict, 'D': state_dict, 'G_ema': state_dict}.

'G_ema' and 'D' are required; a file without 'G' uses G_ema for both generators (with a
warning). Only the official defaults are supported: unconditional (c_dim = 0) 'skip'
generator, 'resnet' discriminator, RGB, one minibatch-stddev channel. Anything else fails
with a `LayoutError` that lists the missing, unexpected and misshapen tensors.

The architecture (resolution, z_dim, w_dim, mapping layers, channel_base, channel_max)
is inferred from the tensor shapes unless given; every converted array is then checked
against the shapes of `Generator.init` / `Discriminator.init` of the resulting config.

Two model fields fix no tensor shape but change the function (`RUNTIME_FIELDS`):

* `mbstd_group_size`: D's minibatch-stddev group (official configs: paper256 and
  paper512 use 8, stylegan2 and paper1024 4, cifar 32). A network pickle records it
  (D's MinibatchStdLayer `group_size`, and D's constructor kwargs
  `epilogue_kwargs.mbstd_group_size`); a state dict does not: give it
  (`--mbstd_group_size`), else the base config's 4 is used, with a warning.
* `conv_clamp`: 256 in official runs, None (no clamping) in `--fp32` runs. A network
  pickle records it (G's `synthesis_kwargs.conv_clamp`, D's `conv_clamp`); for a state
  dict it is the base config's 256 unless given.

A value given that contradicts the pickle's record is a `LayoutError` (a finetune may
still set its own `stylegan2.mbstd_group_size`).

Parameter mapping: our paths are `collection/module/.../name`; r is every block
resolution, R the top one, i a mapping layer, j in {0, 1} (b4 has `const` and conv1
only; conv0, the upsampling conv, exists from b8 on).

| official key (G and G_ema)            | ours                                            | layout |
| ------------------------------------- | ----------------------------------------------- | ------ |
| mapping.fc{i}.weight                  | params/mapping/fc{i}/weight                     | T      |
| mapping.fc{i}.bias                    | params/mapping/fc{i}/bias                       |        |
| mapping.w_avg                         | stats/w_avg                                     |        |
| synthesis.b4.const                    | params/synthesis/b4/const                       | CHW    |
| synthesis.b{r}.conv{j}.affine.weight  | params/synthesis/b{r}/conv{j}/affine/weight     | T      |
| synthesis.b{r}.conv{j}.affine.bias    | params/synthesis/b{r}/conv{j}/affine/bias       |        |
| synthesis.b{r}.conv{j}.weight         | params/synthesis/b{r}/conv{j}/weight            | OIHW   |
| synthesis.b{r}.conv{j}.bias           | params/synthesis/b{r}/conv{j}/bias              |        |
| synthesis.b{r}.conv{j}.noise_strength | params/synthesis/b{r}/conv{j}/noise_strength    |        |
| synthesis.b{r}.conv{j}.noise_const    | noise_consts/synthesis/b{r}/conv{j}/noise_const |        |
| synthesis.b{r}.torgb.affine.weight    | params/synthesis/b{r}/torgb/affine/weight       | T      |
| synthesis.b{r}.torgb.affine.bias      | params/synthesis/b{r}/torgb/affine/bias         |        |
| synthesis.b{r}.torgb.weight           | params/synthesis/b{r}/torgb/weight              | OIHW   |
| synthesis.b{r}.torgb.bias             | params/synthesis/b{r}/torgb/bias                |        |

| official key (D)                      | ours                                            | layout |
| ------------------------------------- | ----------------------------------------------- | ------ |
| b{R}.fromrgb.weight                   | params/b{R}/fromrgb/weight                      | OIHW   |
| b{R}.fromrgb.bias                     | params/b{R}/fromrgb/bias                        |        |
| b{r}.conv{j}.weight                   | params/b{r}/conv{j}/weight                      | OIHW   |
| b{r}.conv{j}.bias                     | params/b{r}/conv{j}/bias                        |        |
| b{r}.skip.weight                      | params/b{r}/skip/weight                         | OIHW   |
| b4.conv.weight                        | params/b4/conv/weight                           | OIHW   |
| b4.conv.bias                          | params/b4/conv/bias                             |        |
| b4.fc.weight                          | params/b4/fc/weight                             | T      |
| b4.fc.bias                            | params/b4/fc/bias                               |        |
| b4.out.weight                         | params/b4/out/weight                            | T      |
| b4.out.bias                           | params/b4/out/bias                              |        |

Layouts: T, a 2-D weight [out, in] -> [in, out]; OIHW, a 4-D weight [out, in, kh, kw]
-> [kh, kw, in, out] (`transpose(2, 3, 1, 0)`); CHW, `const` [C, 4, 4] -> [4, 4, C]
(`transpose(1, 2, 0)`); blank, as is. No value is rescaled: both sides store the same
equalized-learning-rate parameters. D's fc needs no reordering of its 16 C inputs
because our epilogue flattens channel-major, as torch's NCHW flatten does.

Checkpoint state (`WORKDIR/checkpoints/0/state`): {'step': 0, 'g_params': G params,
'g_ema_params': G_ema params, 'g_state': {'stats': {'w_avg'}, 'noise_consts': ...} of
G_ema, 'd_params': D params, 'd_state': {}}, the layout of our own runs: the official
`noise_const` buffers are G's state, so sampling with `noise_mode='const'` reproduces the
official network's deterministic images and a finetune starts from them. (Conversions
written before kept them as a separate 'g_noise_consts' entry, which
`checkpoints.restore_params` still reads.) Dropped: every `*.resample_filter` buffer
(fixed FIR taps that our layers rebuild), and G's own w_avg and noise_const (the official
training loop copies G's buffers into G_ema every step, so they equal G_ema's).
`b4.mbstd` holds no tensors.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from gantransfer_jax import builder
from gantransfer_jax import checkpoints
from gantransfer_jax import errors
from gantransfer_jax import progress
from gantransfer_jax.pretrained import torch_pickle

PyTree = Any
StateDict = dict[str, np.ndarray]

NETWORKS = ("G", "D", "G_ema")
REQUIRED_NETWORKS = ("G_ema", "D")
RUNTIME_FIELDS = ("mbstd_group_size", "conv_clamp")
# How `torch_utils.persistence` pickles a network: a call on meta {'state': __dict__, ...}.
_PERSISTENT_OBJECT = "torch_utils.persistence._reconstruct_persistent_obj"
# The official constructors' defaults, for kwargs a pickle's record leaves out.
_OFFICIAL_MBSTD_GROUP_SIZE = 4
_OFFICIAL_CONV_CLAMP = None
# For base configs without the fields: official train.py's values.
_DEFAULTS = {"mbstd_group_size": _OFFICIAL_MBSTD_GROUP_SIZE, "conv_clamp": 256.0}
# Official channel_base values (StyleGAN2-ADA's fmaps 1 and 0.5), preferred when the
# tensors fit several: any fitting value gives the same shapes, these also match the
# official config.
_OFFICIAL_CHANNEL_BASES = (32768, 16384)
_DROPPED_SUFFIX = ".resample_filter"
_MAX_LISTED = 20


class LayoutError(errors.UserError, ValueError):
  """The file is not a supported StyleGAN2-ADA checkpoint; the message says why."""


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The config fields that fix the parameter shapes."""

  resolution: int
  z_dim: int
  w_dim: int
  mapping_layers: int
  channel_base: int
  channel_max: int


# ---- Reading official files -------------------------------------------------------------


def _load(source: torch_pickle.PathOrFile) -> Any:
  try:
    return torch_pickle.load(source)
  except torch_pickle.TorchPickleError as error:
    raise LayoutError(f"not a StyleGAN2-ADA checkpoint: {error} (TensorFlow StyleGAN2 "
                      "pickles: convert them with the official repo's legacy.py "
                      "first)") from None


def read_file(source: torch_pickle.PathOrFile) -> tuple[dict[str, StateDict], dict[str, Any]]:
  """(`read_networks`, `recorded_fields`) of one file, read once."""
  data = _load(source)
  return _networks(data), recorded_fields(data)


def read_networks(source: torch_pickle.PathOrFile) -> dict[str, StateDict]:
  """{'G', 'D', 'G_ema'}: one official state dict (numpy arrays) per network.

  Args:
    source: a network pickle or a state-dict file (module docstring): path, bytes or
      binary file object.

  Raises:
    LayoutError: the file holds no 'G_ema' or no 'D' network.
  """
  return _networks(_load(source))


def _networks(data: Any) -> dict[str, StateDict]:
  by_network: dict[str, StateDict] = {}
  for key, array in torch_pickle.flatten_arrays(data).items():
    network, _, name = key.partition(".")
    by_network.setdefault(network, {})[name] = array
  missing = [name for name in REQUIRED_NETWORKS if not by_network.get(name)]
  if missing:
    found = ", ".join(sorted(by_network)[:_MAX_LISTED]) or "no tensors"
    raise LayoutError(
        f"not a StyleGAN2-ADA checkpoint: no tensors for network(s) {', '.join(missing)}. "
        "Expected a network pickle with 'G', 'D', 'G_ema', a state dict with keys like "
        "'G_ema.synthesis.b4.conv1.weight', or {'G': state_dict, 'D': ..., 'G_ema': ...} "
        "(TensorFlow StyleGAN2 pickles: convert them with the official repo's legacy.py "
        f"first); found top-level names: {found}")
  networks = {name: by_network[name] for name in NETWORKS if by_network.get(name)}
  if "G" not in networks:
    warnings.warn("the file has no 'G': using G_ema for the trained generator too",
                  stacklevel=3)
    networks["G"] = networks["G_ema"]
  return networks


def _persistent_state(obj: Any) -> dict[str, Any]:
  """The module __dict__ a `torch_utils.persistence` object pickled ({} for others)."""
  if (isinstance(obj, torch_pickle.PickledObject) and obj.qualified_name == _PERSISTENT_OBJECT
      and obj.args and isinstance(obj.args[0], Mapping)):
    state = obj.args[0].get("state")
    return state if isinstance(state, Mapping) else {}
  return {}


def _as_dict(value: Any) -> dict[str, Any]:
  """A kwargs record as a dict: train.py's are `dnnlib.EasyDict`s, a dict subclass that
  unpickles here as an inert object holding the items."""
  if isinstance(value, torch_pickle.PickledObject):
    return dict(value.items)
  return dict(value) if isinstance(value, Mapping) else {}


def _submodule(state: Mapping[str, Any], name: str) -> dict[str, Any]:
  return _persistent_state(_as_dict(state.get("_modules")).get(name))


def recorded_fields(data: Any) -> dict[str, Any]:
  """`RUNTIME_FIELDS` a network pickle records (module docstring); {} for state dicts.

  Raises:
    LayoutError: G and D record different conv_clamp values (one field serves both).
  """
  if not isinstance(data, Mapping):
    return {}
  found: dict[str, Any] = {}
  d_state = _persistent_state(data.get("D"))
  if d_state:
    d_kwargs = _as_dict(d_state.get("_init_kwargs"))
    epilogue = _as_dict(d_kwargs.get("epilogue_kwargs"))
    # The layer's own attribute is what ran; the constructor kwargs say the same.
    layer = _submodule(_submodule(d_state, "b4"), "mbstd")
    found["mbstd_group_size"] = layer.get(
        "group_size", epilogue.get("mbstd_group_size", _OFFICIAL_MBSTD_GROUP_SIZE))
  clamps = {}
  if d_state and "_init_kwargs" in d_state:
    clamps["D"] = _as_dict(d_state["_init_kwargs"]).get("conv_clamp", _OFFICIAL_CONV_CLAMP)
  g_state = _persistent_state(data.get("G_ema"))
  if g_state and "_init_kwargs" in g_state:
    synthesis = _as_dict(_as_dict(g_state["_init_kwargs"]).get("synthesis_kwargs"))
    clamps["G_ema"] = synthesis.get("conv_clamp", _OFFICIAL_CONV_CLAMP)
  if len(set(clamps.values())) > 1:
    raise LayoutError(f"G_ema and D record different conv_clamp values {clamps}; one "
                      "value for both networks is supported")
  if clamps:
    clamp = next(iter(clamps.values()))
    found["conv_clamp"] = None if clamp is None else float(clamp)
  return found


def resolve_runtime_fields(base_config: ml_collections.ConfigDict,
                           recorded: Mapping[str, Any],
                           requested: Mapping[str, Any]) -> dict[str, Any]:
  """`RUNTIME_FIELDS`: requested, else recorded by the file, else the base config's.

  Raises:
    LayoutError: a requested value contradicts the file's record.
  """
  resolved = {}
  for field in RUNTIME_FIELDS:
    if field in requested and field in recorded and requested[field] != recorded[field]:
      hint = ("; a finetune may set its own --config.stylegan2.mbstd_group_size"
              if field == "mbstd_group_size" else "")
      raise LayoutError(f"the network pickle records {field} {recorded[field]!r}, the "
                        f"requested {requested[field]!r} contradicts it (drop the "
                        f"option{hint})")
    default = base_config.stylegan2.get(field, _DEFAULTS[field])
    resolved[field] = requested.get(field, recorded.get(field, default))
  if "mbstd_group_size" not in requested and "mbstd_group_size" not in recorded:
    warnings.warn(
        "the file does not record D's minibatch-stddev group size (a state dict): using "
        f"{resolved['mbstd_group_size']}; official paper256 / paper512 models use 8 "
        "(--mbstd_group_size=8), stylegan2 / paper1024 ones 4", stacklevel=2)
  return resolved


# ---- Architecture -----------------------------------------------------------------------


def check_unconditional(networks: Mapping[str, StateDict]) -> None:
  """Raises LayoutError for class-conditional models (c_dim > 0): they are unsupported."""
  conditional = sorted(
      [f"{name}.{key}" for name in ("G", "G_ema") for key in networks.get(name, {})
       if key.startswith("mapping.embed.")]
      + [f"D.{key}" for key in networks.get("D", {}) if key.startswith("mapping.")])
  if conditional:
    raise LayoutError(
        "conditional StyleGAN2-ADA models (c_dim > 0) are not supported: the file has "
        f"label-embedding tensors {', '.join(conditional[:4])}")


def infer_architecture(generator: Mapping[str, np.ndarray]) -> Architecture:
  """Reads resolution, z/w dims, mapping depth and channel settings off G's tensors."""
  def tensor(key):
    if key not in generator:
      raise LayoutError(f"cannot infer the architecture: the generator has no '{key}'")
    return generator[key]

  fc_layers = sorted(int(m.group(1)) for key in generator
                     if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", key)))
  if fc_layers != list(range(len(fc_layers))) or not fc_layers:
    raise LayoutError("cannot infer the mapping network: expected generator tensors "
                      f"mapping.fc0.weight ... mapping.fc<n-1>.weight, found layers {fc_layers}")
  z_dim = tensor("mapping.fc0.weight").shape[1]
  w_dim = tensor(f"mapping.fc{fc_layers[-1]}.weight").shape[0]

  channels = {int(m.group(1)): tensor(key).shape[0] for key in generator
              if (m := re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", key))}
  if not channels:
    raise LayoutError("cannot infer the resolution: the generator has no "
                      "synthesis.b<res>.conv1.weight tensors")
  channel_max = max(channels.values())
  return Architecture(resolution=max(channels), z_dim=z_dim, w_dim=w_dim,
                      mapping_layers=len(fc_layers),
                      channel_base=_infer_channel_base(channels, channel_max),
                      channel_max=channel_max)


def _infer_channel_base(channels: Mapping[int, int], channel_max: int) -> int:
  """A channel_base with min(base // res, channel_max) == channels[res] for every res.

  The first resolution below the cap pins base // res; when none is below it, any base
  >= channel_max * resolution fits. Official values come first.
  """
  candidates = [*_OFFICIAL_CHANNEL_BASES,
                *(res * count for res, count in sorted(channels.items()) if count < channel_max),
                channel_max * max(channels)]
  for base in candidates:
    if all(min(base // res, channel_max) == count for res, count in channels.items()):
      return base
  raise LayoutError(f"synthesis channels per resolution {dict(sorted(channels.items()))} do "
                    "not follow min(channel_base // res, channel_max) for any channel_base")


def model_config(base_config: ml_collections.ConfigDict, architecture: Architecture, *,
                 source: str = "", **runtime_fields: Any) -> ml_collections.ConfigDict:
  """`base_config` (e.g. configs/ps_pretrain.py) with the model fields of `architecture`
  (and `RUNTIME_FIELDS` given as keywords)."""
  config = ml_collections.ConfigDict(base_config.to_dict())
  config.model = "stylegan2"
  config.resolution = architecture.resolution
  fields = dataclasses.asdict(architecture)
  del fields["resolution"]
  config.stylegan2.update(fields)
  for field, value in runtime_fields.items():
    config.stylegan2[field] = value  # Item assignment: None and numbers both fit.
  config.converted_from = source
  return config


def expected_variables(config: ml_collections.ConfigDict) -> dict[str, PyTree]:
  """{'G', 'D'}: the ShapeDtypeStruct variables `init` gives for `config` (no compute)."""
  gan = builder.build_gan(config)
  generator, discriminator = gan.generator, gan.discriminator
  z = jnp.zeros((1, generator.z_dim), jnp.float32)
  images = jnp.zeros((1, config.resolution, config.resolution, 3), jnp.float32)
  rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
  return {"G": jax.eval_shape(generator.init, rngs, z),
          "D": jax.eval_shape(discriminator.init, rngs, images)}


# ---- The layout rule --------------------------------------------------------------------


def official_name(path: tuple[str, ...]) -> str:
  """The official state-dict key of one of our variables; `path` = (collection, *names)."""
  collection, *names = path
  if collection == "stats":  # Our G keeps w_avg at top level; official is mapping.w_avg.
    names = ["mapping", *names]
  return ".".join(names)


def _flax_axes(name: str, ndim: int) -> tuple[int, ...] | None:
  """The transpose taking an official array to ours (None: the layouts agree)."""
  leaf = name.rsplit(".", 1)[-1]
  if leaf == "const" and ndim == 3:
    return (1, 2, 0)      # [C, H, W] -> [H, W, C]
  if leaf == "weight" and ndim == 4:
    return (2, 3, 1, 0)   # OIHW -> HWIO
  if leaf == "weight" and ndim == 2:
    return (1, 0)         # [out, in] -> [in, out]
  return None


def to_flax(name: str, array: np.ndarray) -> np.ndarray:
  """An official tensor in our layout, as float32."""
  array = np.asarray(array, np.float32)
  axes = _flax_axes(name, array.ndim)
  return array if axes is None else np.ascontiguousarray(array.transpose(axes))


def to_official(name: str, array: np.ndarray) -> np.ndarray:
  """One of our arrays in the official layout (the inverse of `to_flax`)."""
  array = np.asarray(array)
  axes = _flax_axes(name, array.ndim)
  return array if axes is None else np.ascontiguousarray(array.transpose(np.argsort(axes)))


def _official_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  axes = _flax_axes(name, len(shape))
  return shape if axes is None else tuple(shape[i] for i in np.argsort(axes))


def export_network(variables: PyTree) -> StateDict:
  """Our variables of one network -> its official state dict (no resample_filter buffers)."""
  flat = traverse_util.flatten_dict(variables)
  return {official_name(path): to_official(official_name(path), np.asarray(value))
          for path, value in flat.items()}


# ---- Conversion -------------------------------------------------------------------------


@dataclasses.dataclass
class _Problems:
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  misshapen: list[str] = dataclasses.field(default_factory=list)

  def message(self, architecture: Architecture) -> str:
    lines = [f"the file does not fit a StyleGAN2-ADA skip generator / resnet discriminator "
             f"with {dataclasses.asdict(architecture)} (only the official defaults convert: "
             "unconditional, RGB, one minibatch-stddev channel)"]
    for title, items in (("missing", self.missing), ("unexpected", self.unexpected),
                         ("wrong shape", self.misshapen)):
      if items:
        more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
        lines.append(f"  {title} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}")
    return "\n".join(lines)

  def __bool__(self) -> bool:
    return bool(self.missing or self.unexpected or self.misshapen)


def _convert_network(network: str, official: StateDict, expected: PyTree,
                     problems: _Problems) -> PyTree:
  """Our variables for `expected`'s structure, from one official state dict."""
  converted = {}
  for path, spec in traverse_util.flatten_dict(expected).items():
    name = official_name(path)
    if name not in official:
      problems.missing.append(f"{network}.{name}")
      continue
    array = to_flax(name, official[name])
    if array.shape != spec.shape:
      problems.misshapen.append(f"{network}.{name} is {tuple(official[name].shape)}, "
                                f"expected {_official_shape(name, spec.shape)}")
    converted[path] = array
  used = {official_name(path) for path in traverse_util.flatten_dict(expected)}
  problems.unexpected.extend(f"{network}.{name}" for name in sorted(official)
                             if name not in used and not name.endswith(_DROPPED_SUFFIX))
  return traverse_util.unflatten_dict(converted)


def convert(networks: Mapping[str, StateDict], base_config: ml_collections.ConfigDict, *,
            source: str = "", recorded: Mapping[str, Any] | None = None,
            runtime_fields: Mapping[str, Any] | None = None,
            **overrides: int | None) -> tuple[ml_collections.ConfigDict, dict[str, PyTree]]:
  """(config, checkpoint state) of official networks (see the module docstring).

  Args:
    networks: from `read_networks`.
    base_config: the config to complete (configs/ps_pretrain.py's defaults).
    source: recorded as `config.converted_from`.
    recorded: `recorded_fields` of the file ({} or None: a state dict).
    runtime_fields: `RUNTIME_FIELDS` values the user gave (module docstring).
    **overrides: `Architecture` fields to use instead of the inferred ones (None: infer).

  Raises:
    LayoutError: a conditional model, tensors that do not fit the architecture, or
      runtime fields that contradict the file.
  """
  check_unconditional(networks)
  architecture = dataclasses.replace(
      infer_architecture(networks["G_ema"]),
      **{key: value for key, value in overrides.items() if value is not None})
  fields = resolve_runtime_fields(base_config, recorded or {}, runtime_fields or {})
  config = model_config(base_config, architecture, source=source, **fields)
  expected = expected_variables(config)
  problems = _Problems()
  g = _convert_network("G", networks["G"], expected["G"], problems)
  g_ema = _convert_network("G_ema", networks["G_ema"], expected["G"], problems)
  d = _convert_network("D", networks["D"], expected["D"], problems)
  if problems:
    raise LayoutError(problems.message(architecture))
  state = {
      "step": np.zeros((), np.int32),
      "g_params": g["params"],
      "g_ema_params": g_ema["params"],
      "g_state": {"stats": g_ema["stats"], "noise_consts": g_ema["noise_consts"]},
      "d_params": d["params"],
      "d_state": {},
  }
  return config, state


def save(workdir: str, state: dict[str, PyTree], config: ml_collections.ConfigDict) -> str:
  """Writes `state` and `config` as checkpoint 0 of a new workdir; returns its folder."""
  return checkpoints.save_new_workdir(workdir, state, config)


def convert_file(source: str | os.PathLike, workdir: str,
                 base_config: ml_collections.ConfigDict, *,
                 runtime_fields: Mapping[str, Any] | None = None,
                 **overrides: int | None) -> ml_collections.ConfigDict:
  """Converts an official file into a checkpoint workdir; returns the written config.

  `runtime_fields`, `overrides`: as for `convert`.
  """
  source = os.path.abspath(os.fspath(source))
  try:
    with progress.phase(f"reading {source}"):
      networks, recorded = read_file(source)
    with progress.phase("converting G, G_ema and D"):
      config, state = convert(networks, base_config, source=source, recorded=recorded,
                              runtime_fields=runtime_fields, **overrides)
  except LayoutError as error:
    raise LayoutError(f"{source}: {error}") from None
  with progress.phase(f"writing the checkpoint to {workdir}"):
    save(workdir, state, config)
  return config
