"""Official StyleGAN2-ADA checkpoints -> our Flax G, G_ema, D: layouts, file forms, errors.

Official files are built from a random draw of our own variables through the inverse
mapping, in every form the converter reads: flat and nested state dicts as plain pickles
of numpy arrays (no torch), `torch.save` files and network pickles with torch tensors
(when torch is installed), and network pickles of `torch_utils.persistence` objects
(emulated: a stand-in `torch_utils.persistence` module pickles them by reference, as
the real one does). One hand-written list of the official tensor names and shapes guards
the mapping itself.
"""

import collections
import os
import pathlib
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax.convert import stylegan2_ada
from gantransfer_jax.models import gan as gan_lib

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Resolution 8 has every kind of block: b4 (const, conv1, torgb) and b8 (conv0, fromrgb).
# channel_base 128: 32 channels at 4 x 4 (capped by channel_max), 16 at 8 x 8.
TINY = stylegan2_ada.Architecture(resolution=8, z_dim=16, w_dim=16, mapping_layers=2,
                                  channel_base=128, channel_max=32)
_BUFFERS = ("w_avg", "noise_const", "resample_filter")


@pytest.fixture(scope="module")
def base_config():
  return ps_pretrain.get_config()


@pytest.fixture(scope="module")
def ours(base_config):
  """Random variables of our G, G_ema and D (G and G_ema differ, so a swap shows)."""
  shapes = stylegan2_ada.expected_variables(stylegan2_ada.model_config(base_config, TINY))
  rng = np.random.default_rng(0)
  draw = lambda tree: jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), tree)
  return {"G": draw(shapes["G"]), "G_ema": draw(shapes["G"]), "D": draw(shapes["D"])}


def _with_resample_filters(network, state_dict):
  """Adds the FIR buffers the official modules register (the converter drops them)."""
  taps = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64
  layers = {key.rsplit(".", 1)[0] for key, value in state_dict.items()
            if key.endswith(".weight") and value.ndim == 4 and ".torgb." not in key}
  if network == "D":  # Every resnet block; the epilogue b4 registers none of its own.
    blocks = {key.split(".")[0] for key in state_dict} - {"b4"}
  else:
    blocks = {"synthesis." + key.split(".")[1] for key in state_dict
              if key.startswith("synthesis.")}
  return {**state_dict, **{f"{name}.resample_filter": taps for name in layers | blocks}}


@pytest.fixture(scope="module")
def official(ours):
  """{'G', 'D', 'G_ema'}: official state dicts holding `ours`, buffers included."""
  return {network: _with_resample_filters(network, stylegan2_ada.export_network(variables))
          for network, variables in ours.items()}


def _flat(official_networks):
  return {f"{network}.{key}": value
          for network, state in official_networks.items() for key, value in state.items()}


# ---- Emulated torch_utils.persistence network pickles -------------------------------------


def _reconstruct_persistent_obj(meta):  # Never called: the converter keeps it inert.
  raise AssertionError(meta)


class _PersistentModule:
  """Pickles like a `torch_utils.persistence` module: a call on meta with its __dict__."""

  def __init__(self, state):
    self.state = state

  def __reduce__(self):
    meta = dict(type="class", version=6, module_src="# networks.py source",
                class_name="Module", state=self.state)
    return _reconstruct_persistent_obj, (meta,)


@pytest.fixture
def persistence_module(monkeypatch):
  """Registers the stand-in so that pickle names it `torch_utils.persistence`."""
  package = types.ModuleType("torch_utils")
  module = types.ModuleType("torch_utils.persistence")
  module._reconstruct_persistent_obj = _reconstruct_persistent_obj
  package.persistence = module
  monkeypatch.setattr(_reconstruct_persistent_obj, "__module__", "torch_utils.persistence")
  monkeypatch.setattr(_reconstruct_persistent_obj, "__qualname__", "_reconstruct_persistent_obj")
  monkeypatch.setitem(sys.modules, "torch_utils", package)
  monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)


def _module_tree(state_dict, tensor=lambda array, is_parameter: array):
  """Nests a state dict into modules whose __dict__ holds parameters, buffers, submodules."""
  root = {}
  for key, value in state_dict.items():
    *path, leaf = key.split(".")
    node = root
    for name in path:
      node = node.setdefault(name, {})
    node[leaf] = value

  def build(node):
    leaves = {k: v for k, v in node.items() if not isinstance(v, dict)}
    return _PersistentModule({
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, tensor(v, True)) for k, v in leaves.items() if k not in _BUFFERS),
        "_buffers": collections.OrderedDict(
            (k, tensor(v, False)) for k, v in leaves.items() if k in _BUFFERS),
        "_non_persistent_buffers_set": set(),
        "_modules": collections.OrderedDict(
            (k, build(v)) for k, v in node.items() if isinstance(v, dict)),
        "_init_kwargs": {},
    })

  return build(root)


def _network_pickle(official_networks, tensor=lambda array, is_parameter: array):
  data = {name: _module_tree(state, tensor) for name, state in official_networks.items()}
  data["D"].state["_modules"]["b4"].state["_modules"]["mbstd"] = _module_tree({})
  data.update(augment_pipe=None, training_set_kwargs={"resolution": 8})
  return pickle.dumps(data)


def _torch_tensor(array, is_parameter):
  import torch  # pylint: disable=g-import-not-at-top
  value = torch.from_numpy(np.array(array))
  return torch.nn.Parameter(value, requires_grad=False) if is_parameter else value


# ---- Tests --------------------------------------------------------------------------------


def _official_tensor_shapes(z, w, c4, c8):
  """The official state dict at 8 x 8 (c4, c8 channels), written from networks.py by hand."""
  def modulated(name, in_channels, out_channels, k):
    return {f"{name}.affine.weight": (in_channels, w), f"{name}.affine.bias": (in_channels,),
            f"{name}.weight": (out_channels, in_channels, k, k), f"{name}.bias": (out_channels,)}

  def synthesis_layer(name, in_channels, out_channels, res):
    return {**modulated(name, in_channels, out_channels, 3),
            f"{name}.noise_strength": (), f"{name}.noise_const": (res, res)}

  generator = {
      "mapping.fc0.weight": (w, z), "mapping.fc0.bias": (w,),
      "mapping.fc1.weight": (w, w), "mapping.fc1.bias": (w,), "mapping.w_avg": (w,),
      "synthesis.b4.const": (c4, 4, 4),
      **synthesis_layer("synthesis.b4.conv1", c4, c4, 4),
      **modulated("synthesis.b4.torgb", c4, 3, 1),
      **synthesis_layer("synthesis.b8.conv0", c4, c8, 8),
      **synthesis_layer("synthesis.b8.conv1", c8, c8, 8),
      **modulated("synthesis.b8.torgb", c8, 3, 1),
  }
  discriminator = {
      "b8.fromrgb.weight": (c8, 3, 1, 1), "b8.fromrgb.bias": (c8,),
      "b8.conv0.weight": (c8, c8, 3, 3), "b8.conv0.bias": (c8,),
      "b8.conv1.weight": (c4, c8, 3, 3), "b8.conv1.bias": (c4,),
      "b8.skip.weight": (c4, c8, 1, 1),
      "b4.conv.weight": (c4, c4 + 1, 3, 3), "b4.conv.bias": (c4,),
      "b4.fc.weight": (c4, c4 * 16), "b4.fc.bias": (c4,),
      "b4.out.weight": (1, c4), "b4.out.bias": (1,),
  }
  return {"G": generator, "G_ema": generator, "D": discriminator}


def test_export_gives_the_official_names_and_shapes(ours):
  expected = _official_tensor_shapes(z=16, w=16, c4=32, c8=16)
  for network, variables in ours.items():
    exported = stylegan2_ada.export_network(variables)
    assert {k: v.shape for k, v in exported.items()} == expected[network], network


def test_layout_rule_transposes_dense_conv_and_const():
  dense = np.arange(6.0).reshape(2, 3)           # [out, in]
  conv = np.arange(120.0).reshape(5, 4, 3, 2)    # OIHW
  const = np.arange(24.0).reshape(6, 2, 2)       # [C, H, W]
  np.testing.assert_array_equal(stylegan2_ada.to_flax("fc.weight", dense), dense.T)
  np.testing.assert_array_equal(stylegan2_ada.to_flax("conv.weight", conv),
                                conv.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(stylegan2_ada.to_flax("b4.const", const),
                                const.transpose(1, 2, 0))
  for name, array in (("fc.weight", dense), ("conv.weight", conv), ("b4.const", const),
                      ("conv.bias", np.arange(3.0))):
    back = stylegan2_ada.to_official(name, stylegan2_ada.to_flax(name, array))
    np.testing.assert_array_equal(back, array)


def _assert_converted(config, state, ours):
  assert config.resolution == TINY.resolution
  for field in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max"):
    assert config.stylegan2[field] == getattr(TINY, field), field
  expected = {"g_params": ours["G"]["params"], "g_ema_params": ours["G_ema"]["params"],
              "g_state": {"stats": ours["G_ema"]["stats"]}, "d_params": ours["D"]["params"]}
  for name, tree in expected.items():
    got = state[name]
    assert jax.tree.structure(got) == jax.tree.structure(tree), name
    jax.tree.map(np.testing.assert_array_equal, got, tree)


@pytest.mark.parametrize("form", ["flat", "nested", "network_pickle"])
def test_converts_numpy_files_without_torch(form, official, ours, base_config, request):
  if form == "flat":
    data = pickle.dumps(_flat(official))
  elif form == "nested":
    data = pickle.dumps(official)
  else:
    request.getfixturevalue("persistence_module")
    data = _network_pickle(official)
  config, state = stylegan2_ada.convert(stylegan2_ada.read_networks(data), base_config)
  _assert_converted(config, state, ours)
  jax.tree.map(np.testing.assert_array_equal, state["g_noise_consts"],
               ours["G_ema"]["noise_consts"])


@pytest.mark.parametrize("form", ["torch_save", "torch_save_nested", "network_pickle"])
def test_converts_files_written_by_torch(form, official, ours, base_config, tmp_path, request):
  torch = pytest.importorskip("torch")
  path = tmp_path / "checkpoint.pt"
  if form == "network_pickle":
    request.getfixturevalue("persistence_module")
    path.write_bytes(_network_pickle(official, _torch_tensor))
  else:
    tensors = {k: _torch_tensor(v, False) for k, v in _flat(official).items()}
    if form == "torch_save_nested":
      tensors = {network: {k[len(network) + 1:]: v for k, v in tensors.items()
                           if k.split(".")[0] == network} for network in official}
    torch.save(tensors, path)
  config, state = stylegan2_ada.convert(stylegan2_ada.read_networks(path), base_config)
  _assert_converted(config, state, ours)


def test_file_without_g_uses_g_ema(official, base_config):
  without_g = {k: v for k, v in official.items() if k != "G"}
  with pytest.warns(UserWarning, match="no 'G'"):
    networks = stylegan2_ada.read_networks(pickle.dumps(without_g))
  _, state = stylegan2_ada.convert(networks, base_config)
  jax.tree.map(np.testing.assert_array_equal, state["g_params"], state["g_ema_params"])


def test_architecture_flags_pin_and_check_the_shapes(official, base_config):
  networks = stylegan2_ada.read_networks(pickle.dumps(official))
  config, _ = stylegan2_ada.convert(networks, base_config, resolution=8, channel_base=None)
  assert config.resolution == 8
  with pytest.raises(stylegan2_ada.LayoutError, match="synthesis.b16.conv0.weight"):
    stylegan2_ada.convert(networks, base_config, resolution=16)


def test_workdir_is_a_checkpoint_of_ours(official, ours, base_config, tmp_path,
                                         persistence_module):
  del persistence_module
  source = tmp_path / "network-snapshot-000000.pkl"
  source.write_bytes(_network_pickle(official))
  workdir = str(tmp_path / "converted")
  stylegan2_ada.convert_file(source, workdir, base_config)

  config, params = checkpoints.restore_params(workdir)
  assert config.converted_from == str(source)
  _assert_converted(config, {"g_params": params["generator"],
                             "g_ema_params": params["generator_ema"],
                             "g_state": params["generator_state"],
                             "d_params": params["discriminator"]}, ours)
  inherited = checkpoints.inherit_model_config(finetune.get_config("transfergan"), workdir)
  assert inherited.resolution == 8 and inherited.stylegan2.channel_base == TINY.channel_base

  # The converted model runs: const noise (official buffers), then D on the images.
  _, state, _ = checkpoints.restore_raw(workdir)
  gan = gan_lib.build_gan(config)
  generator, discriminator = gan.generator, gan.discriminator
  z = jax.random.normal(jax.random.key(0), (2, TINY.z_dim))
  images = generator.apply({"params": params["generator_ema"],
                            **params["generator_state"],
                            "noise_consts": state["g_noise_consts"]},
                           z, noise_mode="const", truncation_psi=0.7)
  logits = discriminator.apply({"params": params["discriminator"]}, images)
  assert images.shape == (2, 8, 8, 3) and logits.shape == (2,)
  assert bool(jnp.all(jnp.isfinite(images))) and bool(jnp.all(jnp.isfinite(logits)))

  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    stylegan2_ada.convert_file(source, workdir, base_config)


def test_unknown_layout_fails_with_what_it_found():
  data = pickle.dumps({"generator.mapping.fc0.weight": np.zeros((4, 4), np.float32)})
  with pytest.raises(stylegan2_ada.LayoutError,
                     match=r"no tensors for network\(s\) G_ema, D.*found top-level names: "
                           "generator"):
    stylegan2_ada.read_networks(data)


def test_missing_unexpected_and_misshapen_tensors_are_listed(official, base_config):
  broken = {network: dict(state) for network, state in official.items()}
  del broken["G_ema"]["synthesis.b8.torgb.bias"]
  broken["D"]["b8.extra.weight"] = np.zeros((1,), np.float32)
  broken["D"]["b4.out.weight"] = np.zeros((2, 32), np.float32)
  with pytest.raises(stylegan2_ada.LayoutError) as error:
    stylegan2_ada.convert(broken, base_config)
  message = str(error.value)
  assert "missing (1): G_ema.synthesis.b8.torgb.bias" in message
  assert "unexpected (1): D.b8.extra.weight" in message
  assert "wrong shape (1): D.b4.out.weight is (2, 32), expected (1, 32)" in message


def test_conditional_models_are_named_unsupported(official, base_config):
  conditional = {network: dict(state) for network, state in official.items()}
  conditional["G_ema"]["mapping.embed.weight"] = np.zeros((16, 10), np.float32)
  with pytest.raises(stylegan2_ada.LayoutError, match=r"conditional .*c_dim > 0.*not supported"):
    stylegan2_ada.convert(conditional, base_config)


def test_channel_base_inference_prefers_official_values():
  ffhq256 = {res: min(32768 // res, 512) for res in (4, 8, 16, 32, 64, 128, 256)}
  assert stylegan2_ada._infer_channel_base(ffhq256, 512) == 32768
  cifar = {res: 512 for res in (4, 8, 16, 32)}  # Every resolution at the cap.
  assert stylegan2_ada._infer_channel_base(cifar, 512) == 32768
  with pytest.raises(stylegan2_ada.LayoutError, match="do not follow"):
    stylegan2_ada._infer_channel_base({4: 32, 8: 8, 16: 16}, 32)


@pytest.mark.slow
def test_command_line(official, tmp_path):
  source = tmp_path / "state_dict.pkl"
  source.write_bytes(pickle.dumps(_flat(official)))
  workdir = tmp_path / "converted"
  env = {**os.environ, "PYTHONPATH": str(_ROOT), "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(
      [sys.executable, str(_ROOT / "launch" / "convert_stylegan2_ada.py"), f"--src={source}",
       f"--out={workdir}"], capture_output=True, text=True, env=env, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "channel_base 128" in result.stdout
  assert checkpoints.restore_raw_config(str(workdir)).resolution == 8
