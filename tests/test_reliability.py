"""Nothing silently wrong, nothing lost (issue 14): divergence, one run per workdir,
checkpoint integrity, signals."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantransfer_jax import builder
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax import evaluation
from gantransfer_jax import parallel
from gantransfer_jax import train
from gantransfer_jax import validation
from gantransfer_jax import writers
from gantransfer_jax.metrics import inception
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.pretrained import assets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """The tests' usual tiny StyleGAN2 (R1 every step, no path length: one compile)."""
  config = ps_pretrain.get_config("tiny")
  config.loss.pl_weight = 0.0
  config.update(overrides)
  return config


def checkpoint_steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def assert_all_finite(tree):
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.inexact):
      assert np.isfinite(leaf).all()


def sha256sum_check(step_dir):
  """coreutils' own check of a step's manifest."""
  return subprocess.run(["sha256sum", "--check", "--strict", "--quiet", checkpoints.MANIFEST],
                        cwd=step_dir, capture_output=True, text=True, check=False)


# ---- 1. Divergence ---------------------------------------------------------------------


def test_all_finite_check_names_the_first_non_finite_leaf():
  tree = {"a": jnp.ones(3), "b": {"c": jnp.array([1.0, jnp.inf]), "n": jnp.arange(3)}}
  assert not bool(train._all_finite(tree))
  assert train._first_non_finite_leaf(tree) == "['b']['c']"
  assert bool(train._all_finite({"a": jnp.ones(3), "n": jnp.arange(3)}))
  history = [{"loss/d": jnp.float32(1.0)}, {"loss/d": jnp.float32(jnp.nan)}]
  assert train._first_non_finite_metric(history, first_step=10) == (12, "loss/d")


@pytest.mark.slow
def test_divergence_stops_the_run_and_never_saves_or_rotates_out_finite_checkpoints(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(
      tiny_config(total_steps=2, log_every=2, sample_every=100, checkpoint_every=1,
                  keep_checkpoints=2), workdir)
  assert checkpoint_steps(workdir) == [1, 2]
  for step in (1, 2):  # Every committed step carries a manifest coreutils accepts.
    check = sha256sum_check(os.path.join(workdir, "checkpoints", str(step)))
    assert check.returncode == 0, check.stdout + check.stderr

  def diverging(**overrides):
    # A learning rate no run survives: D's loss is NaN on the first resumed step (3).
    config = tiny_config(total_steps=8, sample_every=100, keep_checkpoints=2,
                         resume_with_changed_config=True, **overrides)
    config.optim.update(g_lr=1e30, d_lr=1e30)
    return config

  # Caught at a log step (no save due) ...
  with pytest.raises(train.DivergenceError, match=r"step 3: loss/d is not finite"):
    train.train_and_evaluate(diverging(log_every=1, checkpoint_every=100), workdir)
  # ... and before a save that is due before the next log step.
  with pytest.raises(train.DivergenceError, match=r"step 3: loss/d is not finite.*step 2"):
    train.train_and_evaluate(diverging(log_every=100, checkpoint_every=1), workdir)

  assert checkpoint_steps(workdir) == [1, 2]  # Nothing saved, nothing rotated out.
  _, state, step = checkpoints.restore_raw(workdir)
  assert step == 2
  assert_all_finite(state)
  for record in writers.read_metrics(workdir):  # No `null` losses were logged.
    assert record["step"] <= 2 and all(v is not None for v in record.values()), record


# ---- 2. One run per workdir ------------------------------------------------------------


def test_a_second_run_on_a_locked_workdir_fails_at_once_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", textwrap.dedent("""
          import sys, time
          from gantransfer_jax import checkpoints
          checkpoints.WorkdirLock(sys.argv[1]).__enter__()
          print("locked", flush=True)
          time.sleep(120)
      """), workdir], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    start = time.perf_counter()
    with pytest.raises(checkpoints.WorkdirInUseError, match=f"pid {holder.pid}"):
      train.train_and_evaluate(tiny_config(), workdir)
    assert time.perf_counter() - start < 30  # Refused before building anything.
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  finally:
    holder.kill()  # kill -9: the kernel drops its flock; the file still names it.
    holder.wait()
  with open(os.path.join(workdir, checkpoints.LOCK_FILE), encoding="utf-8") as f:
    assert f.read().strip() == str(holder.pid)
  with checkpoints.WorkdirLock(workdir):  # A dead holder's lock is taken over.
    with open(os.path.join(workdir, checkpoints.LOCK_FILE), encoding="utf-8") as f:
      assert f.read().strip() == str(os.getpid())


def test_resume_differences_ignore_run_length_and_logging_fields():
  saved = json.loads(tiny_config().to_json_best_effort())
  longer = tiny_config(total_steps=100, log_every=7, sample_every=9, checkpoint_every=11,
                       keep_checkpoints=1, eval_every=5, eval_num_images=50)
  assert validation.resume_differences(saved, longer) == ([], [])
  other = tiny_config()
  other.optim.g_lr = 0.01
  other.data.n_shapes = 3
  other.augment = ""
  assert validation.resume_differences(saved, other) == ([
      "augment: saved 'color,translation,cutout', now ''",
      "data.n_shapes: saved 10, now 3",
      "optim.g_lr: saved 0.002, now 0.01"], [])
  # Fields the code gained or lost since the workdir was written are not the user's.
  del saved["ema_kimg"]
  saved["retired_field"] = 1
  assert validation.resume_differences(saved, tiny_config()) == (
      [], ["ema_kimg (new, now 0.1)", "retired_field (only in the saved config)"])


@pytest.mark.slow
def test_resuming_another_experiment_fails_listing_the_differing_fields(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(total_steps=2, sample_every=100, checkpoint_every=2),
                           workdir)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = f.read()

  other = tiny_config(total_steps=4)
  other.optim.g_lr = 0.01
  other.data.n_shapes = 3
  start = time.perf_counter()
  with pytest.raises(validation.ConfigError) as error:
    train.train_and_evaluate(other, workdir)
  assert time.perf_counter() - start < 30  # Refused before compiling.
  message = str(error.value)
  assert "data.n_shapes: saved 10, now 3" in message and "optim.g_lr" in message
  assert "total_steps" not in message and "resume_with_changed_config=True" in message
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert f.read() == saved  # Not overwritten with the other experiment.
  assert checkpoint_steps(workdir) == [2]

  # A run that never saved a checkpoint is still an experiment: config.json speaks for it.
  early = str(tmp_path / "early")
  os.makedirs(early)
  shutil.copy(os.path.join(workdir, "config.json"), early)
  with pytest.raises(validation.ConfigError, match="config.json differs in.*optim.g_lr"):
    train.train_and_evaluate(other, early)


# ---- 5. Checkpoint integrity -----------------------------------------------------------


_NOISE = np.random.default_rng(0).standard_normal(16384).astype(np.float32)


def small_state(value):
  """Incompressible data: its file is the largest of the step's."""
  return {"w": jnp.asarray(_NOISE + value), "n": {"b": jnp.full((3, 3), value)}}


def assert_state_of(restored, value):
  np.testing.assert_array_equal(restored["w"], _NOISE + np.float32(value))


def save_steps(workdir, values):
  config = tiny_config()
  checkpointer = checkpoints.Checkpointer(workdir, keep=5)
  for step, value in enumerate(values, start=1):
    checkpointer.save(step, small_state(value), config)
  checkpointer.close()


def largest_file(step_dir):
  """The largest of Orbax's files (array data here), not the manifest."""
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names
           if name != checkpoints.MANIFEST]
  return max(files, key=os.path.getsize)


def flip_a_byte(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


DAMAGE = {"flipped byte": flip_a_byte, "truncated": truncate, "deleted": os.remove}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_step_is_reported_and_the_newest_intact_one_restored(
    tmp_path, caplog, damage):
  workdir = str(tmp_path / "run")
  save_steps(workdir, [1.0, 2.0, 3.0])
  step_dir = os.path.join(workdir, "checkpoints", "3")
  DAMAGE[damage](largest_file(step_dir))
  assert sha256sum_check(step_dir).returncode != 0  # coreutils agrees it is damaged.

  checkpointer = checkpoints.Checkpointer(workdir)
  with caplog.at_level(logging.WARNING):
    restored = checkpointer.restore_latest(small_state(0.0))
  assert_state_of(restored, 2.0)
  reports = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert reports and "checkpoints/3 is damaged" in reports[0] and "\n" not in reports[0]
  # Set aside, so the resumed run saves step 3 afresh.
  assert checkpoint_steps(workdir) == [1, 2]
  assert os.listdir(os.path.join(workdir, checkpoints.DAMAGED_DIR)) == ["3"]
  checkpointer.save(3, small_state(4.0), tiny_config())
  checkpointer.close()
  assert sha256sum_check(step_dir).returncode == 0


@pytest.mark.slow
def test_a_run_resumes_bit_exactly_from_the_newest_intact_step(tmp_path):
  config = tiny_config(total_steps=2, log_every=2, sample_every=100, checkpoint_every=1)
  workdir = str(tmp_path / "run")
  straight = jax.device_get(train.train_and_evaluate(config, workdir))
  flip_a_byte(largest_file(os.path.join(workdir, "checkpoints", "2")))

  resumed = jax.device_get(train.train_and_evaluate(config, workdir))  # From step 1.
  jax.tree.map(np.testing.assert_array_equal, straight, resumed)
  assert os.listdir(os.path.join(workdir, checkpoints.DAMAGED_DIR)) == ["2"]
  assert checkpoint_steps(workdir) == [1, 2]
  assert sha256sum_check(os.path.join(workdir, "checkpoints", "2")).returncode == 0


def test_restore_for_analysis_falls_back_too_but_not_from_an_explicit_step(tmp_path):
  workdir = str(tmp_path / "run")
  save_steps(workdir, [1.0, 2.0])
  flip_a_byte(largest_file(os.path.join(workdir, "checkpoints", "2")))
  _, state, step = checkpoints.restore_raw(workdir)
  assert step == 1
  assert_state_of(state, 1.0)
  with pytest.raises(checkpoints.CheckpointError, match="step 2: .* does not match"):
    checkpoints.restore_raw(os.path.join(workdir, "checkpoints", "2"))


def test_steps_without_a_manifest_restore_with_one_warning_and_unreadable_ones_fall_back(
    tmp_path, caplog):
  workdir = str(tmp_path / "run")
  save_steps(workdir, [1.0, 2.0, 3.0])
  for step in (1, 2, 3):  # As written before manifests existed.
    os.remove(os.path.join(workdir, "checkpoints", str(step), checkpoints.MANIFEST))
  truncate(largest_file(os.path.join(workdir, "checkpoints", "3")))

  with caplog.at_level(logging.WARNING):
    restored = checkpoints.Checkpointer(workdir).restore_latest(small_state(0.0))
  assert_state_of(restored, 2.0)
  messages = [r.getMessage() for r in caplog.records]
  assert any("checkpoints/3 is damaged (unreadable" in m for m in messages)
  assert sum("checkpoints/2 has no SHA256SUMS" in m for m in messages) == 1
  assert all(len(m.splitlines()) == 1 for m in messages)


def test_no_intact_step_is_one_error_not_a_fresh_start(tmp_path):
  workdir = str(tmp_path / "run")
  save_steps(workdir, [1.0, 2.0])
  for step in (1, 2):
    flip_a_byte(largest_file(os.path.join(workdir, "checkpoints", str(step))))
  with pytest.raises(checkpoints.CheckpointError, match="no intact checkpoint") as error:
    checkpoints.Checkpointer(workdir).restore_latest(small_state(0.0))
  assert "\n" not in str(error.value)
  assert checkpoint_steps(workdir) == [1, 2]  # Nothing moved or deleted.


# ---- 6. Signals ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_sigterm_ends_the_process():
  script = textwrap.dedent("""
      import os, signal, time
      from gantransfer_jax import train
      with train._StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        assert stop.requested
        print("first signal honoured as a stop request", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
      print("survived the second signal", flush=True)
  """)
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
  assert "first signal honoured" in result.stdout, result.stderr[-2000:]
  assert "survived" not in result.stdout
  assert result.returncode == -signal.SIGTERM


@pytest.mark.slow
def test_a_second_ctrl_c_during_a_save_leaves_no_orbax_thread_waiting(tmp_path):
  # A KeyboardInterrupt inside the blocking part of Orbax's save left writer threads
  # waiting up to 300 s for signals that never came (and the interpreter waits for them
  # at exit). The loop's saves hold the second signal back until the save returns.
  script = textwrap.dedent("""
      import os, signal, sys, threading, time
      import jax.numpy as jnp, ml_collections
      from gantransfer_jax import checkpoints, train
      # Ctrl-C as in a terminal: a KeyboardInterrupt. A process started with SIGINT
      # ignored (a background job of a script: pytest-xdist workers can be) would
      # otherwise take the second signal's other path, SIG_DFL's exit.
      signal.signal(signal.SIGINT, signal.default_int_handler)
      state = {f"w{i}": jnp.full((64, 64), float(i)) for i in range(100)}
      config = ml_collections.ConfigDict({"a": 1})
      for k in range(12):  # The second signal lands at different points of the save.
        checkpointer = checkpoints.Checkpointer(os.path.join(sys.argv[1], str(k)))
        with train._StopSignal() as stop:
          os.kill(os.getpid(), signal.SIGINT)
          time.sleep(0.05)
          assert stop.requested
          second = threading.Timer(0.002 * k, os.kill, (os.getpid(), signal.SIGINT))
          try:
            with stop.uninterrupted():
              second.start()
              checkpointer.save(1, state, config)
            time.sleep(1)
            outcome = "not interrupted"
          except KeyboardInterrupt:
            outcome = "interrupted after the save"
          second.join()
        checkpointer.close()
        waiting = [t.name for t in threading.enumerate()
                   if t is not threading.main_thread() and not t.daemon and t.is_alive()]
        print(k, outcome, "waiting:", waiting, flush=True)
  """)
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=240, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert len(lines) == 12 and all(line.endswith("waiting: []") for line in lines), lines
  assert all("interrupted after the save" in line for line in lines), lines
  assert time.perf_counter() - start < 200  # The exit did not wait out a 300 s timeout.
  for k in range(12):  # Every save completed: restorable, sealed.
    assert sha256sum_check(str(tmp_path / str(k) / "checkpoints" / "1")).returncode == 0


@pytest.mark.slow
def test_evaluation_is_abandoned_between_batches_when_a_stop_is_requested(tmp_path):
  config = tiny_config()
  gan = builder.build_gan(config)
  mesh = parallel.create_mesh()
  calls = []

  def features(images):
    calls.append(len(images))
    return np.asarray(images).reshape(len(images), -1)[:, :8].astype(np.float64)

  evaluator = evaluation.Evaluator(config, gan, mesh, num_images=64 * 8, num_reference=64,
                                   feature_fn=features, stats_cache_dir=str(tmp_path))
  calls.clear()  # The reference set's.
  g_params, g_state = gan_lib.split_variables(gan.init(jax.random.key(0))[0])
  assert evaluator(g_params, g_state, should_stop=lambda: len(calls) >= 2) is None
  assert len(calls) == 2  # Of 8 batches.


@pytest.mark.slow
def test_a_stop_request_during_a_periodic_evaluation_abandons_it(tmp_path, monkeypatch):
  # Features are faked (the point is when the loop stops, not FID); the weights file only
  # has to exist for the config check. Everything cached goes under tmp_path.
  monkeypatch.setenv(assets.CACHE_ENV_VAR, str(tmp_path / "cache"))
  weights = assets.inception_weights_path()
  weights.parent.mkdir(parents=True)
  weights.write_bytes(b"")
  batches = 8  # eval_num_images / 64, for the reference set and for the generated images.
  calls = []

  def features(images):
    calls.append(len(images))
    if len(calls) == batches + 2:  # The second generated batch: a preemption notice.
      os.kill(os.getpid(), signal.SIGTERM)
    return np.asarray(images, np.float64).reshape(len(images), -1)[:, :8]

  monkeypatch.setattr(inception, "load", lambda **_: features)
  workdir = str(tmp_path / "run")
  state = train.train_and_evaluate(
      tiny_config(total_steps=4, log_every=2, sample_every=100, checkpoint_every=100,
                  eval_every=2, eval_num_images=64 * batches), workdir)
  assert len(calls) == batches + 2  # Abandoned before the third of its eight batches.
  assert int(state.step) == 2 and checkpoint_steps(workdir) == [2]
  assert not [r for r in writers.read_metrics(workdir) if "eval/fid" in r]
