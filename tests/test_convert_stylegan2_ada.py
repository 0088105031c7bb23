"""Official StyleGAN2-ADA checkpoints -> our Flax G, G_ema, D, tested against the official code.

`shared/reference/stylegan2_ada_r32_mbstd8/` (beside the repository) holds a state dict
written by the official code (G, D, G_ema at 32 x 32, minibatch-stddev group 8) and the
official networks' outputs on fixed inputs. Conversions go through
`launch/convert_stylegan2_ada.py`, as a user would run it, and the converted networks
must reproduce every stored output. The folder ships no network pickle (official pickles
embed networks.py); one is emulated from the fixture's tensors and constructor kwargs
in the `torch_utils.persistence` layout its README describes (stand-in
`torch_utils.persistence` and `dnnlib.util.EasyDict` modules pickle by reference, as the
real ones do), to test what a pickle records.
"""

import collections
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantransfer_jax import builder
from configs import evaluate as evaluate_config
from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax import sample as sample_lib
from gantransfer_jax.convert import stylegan2_ada
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.pretrained import torch_pickle
from tests import weights_markers

_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = _ROOT.parent / "shared" / "reference" / "stylegan2_ada_r32_mbstd8"
# A float32 implementation of the same function reaches ~1e-6 (the fixture's README).
TOLERANCE = 1e-5
_BUFFERS = ("w_avg", "noise_const", "resample_filter")


@pytest.fixture(scope="module")
def expected():
  if not (FIXTURE / "state_dict.pt").is_file():
    pytest.skip(f"no reference fixture at {FIXTURE}")
  with np.load(FIXTURE / "expected.npz") as data:
    return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def official(expected):
  """{'G', 'D', 'G_ema'}: the fixture's official state dicts (numpy)."""
  del expected
  return {name: dict(state) for name, state in
          torch_pickle.load(FIXTURE / "state_dict.pt").items()}


@pytest.fixture(scope="module")
def base_config():
  return ps_pretrain.get_config()


def _relative_error(ours, official):
  ours, official = np.asarray(ours, np.float64), np.asarray(official, np.float64)
  return float(np.linalg.norm(ours - official) / np.linalg.norm(official))


def _nchw(images):
  return np.asarray(images).transpose(0, 3, 1, 2)


def _run_converter(*args, check=True):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(_ROOT)}
  result = subprocess.run([sys.executable, str(_ROOT / "launch" / "convert_stylegan2_ada.py"),
                           *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def workdir(expected, tmp_path_factory):
  """The fixture's state dict converted by the script with its group size (stdout, dir)."""
  del expected
  out = tmp_path_factory.mktemp("stylegan2_ada") / "converted"
  result = _run_converter(f"--src={FIXTURE / 'state_dict.pt'}", f"--out={out}",
                          "--mbstd_group_size=8")
  return result.stdout, str(out)


def _sampler(workdir, noise_mode, truncation_psi=1.0):
  """(gan, params) sampling the converted checkpoint as the sample command does."""
  config, params = checkpoints.restore_params(workdir)
  config.stylegan2.truncation_psi = truncation_psi
  gan_lib.set_noise_mode(config, noise_mode, params["generator_state"])
  return builder.build_gan(config), params


def test_state_dict_reproduces_every_official_output(expected, workdir):
  stdout, path = workdir
  assert "mbstd_group_size 8, conv_clamp 256.0" in stdout
  config = checkpoints.restore_raw_config(path)
  assert (config.stylegan2.mbstd_group_size, config.stylegan2.conv_clamp) == (8, 256.0)
  key = jax.random.key(0)  # Unused by 'const' and 'none' noise.
  z = expected["z"]

  gan, params = _sampler(path, "const")
  generator = gan.generator
  g_ema = gan_lib.variables(params["generator_ema"], params["generator_state"])
  for name, psi in (("w", 1.0), ("w_psi07", 0.7)):
    ws = generator.apply(g_ema, z, truncation_psi=psi, method=generator.map)
    assert _relative_error(ws, expected[name]) < TOLERANCE, name
  images = gan.sample(params["generator_ema"], params["generator_state"], z, None, key)
  assert _relative_error(_nchw(images), expected["img"]) < TOLERANCE
  # The non-EMA G with the buffers official training copies into G_ema (w_avg, noise).
  images = gan.sample(params["generator"], params["generator_state"], z, None, key)
  assert _relative_error(_nchw(images), expected["img_G"]) < TOLERANCE
  gan, _ = _sampler(path, "const", truncation_psi=0.7)
  images = gan.sample(params["generator_ema"], params["generator_state"], z, None, key)
  assert _relative_error(_nchw(images), expected["img_psi07"]) < TOLERANCE
  gan, _ = _sampler(path, "none")
  images = gan.sample(params["generator_ema"], params["generator_state"], z, None, key)
  assert _relative_error(_nchw(images), expected["img_nonoise"]) < TOLERANCE

  logits = gan.discriminator.apply({"params": params["discriminator"]},
                                   expected["d_in"].transpose(0, 2, 3, 1))
  assert _relative_error(logits, expected["d_out"][:, 0]) < TOLERANCE


def test_state_dict_records_no_group_size(expected, official, base_config):
  """Without the flag the base config's 4 applies, with a warning: D's logits are then
  off by ~1e-2, as the fixture's README measures for group 4."""
  with pytest.warns(UserWarning, match="does not record D's minibatch-stddev group size"):
    config, state = stylegan2_ada.convert(official, base_config)
  assert config.stylegan2.mbstd_group_size == 4
  discriminator = builder.build_gan(config).discriminator
  logits = discriminator.apply({"params": state["d_params"]},
                               expected["d_in"].transpose(0, 2, 3, 1))
  assert _relative_error(logits, expected["d_out"][:, 0]) > 1e-3


def test_sample_command_draws_the_official_const_noise_images(expected, workdir):
  model = sample_lib.Model(workdir[1], noise_mode="const")
  images = model.generate(jnp.asarray(expected["z"]), None, jax.random.key(1))
  assert _relative_error(_nchw(images), expected["img"]) < TOLERANCE
  random_images = sample_lib.Model(workdir[1]).generate(jnp.asarray(expected["z"]), None,
                                                         jax.random.key(1))
  assert _relative_error(_nchw(random_images), expected["img"]) > 1e-3


def _without_noise_maps(workdir, out):
  """The checkpoint as the layout before model states stored noise maps ('g_stats')."""
  config, state, _ = checkpoints.restore_raw(workdir)
  old = {k: v for k, v in state.items() if k not in ("g_state", "d_state")}
  old["g_stats"] = state["g_state"]["stats"]
  checkpoints.save_new_workdir(out, old, config)
  return out


def test_const_noise_needs_the_maps(workdir, tmp_path):
  old = _without_noise_maps(workdir[1], str(tmp_path / "old"))
  with pytest.raises(ValueError, match=r"old: noise_mode 'const' needs .* which this "
                                       "checkpoint lacks"):
    sample_lib.Model(old, noise_mode="const")
  sample_lib.Model(old, noise_mode="none")  # Needs no maps.


def test_conversions_of_the_previous_layout_keep_their_noise_maps(expected, workdir, tmp_path):
  """Conversions once stored the official maps as 'g_noise_consts' beside g_state."""
  config, state, _ = checkpoints.restore_raw(workdir[1])
  previous = {**state, "g_state": {"stats": state["g_state"]["stats"]},
              "g_noise_consts": state["g_state"]["noise_consts"]}
  path = str(tmp_path / "previous")
  checkpoints.save_new_workdir(path, previous, config)
  images = sample_lib.Model(path, noise_mode="const").generate(
      jnp.asarray(expected["z"]), None, jax.random.key(0))
  assert _relative_error(_nchw(images), expected["img"]) < TOLERANCE


@weights_markers.needs_inception
def test_evaluate_task_checks_const_noise_before_scoring(workdir, tmp_path):
  from gantransfer_jax.tasks import evaluate  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import validation  # pylint: disable=g-import-not-at-top

  config = evaluate_config.get_config()
  config.checkpoint = _without_noise_maps(workdir[1], str(tmp_path / "old"))
  config.noise_mode = "const"
  with pytest.raises(validation.ConfigError, match="noise_mode 'const' needs"):
    evaluate.run(config, str(tmp_path / "eval"))


def test_finetune_starts_from_the_official_weights_and_noise(workdir, tmp_path):
  from gantransfer_jax import parallel  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top

  path = workdir[1]
  target = tmp_path / "target.npz"
  np.savez(target, images=np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3),
                                                             dtype=np.uint8))
  config = finetune.get_config("transfergan,quick")
  config.update(init_checkpoint=path, batch_size=8)
  config.data.update(source=f"npz:{target}", num_images=0)
  config = checkpoints.inherit_model_config(config, path)
  assert (config.stylegan2.mbstd_group_size, config.stylegan2.conv_clamp) == (8, 256.0)
  mesh = parallel.create_mesh(jax.devices()[:1])
  setup = train.build(config, mesh)
  loaded = jax.device_get(train.load_init_params(setup.state, path, setup, mesh))
  _, converted = checkpoints.restore_params(path)
  jax.tree.map(np.testing.assert_array_equal, loaded.g_ema_params, converted["generator_ema"])
  jax.tree.map(np.testing.assert_array_equal, loaded.d_params, converted["discriminator"])
  noise = loaded.g_state["noise_consts"]["synthesis"]["b8"]["conv0"]["noise_const"]
  official = torch_pickle.load(FIXTURE / "state_dict.pt")["G_ema"]
  np.testing.assert_array_equal(noise, official["synthesis.b8.conv0.noise_const"])


# ---- Network pickles (emulated torch_utils.persistence objects) ---------------------------


def _reconstruct_persistent_obj(meta):  # Never called: the converter keeps it inert.
  raise AssertionError(meta)


class EasyDict(dict):
  """Stands in for dnnlib.util.EasyDict, train.py's kwargs dicts."""


class _PersistentModule:
  """Pickles like a `torch_utils.persistence` module: a call on meta with its __dict__."""

  def __init__(self, state, class_name):
    self.state, self.class_name = state, class_name

  def __reduce__(self):
    meta = dict(type="class", version=6, module_src="# networks.py source",
                class_name=self.class_name, state=self.state)
    return _reconstruct_persistent_obj, (meta,)


@pytest.fixture
def official_modules(monkeypatch):
  """Registers the stand-ins so that pickle names them as the official code does."""
  for name, obj, module_name in (
      ("_reconstruct_persistent_obj", _reconstruct_persistent_obj, "torch_utils.persistence"),
      ("EasyDict", EasyDict, "dnnlib.util")):
    package_name = module_name.split(".")[0]
    package = types.ModuleType(package_name)
    module = types.ModuleType(module_name)
    setattr(module, name, obj)
    setattr(package, module_name.split(".")[1], module)
    monkeypatch.setattr(obj, "__module__", module_name)
    if obj is _reconstruct_persistent_obj:
      monkeypatch.setattr(obj, "__qualname__", name)
    monkeypatch.setitem(sys.modules, package_name, package)
    monkeypatch.setitem(sys.modules, module_name, module)


def _easy(kwargs):
  return EasyDict({k: _easy(v) if isinstance(v, dict) else v for k, v in kwargs.items()})


def _module_tree(state_dict, init_kwargs, extra=None):
  """Nests a state dict into persistent modules; `init_kwargs` / `extra` (attributes)
  by dotted module path ('' the root)."""
  extra = extra or {}
  root = {}
  for key, value in state_dict.items():
    *path, leaf = key.split(".")
    node = root
    for name in path:
      node = node.setdefault(name, {})
    node[leaf] = value
  for path in extra:
    node = root
    for name in filter(None, path.split(".")):
      node = node.setdefault(name, {})

  def build(node, path):
    leaves = {k: v for k, v in node.items() if not isinstance(v, dict)}
    state = {
        "training": False,
        "_parameters": collections.OrderedDict(
            (k, v) for k, v in leaves.items() if k not in _BUFFERS),
        "_buffers": collections.OrderedDict(
            (k, v) for k, v in leaves.items() if k in _BUFFERS),
        "_non_persistent_buffers_set": set(),
        "_modules": collections.OrderedDict(
            (k, build(v, f"{path}.{k}".lstrip("."))) for k, v in node.items()
            if isinstance(v, dict)),
        "_init_args": (),
        "_init_kwargs": dict(init_kwargs.get(path, {})),
        **extra.get(path, {}),
    }
    return _PersistentModule(state, path or "Network")

  return build(root, "")


def _network_pickle(official, conv_clamp=256, group_size=8, layer_attributes=True):
  """A network-snapshot pickle of the fixture's networks, recording `conv_clamp` and the
  minibatch-stddev group as train.py's pickles do (without `layer_attributes`, only in
  D's constructor kwargs)."""
  kwargs = json.loads((FIXTURE / "init_kwargs.json").read_text())
  g_kwargs = _easy(kwargs["G"])
  g_kwargs["synthesis_kwargs"]["conv_clamp"] = conv_clamp
  d_kwargs = _easy(kwargs["D"])
  d_kwargs["conv_clamp"] = conv_clamp
  d_kwargs["epilogue_kwargs"]["mbstd_group_size"] = group_size
  mbstd = {"group_size": group_size, "num_channels": 1}
  d_extra = {"b4.mbstd": mbstd} if layer_attributes else {}
  d_init = {"": d_kwargs}
  if layer_attributes:
    d_init.update({"b4": {"mbstd_group_size": group_size}, "b4.mbstd": mbstd})
  data = {"G": _module_tree(official["G"], {"": g_kwargs}),
          "D": _module_tree(official["D"], d_init, d_extra),
          "G_ema": _module_tree(official["G_ema"], {"": g_kwargs}),
          "augment_pipe": None, "training_set_kwargs": _easy({"resolution": 32})}
  import pickle  # pylint: disable=g-import-not-at-top
  return pickle.dumps(data)


def test_network_pickle_records_the_group_size(expected, official, official_modules,
                                               tmp_path):
  del official_modules
  source = tmp_path / "network-snapshot-000000.pkl"
  source.write_bytes(_network_pickle(official))
  result = _run_converter(f"--src={source}", f"--out={tmp_path / 'converted'}")
  assert "mbstd_group_size 8, conv_clamp 256.0" in result.stdout
  assert "does not record" not in result.stderr
  config, params = checkpoints.restore_params(str(tmp_path / "converted"))
  logits = builder.build_gan(config).discriminator.apply(
      {"params": params["discriminator"]}, expected["d_in"].transpose(0, 2, 3, 1))
  assert _relative_error(logits, expected["d_out"][:, 0]) < TOLERANCE
  # A contradicting flag is refused, in one line.
  result = _run_converter(f"--src={source}", f"--out={tmp_path / 'other'}",
                          "--mbstd_group_size=4", check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "records mbstd_group_size 8, the requested 4 contradicts it" in result.stderr


def test_recorded_fields_of_fp32_and_default_pickles(official, official_modules, base_config):
  del official_modules
  fp32 = stylegan2_ada.recorded_fields(torch_pickle.load(_network_pickle(official, None, 8)))
  assert fp32 == {"mbstd_group_size": 8, "conv_clamp": None}
  config, _ = stylegan2_ada.convert(official, base_config, recorded=fp32)
  assert config.stylegan2.conv_clamp is None
  assert builder.build_gan(config).generator.conv_clamp is None
  cifar = stylegan2_ada.recorded_fields(torch_pickle.load(
      _network_pickle(official, 256, 32, layer_attributes=False)))
  assert cifar == {"mbstd_group_size": 32, "conv_clamp": 256.0}


# ---- Layout errors and architecture inference ---------------------------------------------


def test_file_without_g_uses_g_ema(official, base_config):
  without_g = {k: v for k, v in official.items() if k != "G"}
  import pickle  # pylint: disable=g-import-not-at-top
  with pytest.warns(UserWarning, match="no 'G'"):
    networks = stylegan2_ada.read_networks(pickle.dumps(without_g))
  _, state = stylegan2_ada.convert(networks, base_config,
                                   runtime_fields={"mbstd_group_size": 8})
  jax.tree.map(np.testing.assert_array_equal, state["g_params"], state["g_ema_params"])


def test_architecture_flags_pin_and_check_the_shapes(official, base_config):
  fields = {"runtime_fields": {"mbstd_group_size": 8}}
  config, _ = stylegan2_ada.convert(official, base_config, resolution=32, **fields)
  assert (config.resolution, config.stylegan2.channel_base, config.stylegan2.channel_max) == (
      32, 1024, 64)
  with pytest.raises(stylegan2_ada.LayoutError, match="synthesis.b64.conv0.weight"):
    stylegan2_ada.convert(official, base_config, resolution=64, **fields)


def test_unknown_layout_fails_with_what_it_found():
  import pickle  # pylint: disable=g-import-not-at-top
  data = pickle.dumps({"generator.mapping.fc0.weight": np.zeros((4, 4), np.float32)})
  with pytest.raises(stylegan2_ada.LayoutError,
                     match=r"no tensors for network\(s\) G_ema, D.*found top-level names: "
                           "generator"):
    stylegan2_ada.read_networks(data)


class Network:
  """Stands in for dnnlib.tflib.network.Network, what TF StyleGAN2 pickles hold."""


def test_tensorflow_pickles_are_named(monkeypatch):
  import pickle  # pylint: disable=g-import-not-at-top

  for name in ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network"):
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
  monkeypatch.setattr(sys.modules["dnnlib.tflib.network"], "Network", Network, raising=False)
  monkeypatch.setattr(Network, "__module__", "dnnlib.tflib.network")
  data = pickle.dumps((Network(), Network(), Network()))
  with pytest.raises(stylegan2_ada.LayoutError, match=r"dnnlib\.tflib.*legacy\.py"):
    stylegan2_ada.read_networks(data)


def test_missing_unexpected_and_misshapen_tensors_are_listed(official, base_config):
  broken = {network: dict(state) for network, state in official.items()}
  del broken["G_ema"]["synthesis.b8.torgb.bias"]
  broken["D"]["b8.extra.weight"] = np.zeros((1,), np.float32)
  broken["D"]["b4.out.weight"] = np.zeros((2, 64), np.float32)
  with pytest.raises(stylegan2_ada.LayoutError) as error:
    stylegan2_ada.convert(broken, base_config, runtime_fields={"mbstd_group_size": 8})
  message = str(error.value)
  assert "missing (1): G_ema.synthesis.b8.torgb.bias" in message
  assert "unexpected (1): D.b8.extra.weight" in message
  assert "wrong shape (1): D.b4.out.weight is (2, 64), expected (1, 64)" in message


def test_conditional_models_are_named_unsupported(official, base_config):
  conditional = {network: dict(state) for network, state in official.items()}
  conditional["G_ema"]["mapping.embed.weight"] = np.zeros((64, 10), np.float32)
  with pytest.raises(stylegan2_ada.LayoutError, match=r"conditional .*c_dim > 0.*not supported"):
    stylegan2_ada.convert(conditional, base_config)


def test_channel_base_inference_prefers_official_values():
  ffhq256 = {res: min(32768 // res, 512) for res in (4, 8, 16, 32, 64, 128, 256)}
  assert stylegan2_ada._infer_channel_base(ffhq256, 512) == 32768
  cifar = {res: 512 for res in (4, 8, 16, 32)}  # Every resolution at the cap.
  assert stylegan2_ada._infer_channel_base(cifar, 512) == 32768
  with pytest.raises(stylegan2_ada.LayoutError, match="do not follow"):
    stylegan2_ada._infer_channel_base({4: 32, 8: 8, 16: 16}, 32)
