"""Paper 002's Fig. 11: per-group statistics of a checkpoint's AdaFM modulation, its plot, CLI.

The modulation is `adafm.init` over a tiny ResNet G's general part, perturbed with
known per-group values, saved in a fake AdaFM finetune checkpoint.
"""

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from gantransfer_jax import adafm
from gantransfer_jax import checkpoints
from gantransfer_jax.analysis import modulation as modulation_lib
from gantransfer_jax.models import resnet_gan
from gantransfer_jax.models import smallhead

RESOLUTION, GENERAL_GROUPS, STEP = 16, 2, 7
# Per group, the centre of its perturbed gamma and beta: the boxes must land there.
CENTRES = {"resnet_1": (1.3, 0.2), "resnet_2": (0.7, -0.1)}


@pytest.fixture(scope="module")
def general():
  shapes = jax.eval_shape(resnet_gan.ResNetGenerator(RESOLUTION, z_dim=8, nf=4).init,
                          jax.random.key(0), jax.numpy.zeros((1, 8)))["params"]
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  return smallhead.general_part(params, RESOLUTION, GENERAL_GROUPS)


def _perturbed(general, kind="adafm", seed=0):
  """`adafm.init`'s tree with each factor filled with known values around its group's centre."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(adafm.init(general, adafm.Spec(kind)))
  for path, value in flat.items():
    centre = CENTRES[path[0]][modulation_lib.FACTORS.index(path[-1])]
    flat[path] = (centre + 0.05 * rng.standard_normal(value.shape)).astype(np.float32)
  return traverse_util.unflatten_dict(flat)


def _pooled(modulation, group, factor):
  """The expected pooling: blocks then layers, in order."""
  kernels = modulation[group]
  return np.concatenate([kernels[block][layer][factor].ravel()
                         for block in sorted(kernels, key=int)
                         for layer in sorted(kernels[block])])


def _save(workdir, config, g_params, g_ema_params):
  state = {"step": np.int32(STEP), "g_params": g_params, "g_ema_params": g_ema_params,
           "g_state": {}, "d_params": {"fc": {"bias": np.zeros(1, np.float32)}},
           "d_state": {}}
  checkpointer = checkpoints.Checkpointer(str(workdir))
  checkpointer.save(STEP, state, config)
  checkpointer.close()
  return str(workdir)


def _config(model, kind):
  return ml_collections.ConfigDict(dict(model=model, resolution=RESOLUTION,
                                        adafm=dict(kind=kind, general_g=GENERAL_GROUPS)))


@pytest.fixture(scope="module")
def adafm_run(general, tmp_path_factory):
  """A finetuned AdaFM run: G's modulation perturbed, G_ema's still the identity."""
  trained = _perturbed(general)
  head = {"fc": {"kernel": np.ones((8, 4), np.float32)}}
  g_params = {"head": head, "general": general, "modulation": trained}
  g_ema_params = {**g_params, "modulation": adafm.init(general, adafm.Spec("adafm"))}
  workdir = _save(tmp_path_factory.mktemp("ft_adafm"), _config("adafm", "adafm"), g_params,
                  jax.tree.map(np.asarray, g_ema_params))
  return workdir, trained


def test_statistics_pool_every_kernel_of_a_group(general):
  for kind, per_kernel in (("adafm", lambda c_in, c_out: c_in * c_out),
                           ("fs", lambda c_in, c_out: c_out)):
    modulation = _perturbed(general, kind)
    stats = modulation_lib.modulation_statistics(modulation)
    assert list(stats) == ["resnet_1", "resnet_2"]
    for group, factors in stats.items():
      kernels = [general[group][b][layer]["kernel"] for b in ("0", "1")
                 for layer in adafm.MODULATED_LAYERS]
      for factor in modulation_lib.FACTORS:
        np.testing.assert_array_equal(factors[factor], _pooled(modulation, group, factor))
        assert factors[factor].size == sum(per_kernel(*k.shape[-2:]) for k in kernels)
  identity = modulation_lib.modulation_statistics(adafm.init(general))
  assert all(np.all(f["gamma"] == 1) and np.all(f["beta"] == 0) for f in identity.values())
  with pytest.raises(ValueError, match="no gamma/beta"):
    modulation_lib.modulation_statistics({"resnet_1": {"0": {}}})


def test_command_plots_the_checkpoint(adafm_run, tmp_path, capsys):
  workdir, trained = adafm_run
  out = tmp_path / "figures" / "fig11.png"
  stats = modulation_lib.run(workdir, str(out))
  for group in CENTRES:
    for factor, centre in zip(modulation_lib.FACTORS, CENTRES[group]):
      np.testing.assert_array_equal(stats[group][factor], _pooled(trained, group, factor))
      assert np.median(stats[group][factor]) == pytest.approx(centre, abs=0.02)
  printed = capsys.readouterr().out
  assert f"kind 'adafm') of G, step {STEP}" in printed and "| resnet_2 | beta |" in printed
  with Image.open(out) as image:
    image.load()
    assert image.width > image.height > 100

  # --ema, from the step folder: G_ema's identity modulation.
  ema = modulation_lib.run(os.path.join(workdir, "checkpoints", str(STEP)),
                           str(tmp_path / "ema.png"), ema=True)
  assert all(np.all(f["gamma"] == 1) and np.all(f["beta"] == 0) for f in ema.values())
  assert "of G_ema, step 7" in capsys.readouterr().out


def test_runs_without_modulation_are_refused(general, tmp_path):
  head = {"fc": {"kernel": np.ones((8, 4), np.float32)}}
  smallhead_run = _save(tmp_path / "smallhead", _config("adafm", "none"),
                        {"head": head, "general": general}, {"head": head, "general": general})
  with pytest.raises(modulation_lib.NoModulationError,
                     match="model 'adafm' run with adafm.kind 'none'"):
    modulation_lib.load_modulation(smallhead_run)
  gphead_run = _save(tmp_path / "gphead", _config("resnet", "none"), general, general)
  with pytest.raises(modulation_lib.NoModulationError, match="model 'resnet'"):
    modulation_lib.run(gphead_run, str(tmp_path / "x.png"))
  assert not (tmp_path / "x.png").exists()
  missing = _save(tmp_path / "missing", _config("adafm", "fs"),
                  {"head": head, "general": general}, {"head": head, "general": general})
  with pytest.raises(modulation_lib.NoModulationError, match="g_params has no 'modulation'"):
    modulation_lib.load_modulation(missing)


def test_command_line(adafm_run, general, tmp_path):
  workdir, _ = adafm_run
  out = tmp_path / "cli.png"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "gantransfer_jax.analysis.modulation"]
  result = subprocess.run([*command, f"--checkpoint={workdir}", f"--out={out}", "--ema"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "of G_ema, step 7" in result.stdout and out.exists()
  gphead_run = _save(tmp_path / "gphead", _config("resnet", "none"), general, general)
  bad = subprocess.run([*command, f"--checkpoint={gphead_run}", f"--out={out}"],
                       capture_output=True, text=True, timeout=120, env=env, check=False)
  assert bad.returncode != 0 and "holds no AdaFM modulation" in bad.stderr
