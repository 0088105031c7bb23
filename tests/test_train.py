"""The sharded train step, checkpoint/resume, the main job's outputs, config errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantransfer_jax import builder
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax import parallel
from gantransfer_jax import train
from gantransfer_jax import validation
from gantransfer_jax import writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  config = ps_pretrain.get_config("tiny")
  config.update(overrides)
  return config


def tiny_config_without_path_length(**overrides):
  """One step variant to compile (R1 every step); path length is tested separately."""
  config = tiny_config(**overrides)
  config.loss.pl_weight = 0.0
  return config


def run_steps(config, devices, num_steps):
  setup = train.build(config, parallel.create_mesh(devices))
  state, history = setup.state, []
  for step in range(num_steps):
    state, metrics = setup.train_step(state, setup.data,
                                      **train.regularizer_schedule(step, config))
    history.append(metrics)
  return jax.device_get(state), jax.device_get(history)


def assert_trees_close(a, b, **tolerance):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tolerance), a, b)


def test_two_devices_match_one_device_on_the_same_global_batch():
  config = tiny_config()  # Step 0 runs R1 and path length: one compile covers all terms.
  one, metrics_one = run_steps(config, jax.devices()[:1], num_steps=1)
  two, metrics_two = run_steps(config, jax.devices()[:2], num_steps=1)
  assert set(metrics_one[0]) >= {"loss/d", "loss/g", "loss/r1", "loss/pl"}
  assert_trees_close(metrics_one, metrics_two, rtol=1e-4, atol=1e-5)
  assert_trees_close(one.g_params, two.g_params, rtol=1e-4, atol=1e-5)
  assert_trees_close(one.d_params, two.d_params, rtol=1e-4, atol=1e-5)
  assert_trees_close(one.g_ema_params, two.g_ema_params, rtol=1e-4, atol=1e-5)
  # The step really trains: parameters moved away from their initial values.
  fresh = jax.device_get(train.init_train_state(
      config, builder.build_gan(config), *train.make_optimizers(config)))
  moved = jax.tree.map(lambda x, y: np.abs(x - y).max(), fresh.d_params, one.d_params)
  assert max(jax.tree.leaves(moved)) > 0


def test_rounds_average_the_gradients_of_their_parts_of_the_batch():
  # Each round draws its part of the batch from fold_in(key, round); the accumulated
  # gradient must be the gradient of the whole batch's mean loss (numpy, by hand).
  weights = np.array([0.5, -1.0, 2.0], np.float32)
  key = jax.random.key(3)

  def grad_fn(count, round_key):
    x = jax.random.normal(round_key, (4, 3))
    loss = lambda w: jnp.mean((x @ w) ** 2)
    return jax.grad(loss)(jnp.asarray(weights)), (count + 1, {"m": jnp.sum(x)})

  grads, count, metrics = train.accumulate_rounds(grad_fn, weights, 0, key, rounds=3)
  x = np.concatenate([np.asarray(jax.random.normal(jax.random.fold_in(key, r), (4, 3)))
                      for r in range(3)])
  np.testing.assert_allclose(grads, 2 * x.T @ (x @ weights) / len(x), rtol=1e-5)
  assert int(count) == 3  # The carry went through every round, in turn.
  np.testing.assert_allclose(metrics["m"], x.sum() / 3, rtol=1e-5)
  # One round is the plain gradient with the unsplit key.
  grads_one, count_one, _ = train.accumulate_rounds(grad_fn, weights, 0, key, rounds=1)
  np.testing.assert_allclose(grads_one, grad_fn(0, key)[0])
  assert count_one == 1


def _compile_first_step(config, devices):
  setup = train.build(config, parallel.create_mesh(devices))
  lowered = setup.train_step.lower(setup.state, setup.data, do_r1=True, do_pl=True)
  return setup, lowered.compile()


def test_batch_rounds_train_on_two_devices_and_shrink_the_planned_memory():
  config = tiny_config()
  config.batch_size = 16
  config.batch_rounds = 2
  setup, step = _compile_first_step(config, jax.devices()[:2])
  fresh = jax.device_get(setup.state)
  state, metrics = jax.device_get(step(setup.state, setup.data))
  assert set(metrics) >= {"loss/d", "loss/g", "loss/r1", "loss/pl"}
  assert all(np.isfinite(v) for v in metrics.values())
  for name in ("g_params", "d_params"):
    moved = jax.tree.map(lambda x, y: np.abs(x - y).max(), getattr(fresh, name),
                         getattr(state, name))
    assert max(jax.tree.leaves(moved)) > 0, name
  # The rounds run one after another: XLA holds one round's activations, not all.
  rounds_temp = step.memory_analysis().temp_size_in_bytes
  config.batch_rounds = 1
  whole_temp = _compile_first_step(config, jax.devices()[:2])[1].memory_analysis().temp_size_in_bytes
  assert rounds_temp < 0.75 * whole_temp, (rounds_temp, whole_temp)


def test_regularizer_schedule_is_lazy():
  config = tiny_config()
  config.loss.r1_interval = 4
  config.loss.pl_interval = 2
  flags = [train.regularizer_schedule(s, config) for s in range(4)]
  assert [f["do_r1"] for f in flags] == [True, False, False, False]
  assert [f["do_pl"] for f in flags] == [True, False, True, False]
  config.loss.pl_weight = 0.0
  assert not any(train.regularizer_schedule(s, config)["do_pl"] for s in range(4))


def test_main_job_writes_checkpoints_metrics_and_samples_and_resumes_exactly(tmp_path):
  config = tiny_config_without_path_length(
      total_steps=4, log_every=2, sample_every=2, checkpoint_every=2)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))

  resumed_dir = str(tmp_path / "resumed")
  train.train_and_evaluate(tiny_config_without_path_length(
      total_steps=2, log_every=2, sample_every=2, checkpoint_every=2), resumed_dir)
  resumed = train.train_and_evaluate(config, resumed_dir)
  assert int(resumed.step) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight),
               jax.device_get(resumed))

  workdir = tmp_path / "straight"
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert sorted(os.listdir(workdir / "samples")) == [
      "real_vs_generated.png", "step_0000000.png", "step_0000002.png", "step_0000004.png"]
  records = writers.read_metrics(str(workdir))
  assert [r["step"] for r in records] == [2, 4]
  for record in records:
    for key in ("loss/d", "loss/g", "loss/r1", "perf/img_per_sec", "perf/step_time_ms"):
      assert np.isfinite(record[key]), key
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["resolution"] == 16

  restored_config, params = checkpoints.restore_params(str(workdir))
  assert restored_config.stylegan2.channel_max == config.stylegan2.channel_max
  np.testing.assert_array_equal(
      jax.tree.leaves(params["generator_ema"])[0],
      jax.tree.leaves(jax.device_get(straight.g_ema_params))[0])


@pytest.mark.parametrize("field, value, message", [
    ("resolution", 48, "power of two"),
    ("batch_size", 6, "multiple of the number of devices"),
    ("data.source", "synth:nope", "primitives_ps"),
    ("loss.kind", "wgan", "loss.kind 'wgan' is unknown"),
    ("augment", "color,zoom", "augment"),
    ("model", "biggan", "model 'biggan' is unknown"),
    ("batch_rounds", 3, "must be a multiple of batch_rounds \\(3\\)"),
])
def test_bad_configs_fail_with_their_message(tmp_path, field, value, message):
  config = tiny_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(validation.ConfigError, match=message):
    validation.validate_train_config(config, str(tmp_path))


def test_unwritable_workdir_fails_clearly(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(validation.ConfigError, match="not writable"):
    validation.validate_train_config(tiny_config(), str(blocker / "workdir"))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "gantransfer_jax.main", "--config=configs/ps_pretrain.py:tiny",
         f"--workdir={workdir}", "--config.total_steps=100000", "--config.log_every=1",
         "--config.checkpoint_every=100000", "--config.sample_every=100000",
         "--config.loss.pl_weight=0"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    assert time.time() < deadline, "training never logged a step"
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  output, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, output.decode()[-3000:]
  steps = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
  assert len(steps) == 1 and steps[0] >= 2
