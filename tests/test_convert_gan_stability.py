"""The AdaFM authors' GAN_stability ResNet checkpoints -> our flax params: mapping, files, errors.

The authors' files are built from a random draw of our params through the inverse mapping,
made conditional as theirs are (a class embedding, G's fc reading [z, embedding], D's fc
with one output per class), wrapped as GAN_stability checkpoints with DataParallel's
'module.' prefix, and saved as plain pickles of numpy arrays and, when torch is installed,
as real torch files.
"""

import os
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax.convert import gan_stability
from gantransfer_jax.models import gan as gan_lib

_ROOT = pathlib.Path(__file__).resolve().parents[1]

ARCH = gan_stability.Architecture(resolution=8, nf=4, z_dim=6)
EMBED_SIZE = 5
NUM_CLASSES = 3
D_CLASS = 2


def _random_like(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def ours():
  shapes = gan_stability.expected_params(ARCH)
  return {name: _random_like(tree, seed) for seed, (name, tree) in enumerate(shapes.items())}


@pytest.fixture(scope="module")
def base_config():
  return ps_pretrain.get_config("resnet")


def _conditional(ours, seed=10):
  """The authors' {'generator', 'discriminator'} state dicts holding `ours`."""
  rng = np.random.default_rng(seed)
  g = gan_stability.export_network(ours["generator"])
  g["embedding.weight"] = rng.standard_normal((NUM_CLASSES, EMBED_SIZE)).astype(np.float32)
  embed_columns = rng.standard_normal((g["fc.weight"].shape[0], EMBED_SIZE))
  g["fc.weight"] = np.concatenate([g["fc.weight"], embed_columns.astype(np.float32)], axis=1)
  d = gan_stability.export_network(ours["discriminator"])
  class_rows = rng.standard_normal((NUM_CLASSES, d["fc.weight"].shape[1])).astype(np.float32)
  class_rows[D_CLASS] = d["fc.weight"][0]
  class_bias = rng.standard_normal(NUM_CLASSES).astype(np.float32)
  class_bias[D_CLASS] = d["fc.bias"][0]
  d["fc.weight"], d["fc.bias"] = class_rows, class_bias
  return {"generator": g, "discriminator": d}


def _checkpoint(networks):
  """GAN_stability's checkpoint layout, DataParallel-wrapped, with optimizer state to skip."""
  wrapped = {name: {f"module.{k}": v for k, v in sd.items()} for name, sd in networks.items()}
  wrapped["g_optimizer"] = {"state": {0: {"exp_avg": np.zeros(3, np.float32)}}}
  wrapped["it"] = 1234
  return wrapped


def _assert_trees_equal(actual, expected):
  actual, expected = traverse_util.flatten_dict(actual), traverse_util.flatten_dict(expected)
  assert sorted(actual) == sorted(expected)
  for path in expected:
    np.testing.assert_array_equal(actual[path], expected[path], err_msg="/".join(path))


def test_authors_names_and_shapes_at_imagenet_128():
  """Guards the mapping against a hand-written slice of the authors' nf 64 state dict."""
  shapes = gan_stability.expected_params(gan_stability.Architecture(128, 64, 256))
  def official(network):
    flat = traverse_util.flatten_dict(shapes[network])
    return {gan_stability.official_name(p): gan_stability.to_official(
        np.empty(s.shape, np.uint8)).shape for p, s in flat.items() if s.size < 2 ** 24}
  g, d = official("generator"), official("discriminator")
  assert g["resnet_0.0.conv_0.weight"] == (1024, 1024, 3, 3)
  assert g["resnet_2.0.conv_0.weight"] == (512, 1024, 3, 3)
  assert g["resnet_2.0.conv_s.weight"] == (512, 1024, 1, 1)
  assert g["resnet_5.1.conv_1.bias"] == (64,)
  assert g["conv_img.weight"] == (3, 64, 3, 3)
  assert g["fc.weight"] == (1024 * 16, 256)  # Theirs is (16384, 256 + embed_size).
  assert d["conv_img.weight"] == (64, 3, 3, 3)
  assert d["resnet_0.1.conv_s.weight"] == (128, 64, 1, 1)
  assert d["resnet_5.1.conv_1.weight"] == (1024, 1024, 3, 3)
  assert d["fc.weight"] == (1, 1024 * 16)  # Theirs is (nlabels, 16384).
  assert "resnet_0.0.conv_s.weight" not in g and "resnet_0.0.conv_s.weight" not in d


def test_round_trip_from_a_pickle_of_numpy_arrays(ours, tmp_path):
  src, out = tmp_path / "ckpt.pkl", tmp_path / "converted.npz"
  with open(src, "wb") as f:
    pickle.dump(_checkpoint(_conditional(ours)), f)
  architecture = gan_stability.convert_file(src, out, discriminator_class=D_CLASS)
  assert architecture == ARCH
  variables, architecture = gan_stability.load_npz(out)
  assert architecture == ARCH
  _assert_trees_equal(variables["generator"]["params"], ours["generator"])
  _assert_trees_equal(variables["discriminator"]["params"], ours["discriminator"])

  z = jax.random.normal(jax.random.key(0), (2, ARCH.z_dim))
  images = ARCH.generator().apply(variables["generator"], z)
  np.testing.assert_allclose(images, ARCH.generator().apply({"params": ours["generator"]}, z),
                             rtol=1e-6, atol=1e-6)
  assert ARCH.discriminator().apply(variables["discriminator"], images).shape == (2,)


def test_discriminator_fc_is_reinitialised_by_default(ours):
  params, _ = gan_stability.convert(_conditional(ours), seed=3)
  fc = params["discriminator"]["fc"]
  assert fc["kernel"].shape == ours["discriminator"]["fc"]["kernel"].shape
  assert not np.allclose(fc["kernel"], ours["discriminator"]["fc"]["kernel"])
  again, _ = gan_stability.convert(_conditional(ours), seed=3)
  np.testing.assert_array_equal(again["discriminator"]["fc"]["kernel"], fc["kernel"])
  with pytest.raises(gan_stability.LayoutError, match="out of range"):
    gan_stability.convert(_conditional(ours), discriminator_class=NUM_CLASSES)


def test_torch_files_and_bare_state_dicts(ours, tmp_path):
  torch = pytest.importorskip("torch")
  networks = _conditional(ours)
  tensors = jax.tree.map(lambda v: torch.from_numpy(v) if isinstance(v, np.ndarray) else v,
                         _checkpoint(networks))
  torch.save(tensors, tmp_path / "ckpt.pt")
  torch.save(tensors["generator"], tmp_path / "generator.pth")  # Bare, 'module.' prefixed.
  for name in ("ckpt.pt", "generator.pth"):
    found = gan_stability.read_networks(tmp_path / name)
    params, architecture = gan_stability.convert(found, discriminator_class=D_CLASS)
    assert architecture == ARCH
    _assert_trees_equal(params["generator"], ours["generator"])
  assert sorted(gan_stability.read_networks(tmp_path / "ckpt.pt")) == [
      "discriminator", "generator"]


def test_layout_errors(ours):
  good = _conditional(ours)

  def convert_with(network, edit):
    networks = {k: dict(v) for k, v in good.items()}
    edit(networks[network])
    return gan_stability.convert(networks)

  with pytest.raises(gan_stability.LayoutError, match=r"missing generator\.resnet_1\.0\.conv_s"):
    convert_with("generator", lambda sd: sd.pop("resnet_1.0.conv_s.weight"))
  with pytest.raises(gan_stability.LayoutError, match=r"unexpected discriminator\.attn\.gamma"):
    convert_with("discriminator", lambda sd: sd.update({"attn.gamma": np.zeros(1)}))
  with pytest.raises(gan_stability.LayoutError, match=r"wrong shape generator\.resnet_0\.1"):
    convert_with("generator", lambda sd: sd.update(
        {"resnet_0.1.conv_1.weight": np.zeros((8, 8, 1, 1), np.float32)}))
  with pytest.raises(gan_stability.LayoutError, match="groups resnet_0"):
    convert_with("generator", lambda sd: [sd.pop(k) for k in list(sd) if "resnet_0." in k])
  with pytest.raises(gan_stability.LayoutError, match="not a GAN_stability"):
    gan_stability.split_networks({"net.weight": np.zeros(3)})
  with pytest.raises(gan_stability.LayoutError, match="no generator"):
    gan_stability.read_networks(pickle.dumps({"discriminator": good["discriminator"]}))


def test_launch_script(ours, tmp_path):
  src, out = tmp_path / "generator.pkl", tmp_path / "g.npz"
  with open(src, "wb") as f:
    pickle.dump(_conditional(ours)["generator"], f)
  result = subprocess.run([sys.executable, "launch/convert_gan_stability.py", f"--src={src}",
                           f"--out={out}"], capture_output=True, text=True, check=False,
                          env={"JAX_PLATFORMS": "cpu", "PYTHONPATH": "."})
  assert result.returncode == 0, result.stderr
  variables, architecture = gan_stability.load_npz(out)
  assert architecture == ARCH and sorted(variables) == ["generator"]


def test_workdir_is_a_checkpoint_a_finetune_starts_from(ours, base_config, tmp_path):
  # The EMA G differs from G, so taking the wrong one shows.
  ema = _random_like(gan_stability.expected_params(ARCH)["generator"], seed=7)
  networks = _conditional(ours)
  networks["generator_test"] = _conditional({**ours, "generator": ema})["generator"]
  src, npz, workdir = tmp_path / "ckpt.pkl", tmp_path / "converted.npz", tmp_path / "converted"
  with open(src, "wb") as f:
    pickle.dump(_checkpoint(networks), f)
  gan_stability.convert_file(src, npz, discriminator_class=D_CLASS)
  written = gan_stability.convert_file_to_workdir(src, workdir, base_config,
                                                  discriminator_class=D_CLASS)

  config, params = checkpoints.restore_params(str(workdir))
  variables, _ = gan_stability.load_npz(npz)
  _assert_trees_equal(params["generator"], variables["generator"]["params"])
  _assert_trees_equal(params["discriminator"], variables["discriminator"]["params"])
  _assert_trees_equal(params["generator_ema"], ema)
  assert params["generator_state"] == {} and params["discriminator_state"] == {}
  saved = checkpoints.restore_raw_config(str(workdir))
  assert (saved.model, saved.resolution, saved.resnet.nf, saved.resnet.z_dim) == (
      "resnet", ARCH.resolution, ARCH.nf, ARCH.z_dim)
  assert saved.converted_from == str(src) and written.to_dict() == saved.to_dict()
  assert saved.optim.g_lr == base_config.optim.g_lr  # The resnet recipe travels along.

  gan = gan_lib.build_gan(config)
  z = jax.random.normal(jax.random.key(0), (2, ARCH.z_dim))
  images = gan.generator.apply({"params": params["generator_ema"]}, z)
  np.testing.assert_allclose(images, ARCH.generator().apply({"params": ema}, z),
                             rtol=1e-6, atol=1e-6)
  assert gan.discriminator.apply({"params": params["discriminator"]}, images).shape == (2,)
  # AdaFM's finetune config takes its model fields from the converted checkpoint.
  inherited = checkpoints.inherit_model_config(finetune.get_config("adafm"), str(workdir))
  assert (inherited.model, inherited.resolution, inherited.resnet.nf) == ("adafm", 8, 4)

  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    gan_stability.convert_file_to_workdir(src, workdir, base_config)


def test_workdir_without_discriminator_or_ema(ours, base_config):
  with pytest.warns(UserWarning, match="no discriminator: D is initialised from seed 4"):
    _, state = gan_stability.convert_checkpoint(
        {"generator": _conditional(ours)["generator"]}, base_config, seed=4)
  _assert_trees_equal(state["g_ema_params"], ours["generator"])
  _assert_trees_equal(state["g_params"], ours["generator"])
  expected = gan_stability.expected_params(ARCH)["discriminator"]
  assert jax.tree.structure(state["d_params"]) == jax.tree.structure(expected)
  _assert_trees_equal(state["d_params"], gan_stability.initial_discriminator(ARCH, 4))
  bad_ema = dict(_conditional(ours)["generator"])
  bad_ema.pop("conv_img.weight")
  with pytest.raises(gan_stability.LayoutError, match=r"(?s)'generator_test'.*missing generator"):
    gan_stability.convert_checkpoint(_conditional(ours), base_config, ema=bad_ema)


def test_launch_script_writes_a_workdir(ours, tmp_path):
  src, workdir = tmp_path / "ckpt.pkl", tmp_path / "converted"
  with open(src, "wb") as f:
    pickle.dump(_checkpoint(_conditional(ours)), f)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(_ROOT)}
  command = [sys.executable, str(_ROOT / "launch" / "convert_gan_stability.py"), f"--src={src}"]
  result = subprocess.run([*command, f"--workdir={workdir}"], capture_output=True, text=True,
                          check=False, env=env, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "nf 4, z_dim 6" in result.stdout
  config = checkpoints.restore_raw_config(str(workdir))
  assert (config.model, config.resolution, config.resnet.nf) == ("resnet", 8, 4)
  assert config.optim.g_lr == 1e-4  # From the default base config, ps_pretrain.py:resnet.
