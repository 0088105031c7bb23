"""BSA (batch statistics adaptation) over a frozen SNGAN: transform, training, sampling."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from gantransfer_jax import builder
from gantransfer_jax import bsa
from gantransfer_jax import checkpoints
from gantransfer_jax import config_files
from gantransfer_jax import validation
from gantransfer_jax import writers
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.models import sngan
from gantransfer_jax.tasks import bsa as bsa_task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40


def _save_source(workdir: str, preset: str) -> str:
  """A workdir whose step-0 checkpoint is a fresh `ps_pretrain.py:PRESET` model."""
  config = config_files.get_config(f"ps_pretrain:{preset}")
  g_vars, d_vars = builder.build_gan(config).init(jax.random.key(7))
  g_params, g_state = gan_lib.split_variables(g_vars)
  d_params, d_state = gan_lib.split_variables(d_vars)
  state = {"step": np.zeros((), np.int32), "g_params": g_params, "g_ema_params": g_params,
           "g_state": g_state, "d_params": d_params, "d_state": d_state}
  checkpoints.save_new_workdir(workdir, jax.device_get(state), config)
  return workdir


def _config(source: str, data: str = "orl_faces", **overrides):
  config = config_files.get_config("finetune:bsa,quick")
  config.update(init_checkpoint=source, batch_size=4, total_steps=STEPS, log_every=10,
                sample_every=STEPS, checkpoint_every=20, num_sample_images=4, **overrides)
  config.data.update(source=data, num_images=4)
  config.bsa.perceptual_resolution = 32
  return config


def _targets(source: str, path: str) -> np.ndarray:
  """4 images the source G makes under other statistics (random scale/shift) from
  N(0, I) latents, as uint8 in an npz: a set BSA can fit exactly, so its fit must show."""
  config, params = checkpoints.restore_params(source)
  config.task = "bsa"
  gan = builder.build_gan(config)
  g_params, g_state = params["generator_ema"], params["generator_state"]
  adaptation = bsa.init_adaptation(gan.statistics_layers(g_params, g_state))
  leaves, tree = jax.tree.flatten(adaptation)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  adaptation = jax.tree.unflatten(
      tree, [x + 0.5 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  z = jax.random.normal(jax.random.key(6), (4, gan.z_dim))
  images = gan.reconstruct({bsa.SOURCE: g_params, bsa.ADAPTATION: adaptation}, g_state, z)
  images = np.clip(np.round((np.asarray(images) + 1) * 127.5), 0, 255).astype(np.uint8)
  np.savez(path, images=images)
  return images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(source workdir, data source, BSA workdir, final state) of a 40-step BSA run."""
  root = tmp_path_factory.mktemp("bsa")
  source = _save_source(str(root / "sngan"), "sngan,tiny")
  _targets(source, str(root / "targets.npz"))
  data = f"npz:{root / 'targets.npz'}"
  workdir = str(root / "bsa")
  config = _config(source, data)
  # 20x the authors' rate for the scale/shift, so that 40 steps show the fit.
  config.bsa.stats_lr = 0.01
  state = bsa_task.run(config, workdir)
  return source, data, workdir, jax.device_get(state)


def test_the_adaptation_starts_as_the_identity_and_acts_on_every_batch_norm():
  generator = sngan.Generator(resolution=16, z_dim=9, embedding_dim=8, width=4,
                              channel_multipliers=(2, 1, 1))
  z = jax.random.normal(jax.random.key(0), (3, 9))
  embedding = jnp.zeros((3, 8))  # The network's conditional input G_emb(cond).
  g_vars = generator.init(jax.random.key(1), z, embedding)
  layers = bsa.statistics_layers(functools.partial(generator.apply, train=False), g_vars, z,
                                 embedding)
  assert sorted(layers) == [("block0", "cbn1"), ("block0", "cbn2"), ("block1", "cbn1"),
                            ("block1", "cbn2"), ("bn_out",)]
  assert layers[("block0", "cbn1")] == 8 and layers[("bn_out",)] == 4
  plain = generator.apply(g_vars, z, embedding, train=False)
  adaptation = bsa.init_adaptation(layers)
  with bsa.adapted(adaptation):
    np.testing.assert_array_equal(generator.apply(g_vars, z, embedding, train=False), plain)
  # A shift of bn_out alone equals adding it to bn_out's own bias (a batch norm's affine).
  shift = jnp.linspace(-0.5, 0.5, 4)
  adaptation["bn_out"]["shift"] = shift
  shifted_vars = jax.tree.map(lambda x: x, g_vars)
  shifted_vars["params"]["bn_out"]["bias"] = g_vars["params"]["bn_out"]["bias"] + shift
  with bsa.adapted(adaptation):
    adapted = generator.apply(g_vars, z, embedding, train=False)
  np.testing.assert_allclose(adapted, generator.apply(shifted_vars, z, embedding, train=False),
                             atol=1e-6)
  assert not np.allclose(adapted, plain)


def test_fitted_gaussian_sampling_has_the_latents_mean_and_covariance():
  latents = jax.random.normal(jax.random.key(0), (5, 6)) * 0.3 + 2.0  # Rank 4 < 6.
  gaussian = bsa.fit_gaussian(latents)
  np.testing.assert_allclose(gaussian["mean"], np.mean(latents, 0), rtol=1e-6)
  np.testing.assert_allclose(gaussian["cov"], np.cov(np.asarray(latents).T), atol=1e-6)
  draws = bsa.gaussian_latents(gaussian, jax.random.normal(jax.random.key(1), (200_000, 6)))
  np.testing.assert_allclose(np.mean(draws, 0), gaussian["mean"], atol=0.01)
  np.testing.assert_allclose(np.cov(np.asarray(draws).T), gaussian["cov"], atol=0.01)


def test_earth_movers_penalty_is_small_for_normal_latents_and_large_for_shifted_ones():
  key = jax.random.key(0)
  normal = jax.random.normal(jax.random.key(1), (64, 4))
  assert float(bsa.earth_movers_penalty(normal + 3.0, key)) > 3 * float(
      bsa.earth_movers_penalty(normal, key))


def test_training_adapts_only_the_statistics_and_latents_and_reconstruction_improves(run):
  source, _, workdir, state = run
  config, pretrained = checkpoints.restore_params(source)
  frozen = state.g_params[bsa.SOURCE]
  jax.tree.map(np.testing.assert_array_equal, frozen, jax.device_get(pretrained["generator_ema"]))
  source_state = {k: v for k, v in state.g_state.items() if k != bsa.GAUSSIAN}
  jax.tree.map(np.testing.assert_array_equal, source_state,
               jax.device_get(pretrained["generator_state"]))
  flat = traverse_util.flatten_dict(state.g_params[bsa.ADAPTATION])
  assert all(not np.allclose(v, 1.0 if p[-1] == "scale" else 0.0) for p, v in flat.items())
  assert (np.abs(state.latents).max(axis=1) > 0).all()  # Every latent left its zero start.

  # The reconstruction error of the 4 images, before (identity, zero latents) and after.
  config.task = "bsa"
  gan = builder.build_gan(config)
  bsa_config, _ = checkpoints.restore_params(workdir)
  images = np.load(bsa_config.data.source[len("npz:"):])["images"] / 127.5 - 1
  identity = bsa.init_adaptation(gan.statistics_layers(frozen, source_state))
  before = bsa.l1_distance(gan.reconstruct({bsa.SOURCE: frozen, bsa.ADAPTATION: identity},
                                           state.g_state, np.zeros_like(state.latents)), images)
  after = bsa.l1_distance(gan.reconstruct(state.g_params, state.g_state, state.latents),
                          images)
  assert float(after) < 0.5 * float(before), (float(before), float(after))
  records = [r for r in writers.read_metrics(workdir) if "loss/l1" in r]
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  assert records[-1]["loss/l1"] < records[0]["loss/l1"]
  for name in ("samples/step_0000040.png", "samples/reconstructions.png"):
    assert os.path.isfile(os.path.join(workdir, name))


def test_the_checkpoint_stores_the_gaussian_of_its_latents_and_samples_from_it(run):
  _, _, workdir, state = run
  config, params = checkpoints.restore_params(workdir)
  gaussian = params["generator_state"][bsa.GAUSSIAN]
  np.testing.assert_allclose(gaussian["mean"], state.latents.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gaussian["cov"], np.cov(state.latents.T), rtol=1e-4, atol=1e-6)
  gan = builder.build_gan(config)
  eps = jax.random.normal(jax.random.key(3), (4, gan.z_dim))
  sampled = gan.sample(params["generator_ema"], params["generator_state"], eps, None, None)
  expected = gan.reconstruct(params["generator_ema"], params["generator_state"],
                             bsa.gaussian_latents(gaussian, eps))
  np.testing.assert_allclose(sampled, expected, atol=1e-6)
  # Not N(0, I) latents: the fitted Gaussian is what makes the samples.
  assert not np.allclose(sampled, gan.reconstruct(params["generator_ema"],
                                                  params["generator_state"], eps), atol=1e-3)


def _cli(*args):
  env = {**os.environ, "PYTHONPATH": REPO}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900, check=False)


def test_a_run_resumes_and_samples_through_the_cli(run, tmp_path):
  source, data, workdir, state = run
  more = STEPS + 4
  result = _cli("-m", "gantransfer_jax.main", "--config=configs/finetune.py:bsa,quick",
                f"--workdir={workdir}", f"--config.init_checkpoint={source}",
                f"--config.data.source={data}", "--config.data.num_images=4",
                "--config.batch_size=4", f"--config.total_steps={more}",
                "--config.bsa.stats_lr=0.01",
                "--config.log_every=2", f"--config.sample_every={more}",
                "--config.checkpoint_every=20", "--config.num_sample_images=4",
                "--config.bsa.perceptual_resolution=32")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from {workdir}/checkpoints at step {STEPS}" in result.stderr
  _, resumed, step = checkpoints.restore_raw(workdir)
  assert step == more
  assert not np.allclose(resumed["latents"], state.latents)
  out = tmp_path / "grids"
  result = _cli("-m", "gantransfer_jax.sample", f"--checkpoint={workdir}", f"--out={out}",
                "--num=4")
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.isfile(out / "samples.png")
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["task"] == "bsa"


def test_a_source_without_batch_statistics_is_one_line(tmp_path):
  stylegan2 = _save_source(str(tmp_path / "sg2"), "tiny")
  config = _config(stylegan2)
  with pytest.raises(validation.ConfigError) as error:
    bsa_task.run(config, str(tmp_path / "run"))
  problems = str(error.value).splitlines()[1:]
  assert len(problems) == 1
  assert "BSA adapts the generator's batch-norm statistics" in problems[0]
  assert "'stylegan2' model, which has none" in problems[0]
  result = _cli("-m", "gantransfer_jax.main", "--config=configs/finetune.py:bsa,quick",
                f"--workdir={tmp_path / 'cli'}", f"--config.init_checkpoint={stylegan2}",
                "--config.data.source=orl_faces", "--config.bsa.perceptual=vgg16")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "which has none" in result.stderr and "VGG16 has no offline weights" in result.stderr


def test_the_sweep_passes_the_source_and_tabulates_a_bsa_run(run):
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("sweep", os.path.join(REPO, "launch",
                                                                      "sweep.py"))
  sweep = importlib.util.module_from_spec(spec)
  sys.modules.setdefault("sweep", sweep)  # Its dataclasses look their module up there.
  spec.loader.exec_module(sweep)
  source, data, workdir, _ = run
  command = sweep.build_command(sweep.Run("bsa", data, 4, 0), "root",
                                [f"--config.init_checkpoint={source}"], quick=True)
  assert f"--config.init_checkpoint={source}" in command
  assert any(a.endswith("finetune.py:bsa,quick") for a in command)
  row = sweep.summarize(workdir)
  # The init column names the source run, as for every transfer.
  assert (row["method"], row["init"], row["shots"]) == (
      "bsa", os.path.basename(os.path.normpath(source)), 4)
  assert row["status"] == "no evaluation"  # Finished, without eval_every.
