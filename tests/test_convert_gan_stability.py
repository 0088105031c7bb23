"""GAN_stability resnet2 checkpoints -> our flax params, tested against the official code.

`shared/reference/gan_stability_resnet2_nf8/` (beside the repository) holds a checkpoint
written by the authors' `train.py` (DataParallel keys, 'generator', 'discriminator',
'generator_test', RMSprop states, 'it') and the official networks' outputs on fixed
inputs. Every conversion here goes through `launch/convert_gan_stability.py`, as a user
would run it, and the converted networks must reproduce the official outputs.
"""

import json
import os
import pathlib
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from gantransfer_jax import builder
from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax.convert import gan_stability
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.pretrained import torch_pickle

_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = _ROOT.parent / "shared" / "reference" / "gan_stability_resnet2_nf8"
# A float32 implementation of the same function reaches ~3e-7 (the fixture's README).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
  if not (FIXTURE / "model.pt").is_file():
    pytest.skip(f"no reference fixture at {FIXTURE}")
  with np.load(FIXTURE / "expected.npz") as data:
    expected = {name: data[name] for name in data.files}
  info = json.loads((FIXTURE / "fixture.json").read_text())
  return expected, info["fixed_class"]


def _relative_error(ours, official):
  ours, official = np.asarray(ours, np.float64), np.asarray(official, np.float64)
  return float(np.linalg.norm(ours - official) / np.linalg.norm(official))


def _nhwc(images):
  return np.asarray(images).transpose(0, 2, 3, 1)


def _convert(tmp_path, *args):
  """Runs the converter script; returns its stdout."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(_ROOT)}
  result = subprocess.run([sys.executable, str(_ROOT / "launch" / "convert_gan_stability.py"),
                           *args], capture_output=True, text=True, check=False, env=env,
                          timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope="module")
def class_workdir(reference, tmp_path_factory):
  """The authors' training checkpoint at the fixed class, as a workdir (stdout, path)."""
  _, fixed_class = reference
  workdir = tmp_path_factory.mktemp("gan_stability") / "converted"
  stdout = _convert(workdir.parent, f"--src={FIXTURE / 'model.pt'}", f"--workdir={workdir}",
                    f"--generator_class={fixed_class}")
  return stdout, str(workdir)


def test_training_checkpoint_reproduces_the_authors_g_and_d_at_a_class(
    reference, class_workdir):
  expected, fixed_class = reference
  stdout, workdir = class_workdir
  # Which network went where, in the output: G and G_ema are the trained 'generator'.
  assert "g_params <- 'generator' (the trained G, which AdaFM transfers)" in stdout
  assert f"d_params <- 'discriminator', fc row {fixed_class}" in stdout
  config, params = checkpoints.restore_params(workdir)
  assert (config.model, config.resolution, config.resnet.nf, config.resnet.z_dim) == (
      "resnet", 128, 8, 32)
  gan = builder.build_gan(config)
  for name in ("generator", "generator_ema"):
    images = gan.generator.apply({"params": params[name]}, expected["z"])
    assert _relative_error(images, _nhwc(expected["g_y3"])) < TOLERANCE, name
  logits = gan.discriminator.apply({"params": params["discriminator"]},
                                   _nhwc(expected["d_in"]))
  assert _relative_error(logits, expected["d_out_y3"]) < TOLERANCE


def test_ema_generator_on_request(reference, tmp_path):
  expected, fixed_class = reference
  out = tmp_path / "ema.npz"
  stdout = _convert(tmp_path, f"--src={FIXTURE / 'model.pt'}", f"--out={out}",
                    "--generator_key=generator_test", f"--generator_class={fixed_class}")
  assert "G <- 'generator_test'" in stdout
  variables, architecture = gan_stability.load_npz(out)
  images = architecture.generator().apply(variables["generator"], expected["z"])
  assert _relative_error(images, _nhwc(expected["g_test_y3"])) < TOLERANCE
  assert _relative_error(images, _nhwc(expected["g_y3"])) > 1e-3  # The two Gs differ.


def test_bare_state_dicts_as_adafm_saves_them(reference, tmp_path):
  """download_pretrainedGAN.py saves `generator.module.state_dict()` (no 'module.') and D
  in a second file."""
  expected, fixed_class = reference
  entries = torch_pickle.load(FIXTURE / "model.pt")
  bare = {name: {key.removeprefix("module."): value for key, value in entries[name].items()}
          for name in ("generator", "discriminator")}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    for name, state in bare.items():
      torch.save({k: torch.from_numpy(v) for k, v in state.items()},
                 tmp_path / f"ImageNetPre_{name}")
  except ImportError:  # The reader takes pickles of numpy arrays as well.
    for name, state in bare.items():
      (tmp_path / f"ImageNetPre_{name}").write_bytes(pickle.dumps(state))
  workdir = tmp_path / "converted"
  stdout = _convert(tmp_path, f"--src={tmp_path / 'ImageNetPre_generator'}",
                    f"--discriminator_src={tmp_path / 'ImageNetPre_discriminator'}",
                    f"--workdir={workdir}", f"--generator_class={fixed_class}")
  assert "ImageNetPre_discriminator: discriminator', fc row" in stdout
  config, params = checkpoints.restore_params(str(workdir))
  gan = builder.build_gan(config)
  images = gan.generator.apply({"params": params["generator_ema"]}, expected["z"])
  assert _relative_error(images, _nhwc(expected["g_y3"])) < TOLERANCE
  logits = gan.discriminator.apply({"params": params["discriminator"]},
                                   _nhwc(expected["d_in"]))
  assert _relative_error(logits, expected["d_out_y3"]) < TOLERANCE


@pytest.fixture(scope="module")
def networks(reference):
  del reference
  return gan_stability.read_networks(FIXTURE / "model.pt")


def test_class_free_default_drops_the_label_term_and_reinitialises_d_fc(networks):
  params, _ = gan_stability.convert(networks, seed=3)
  np.testing.assert_array_equal(params["generator"]["fc"]["bias"],
                                networks["generator"]["fc.bias"])
  np.testing.assert_array_equal(params["generator"]["fc"]["kernel"],
                                networks["generator"]["fc.weight"][:, :32].T)
  d_fc = params["discriminator"]["fc"]
  assert d_fc["kernel"].shape == (2048, 1)
  assert not any(np.allclose(d_fc["kernel"][:, 0], row)
                 for row in networks["discriminator"]["fc.weight"])
  again, _ = gan_stability.convert(networks, seed=3)
  np.testing.assert_array_equal(again["discriminator"]["fc"]["kernel"], d_fc["kernel"])


def test_layout_errors(networks):
  def convert_with(network, edit, **options):
    edited = {k: dict(v) for k, v in networks.items()}
    edit(edited[network])
    return gan_stability.convert(edited, **options)

  with pytest.raises(gan_stability.LayoutError, match=r"missing generator\.resnet_2_0\.conv_s"):
    convert_with("generator", lambda sd: sd.pop("resnet_2_0.conv_s.weight"))
  with pytest.raises(gan_stability.LayoutError, match=r"unexpected discriminator\.attn\.gamma"):
    convert_with("discriminator", lambda sd: sd.update({"attn.gamma": np.zeros(1)}))
  with pytest.raises(gan_stability.LayoutError,
                     match=r"wrong shape generator\.resnet_0_1\.conv_1\.weight"):
    convert_with("generator", lambda sd: sd.update(
        {"resnet_0_1.conv_1.weight": np.zeros((8, 8, 1, 1), np.float32)}))
  with pytest.raises(gan_stability.LayoutError, match="out of range: the file has 10 classes"):
    gan_stability.convert(networks, generator_class=10)
  with pytest.raises(gan_stability.LayoutError, match="out of range"):
    gan_stability.convert(networks, discriminator_class=10)
  # A resnet2 of another size: G's fc implies it.
  with pytest.raises(gan_stability.LayoutError, match="a resnet2 of size 256; only size 128"):
    convert_with("generator", lambda sd: sd.update(
        {"fc.weight": np.zeros((128 * 64, 48), np.float32)}))
  # GAN_stability's 'resnet' family (celebA-HQ, LSUN) keeps its blocks in a Sequential.
  sequential = {key.replace("resnet_0_0.", "resnet.0."): value
                for key, value in networks["generator"].items() if "resnet_" not in key
                or key.startswith("resnet_0_0.")}
  with pytest.raises(gan_stability.LayoutError, match=r"'resnet' family, blocks resnet\.<i>"):
    gan_stability.convert({"generator": sequential})
  # resnet3 (LSUN) has one block per group.
  with pytest.raises(gan_stability.LayoutError, match="'resnet3' family"):
    convert_with("generator", lambda sd: [sd.pop(k) for k in list(sd)
                                          if re.match(r"resnet_\d_1\.", k)])
  with pytest.raises(gan_stability.LayoutError, match="not a GAN_stability"):
    gan_stability.split_entries({"net.weight": np.zeros(3)})
  only_d = pickle.dumps({"discriminator": networks["discriminator"]})
  with pytest.raises(gan_stability.LayoutError, match="holds no 'generator' network"):
    gan_stability.read_networks(only_d)


def test_launch_script_errors_are_one_line(tmp_path):
  not_torch = tmp_path / "imagenet-8c505f47.pt"
  not_torch.write_text("<html>AccessDenied</html>")  # What a failed download leaves.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(_ROOT)}
  command = [sys.executable, str(_ROOT / "launch" / "convert_gan_stability.py"),
             f"--src={not_torch}", f"--workdir={tmp_path / 'converted'}"]
  result = subprocess.run(command, capture_output=True, text=True, check=False, env=env,
                          timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
  assert f"error: {not_torch}: not a GAN_stability checkpoint" in result.stderr


def test_adafm_finetune_starts_from_the_converted_workdir(reference, class_workdir):
  """The converted workdir is an init_checkpoint: AdaFM's transfer (what a finetune's
  init runs) freezes the authors' G groups nearest the image and takes the authors' D.
  The fresh model is only shapes here: a real 128 x 128 init is minutes of CPU."""
  del reference
  workdir = class_workdir[1]
  config = finetune.get_config("adafm,quick")
  config.init_checkpoint = workdir
  config = checkpoints.inherit_model_config(config, workdir)
  assert (config.model, config.resolution, config.resnet.nf) == ("adafm", 128, 8)
  gan = builder.build_gan(config)
  shapes = jax.eval_shape(gan.init, jax.random.key(0))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  fresh = {"g_params": zeros[0]["params"], "g_state": {}, "d_params": zeros[1]["params"],
           "d_state": {}}
  _, converted = checkpoints.restore_params(workdir)
  loaded = gan.transfer(fresh, converted)
  for name, fresh_name in (("g_params", "g_params"), ("g_ema_params", "g_params"),
                           ("d_params", "d_params")):  # As train.load_init_params checks.
    assert jax.tree.map(np.shape, loaded[name]) == jax.tree.map(np.shape, fresh[fresh_name])
  general = traverse_util.flatten_dict(loaded["g_params"][gan_lib.GENERAL])
  source = traverse_util.flatten_dict(converted["generator"])
  assert general and set(general) < set(source)
  for path, value in general.items():
    np.testing.assert_array_equal(value, source[path], err_msg="/".join(path))
  jax.tree.map(np.testing.assert_array_equal, loaded["d_params"], converted["discriminator"])


def test_base_config_recipe_travels_along(class_workdir):
  saved = checkpoints.restore_raw_config(class_workdir[1])
  assert saved.optim.g_lr == ps_pretrain.get_config("resnet").optim.g_lr
  assert saved.converted_from == str(FIXTURE / "model.pt")
  assert saved.converted_entries.g_ema_params == "'generator'"
