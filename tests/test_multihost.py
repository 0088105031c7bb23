"""Several processes, for real: 2 processes x 2 CPU devices on localhost vs 1 process x 4.

The multi-process run is launched the documented way: each process gets
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and runs the command-line
entry point (`gantransfer_jax.main`), whose `parallel.maybe_initialize_distributed`
joins the processes; they talk through gloo, JAX's CPU collectives. Both runs do the
same pipeline: pretraining (tiny preset), finetuning on a folder of ORL faces with FID
in the loop, the evaluate task and the sample command. Every result must equal the
single-process run's, and files are written by process 0 only (an audit hook records
what process 1 opens for writing; Orbax's checkpoint files are the one exception, as
every process must take part in a save).

This module is also the worker: `python tests/test_multihost.py ROOT FACES FID`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
# Generous for a loaded 2-core machine; a hang (a process waiting in a collective for
# a peer that died) ends here instead of at pytest's global timeout.
WORKER_TIMEOUT_S = 900
RESULT_FILE = "worker.json"
# Timing and per-process values that legitimately differ between the two runs.
_UNCOMPARED_METRICS = ("perf/",)
# Not bit for bit: gloo sums the four devices' gradient (and loss) partials in another
# order than XLA's in-process all-reduce, so float32 results differ by rounding.
# Measured after 2 steps: losses 2e-7 relative, parameters 2e-6 absolute (Adam's
# normalised updates of lr 2e-3 carry the rounding); integers and uint8 pixels were equal.
_RTOL, _ATOL = 1e-5, 2e-5
# Parameters and optimiser states: Adam divides each gradient by its own running scale, so
# an element whose gradient nearly cancels carries the rounding in full (lr 2e-3 times a
# sign). Measured since the FIR change (4ff8aea): one of 9216 elements of D's b8/conv1
# weight off by 2.6e-5 beyond rtol, 3.8e-5 absolute on CI; every other leaf below 1.4e-6.
# A real bug moves parameters by about the learning rate (2e-3).
_STATE_ATOL = 1e-4
_EVAL_RTOL = 1e-4  # FID/KID/PR of 6 images of those parameters: measured 1e-6 relative.
_MAX_PIXEL_LEVELS = 1  # A pixel near a rounding boundary may move by one level.


# ---- The pipeline (run by both the workers and the single-process reference) ------------


def pretrain_overrides(root: str) -> list[str]:
  return [f"--workdir={os.path.join(root, 'pretrain')}", "--config.total_steps=2",
          "--config.log_every=1", "--config.sample_every=2", "--config.checkpoint_every=2",
          "--config.loss.pl_weight=0.0"]  # One step variant to compile.


def pretrain_config():
  from configs import ps_pretrain  # pylint: disable=g-import-not-at-top
  config = ps_pretrain.get_config("tiny")
  config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2)
  config.loss.pl_weight = 0.0
  return config


def finetune_config(root: str, faces: str, fid: bool):
  from configs import finetune  # pylint: disable=g-import-not-at-top
  config = finetune.get_config("transfergan")
  config.init_checkpoint = os.path.join(root, "pretrain")
  config.data.source = f"folder:{faces}"
  config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2, batch_size=8,
                eval_every=2 if fid else 0, eval_num_images=6)
  config.loss.pl_weight = 0.0
  config.loss.r1_interval = 1  # One step variant to compile.
  return config


def evaluate_config(root: str, faces: str):
  from configs import evaluate  # pylint: disable=g-import-not-at-top
  config = evaluate.get_config()
  config.checkpoint = os.path.join(root, "finetune")
  config.data.source = f"folder:{faces}"
  config.num_samples = 6
  return config


def run_after_pretraining(root: str, faces: str, fid: bool) -> None:
  """Finetuning, evaluation and sampling: the same calls in both runs."""
  from gantransfer_jax import sample  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top
  from gantransfer_jax.tasks import evaluate  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(finetune_config(root, faces, fid), os.path.join(root, "finetune"))
  if fid:
    evaluate.run(evaluate_config(root, faces), os.path.join(root, "evaluate"))
  sample.write_samples(os.path.join(root, "finetune"), os.path.join(root, "sample"), num=4)


# ---- The worker ----------------------------------------------------------------------------


def _record_writes(root: str) -> list[str]:
  """Paths under `root` this process opens for writing or renames onto (audit hook)."""
  written: list[str] = []
  write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

  def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
      path, mode, flags = args
      writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
                else bool((flags or 0) & write_flags))
    elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
      path, writes = args[1], True
    else:
      return
    path = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else path
    if writes and os.path.abspath(path).startswith(root + os.sep):
      written.append(os.path.abspath(path))

  sys.addaudithook(hook)
  return written


def _auto_detection_error() -> str:
  """What `config.distributed=True` alone says here: no cluster JAX could detect."""
  from gantransfer_jax import parallel  # pylint: disable=g-import-not-at-top
  try:
    parallel.maybe_initialize_distributed(True, environ={})
  except ValueError as e:
    return str(e)
  return "joined"


def worker(root: str, faces: str, fid: bool) -> None:
  written = _record_writes(root)
  auto_detection_error = _auto_detection_error()  # Before any JAX work, as it must be.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gantransfer_jax import main as cli  # pylint: disable=g-import-not-at-top
  configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "configs")
  argv = ["gantransfer_jax.main", f"--config={configs}/ps_pretrain.py:tiny",
          *pretrain_overrides(root)]
  sys.argv = argv  # ml_collections reads the --config.FIELD overrides from sys.argv.
  cli.parse_flags(argv)
  cli.main(argv[:1])  # Joins the processes, as the command line does.
  run_after_pretraining(root, faces, fid)

  import jax  # pylint: disable=g-import-not-at-top
  assert jax.process_count() == NUM_PROCESSES, jax.process_count()
  log = os.path.join(os.path.dirname(root), f"{jax.process_index()}-{RESULT_FILE}")
  with open(log, "w", encoding="utf-8") as f:
    json.dump({"written": sorted(set(written)), "auto_detection_error": auto_detection_error},
              f)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  worker(os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3] == "fid")
  sys.exit(0)


# ---- The test ------------------------------------------------------------------------------

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from gantransfer_jax import checkpoints  # noqa: E402  pylint: disable=wrong-import-position
from gantransfer_jax import parallel  # noqa: E402  pylint: disable=wrong-import-position
from gantransfer_jax import writers  # noqa: E402  pylint: disable=wrong-import-position
from gantransfer_jax.data import sources  # noqa: E402  pylint: disable=wrong-import-position
from gantransfer_jax.pretrained import assets  # noqa: E402  pylint: disable=wrong-import-position
from tests import weights_markers  # noqa: E402  pylint: disable=wrong-import-position

HAS_INCEPTION = os.path.exists(assets.inception_weights_path())


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_faces(folder) -> str:
  """Eight real photos (two ORL people) as a plain image folder."""
  os.makedirs(folder)
  orl = sources.orl_faces_dir()
  for person in ("s1", "s2"):
    for shot in range(1, 5):
      shutil.copy(os.path.join(orl, person, f"{shot}.pgm"),
                  os.path.join(folder, f"{person}_{shot}.pgm"))
  return str(folder)


def _private_cache(folder) -> str:
  """An assets cache of its own (reference statistics are cached by contents, so the
  two runs must not share one), holding the Inception weights if there are any."""
  os.makedirs(folder)
  if HAS_INCEPTION:
    weights = assets.inception_weights_path()
    os.symlink(weights, os.path.join(folder, os.path.basename(weights)))
  return str(folder)


def _worker_env(process_id: int, port: int, cache: str) -> dict[str, str]:
  env = dict(os.environ)
  kept = [f for f in env.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  env.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": " ".join(kept + [f"--xla_force_host_platform_device_count="
                                    f"{DEVICES_PER_PROCESS}"]),
      parallel.COORDINATOR_ADDRESS_ENV: f"127.0.0.1:{port}",
      parallel.NUM_PROCESSES_ENV: str(NUM_PROCESSES),
      parallel.PROCESS_ID_ENV: str(process_id),
      assets.CACHE_ENV_VAR: cache,
      "CUDA_VISIBLE_DEVICES": "",
      "TF_CPP_MIN_LOG_LEVEL": "2",
      # The XLA cache conftest gives this process: a rerun skips the workers' compiles.
      "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
  })
  return env


def _start_workers(root: str, faces: str, cache: str, logs) -> list[subprocess.Popen]:
  port = _free_port()
  fid = "fid" if HAS_INCEPTION else "nofid"
  processes = []
  for i in range(NUM_PROCESSES):
    with open(os.path.join(logs, f"{i}.log"), "w", encoding="utf-8") as log:
      processes.append(subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), root, faces, fid],
          env=_worker_env(i, port, cache), stdout=log, stderr=subprocess.STDOUT,
          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  return processes


def _tail(path: str, lines: int = 40) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    kept = [l for l in f if "is connected to" not in l]  # Gloo's banner lines.
  return "".join(kept[-lines:])


def _wait_for(processes: list[subprocess.Popen], logs: str) -> None:
  """Waits for every worker; the first failure (or the deadline) kills the rest."""
  deadline = time.monotonic() + WORKER_TIMEOUT_S
  try:
    while any(p.poll() is None for p in processes):
      failed = [i for i, p in enumerate(processes) if p.poll() not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(1)
    failed = [i for i, p in enumerate(processes) if p.poll() != 0]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  if failed:
    i = failed[0]
    pytest.fail(f"worker {i} failed (exit {processes[i].returncode}); its log ends:\n"
                + _tail(os.path.join(logs, f"{i}.log")))


def _run_single_process(root: str, faces: str, cache: str) -> None:
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == NUM_PROCESSES * DEVICES_PER_PROCESS
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(assets.CACHE_ENV_VAR, cache)
    train.train_and_evaluate(pretrain_config(), os.path.join(root, "pretrain"))
    run_after_pretraining(root, faces, HAS_INCEPTION)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """(multi-process root, single-process root), both pipelines finished."""
  base = tmp_path_factory.mktemp("multihost")
  faces = _write_faces(base / "faces")
  multi, single = str(base / "multi" / "run"), str(base / "single" / "run")
  os.makedirs(multi)
  os.makedirs(single)
  workers = _start_workers(multi, faces, _private_cache(base / "multi_cache"), str(base))
  try:
    # Meanwhile, the reference: this process has 4 devices (conftest).
    _run_single_process(single, faces, _private_cache(base / "single_cache"))
  finally:
    _wait_for(workers, str(base))
  return multi, single


def _state(workdir: str) -> dict:
  _, state, step = checkpoints.restore_raw(workdir)
  return {"step": step, "state": jax.device_get(state)}


def _assert_trees_close(actual, expected) -> None:
  """Same structure, integers equal, floats within _RTOL/_STATE_ATOL."""
  paths = jax.tree_util.tree_flatten_with_path(expected)[0]
  leaves = jax.tree_util.tree_leaves(actual)
  assert len(leaves) == len(paths)
  for (path, want), got in zip(paths, leaves):
    got, want = np.asarray(got), np.asarray(want)
    name = jax.tree_util.keystr(path)
    assert got.shape == want.shape and got.dtype == want.dtype, name
    if np.issubdtype(want.dtype, np.floating):
      np.testing.assert_allclose(got, want, rtol=_RTOL, atol=_STATE_ATOL, err_msg=name)
    else:
      np.testing.assert_array_equal(got, want, err_msg=name)


def _assert_metrics_close(actual: list[dict], expected: list[dict], rtol: float) -> None:
  assert [sorted(r) for r in actual] == [sorted(r) for r in expected]
  for got, want in zip(actual, expected):
    for key, value in want.items():
      if isinstance(value, float):
        assert got[key] == pytest.approx(value, rel=rtol, abs=_ATOL), (want.get("step"), key)
      else:
        assert got[key] == value, (want.get("step"), key)


def _metrics(workdir: str) -> list[dict]:
  return [{k: v for k, v in record.items() if not k.startswith(_UNCOMPARED_METRICS)}
          for record in writers.read_metrics(workdir)]


def _pixels(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    return np.asarray(image)


def _pngs(folder: str) -> dict[str, np.ndarray]:
  return {name: _pixels(os.path.join(folder, name))
          for name in sorted(os.listdir(folder)) if name.endswith(".png")}


def _assert_pngs_equal(multi: str, single: str) -> None:
  got, want = _pngs(multi), _pngs(single)
  assert got.keys() == want.keys() and want
  for name in want:
    assert got[name].shape == want[name].shape, name
    levels = np.abs(got[name].astype(int) - want[name]).max()
    assert levels <= _MAX_PIXEL_LEVELS, (name, levels)


def _config_json(workdir: str) -> dict:
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    text = f.read()
  return json.loads(text.replace(os.path.dirname(workdir), "ROOT"))


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_training_equals_the_single_process_run(runs, stage):
  multi, single = (os.path.join(root, stage) for root in runs)
  got, want = _state(multi), _state(single)
  assert got["step"] == want["step"] == 2
  _assert_trees_close(got["state"], want["state"])
  _assert_metrics_close(_metrics(multi), _metrics(single), _RTOL)
  assert [r["step"] for r in writers.read_metrics(multi)] == [1, 2]  # Each line once.
  _assert_pngs_equal(os.path.join(multi, "samples"), os.path.join(single, "samples"))
  assert _config_json(multi) == _config_json(single)
  assert len([n for n in os.listdir(multi) if n.startswith("events.out.tfevents")]) == 1


@weights_markers.needs_inception
def test_fid_in_the_loop_equals_the_single_process_run(runs):
  multi, single = (os.path.join(root, "finetune") for root in runs)
  evals = [r for r in _metrics(multi) if "eval/fid" in r]
  assert evals and np.isfinite(evals[-1]["eval/fid"])
  _assert_metrics_close(evals, [r for r in _metrics(single) if "eval/fid" in r], _EVAL_RTOL)
  _assert_trees_close(_state(os.path.join(multi, "best"))["state"],
                      _state(os.path.join(single, "best"))["state"])


@weights_markers.needs_inception
def test_evaluate_task_equals_the_single_process_run(runs):
  reports = []
  for root in runs:
    with open(os.path.join(root, "evaluate", "report.json"), encoding="utf-8") as f:
      report = json.load(f)
    assert report.pop("checkpoint") == os.path.join(root, "finetune")
    reports.append(report)
  _assert_metrics_close([reports[0]], [reports[1]], _EVAL_RTOL)
  assert reports[0]["num_generated"] == 6 and reports[0]["num_reference"] == 8


def test_sample_command_equals_the_single_process_run(runs):
  _assert_pngs_equal(*(os.path.join(root, "sample") for root in runs))


def _worker_result(runs, process_id: int) -> dict:
  path = os.path.join(os.path.dirname(runs[0]), f"{process_id}-{RESULT_FILE}")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def test_only_process_0_writes_outside_checkpoints(runs):
  multi = runs[0]
  assert any(p.endswith("metrics.jsonl") for p in _worker_result(runs, 0)["written"])
  written = _worker_result(runs, 1)["written"]
  # Orbax's own files: every process takes part in a save. Files written and then
  # removed (probes, temporaries) leave nothing behind; nor does an O_TMPFILE open,
  # which names its folder.
  kept = [p for p in written if os.path.isfile(p)
          and checkpoints.CHECKPOINT_DIR not in os.path.relpath(p, multi).split(os.sep)]
  assert not kept, f"process 1 wrote {kept}"


# ---- Launch options ------------------------------------------------------------------------

_ENV = {parallel.COORDINATOR_ADDRESS_ENV: "10.0.0.1:1234", parallel.NUM_PROCESSES_ENV: "4",
        parallel.PROCESS_ID_ENV: "3"}


def test_environment_gives_explicit_initialize_arguments():
  assert parallel.distributed_options(_ENV) == dict(
      coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
  assert parallel.distributed_options({}) is None


@pytest.mark.parametrize("change, message", [
    ({parallel.PROCESS_ID_ENV: ""}, "JAX_PROCESS_ID unset"),
    ({parallel.NUM_PROCESSES_ENV: "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
    ({parallel.PROCESS_ID_ENV: "4"}, r"JAX_PROCESS_ID=4 is not in \[0, JAX_NUM_PROCESSES=4\)"),
    ({parallel.COORDINATOR_ADDRESS_ENV: "10.0.0.1"}, "is not host:port"),
])
def test_incomplete_or_wrong_environment_is_named(change, message):
  with pytest.raises(ValueError, match=message):
    parallel.distributed_options({**_ENV, **change})


def test_distributed_without_a_cluster_names_the_variables(runs):
  # Run in the workers: initialize() refuses to run after any JAX work, as here.
  message = _worker_result(runs, 0)["auto_detection_error"]
  assert "Number of processes must be defined" in message  # JAX's own words.
  assert "set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID" in message


def test_single_process_run_does_not_initialize():
  assert parallel.maybe_initialize_distributed(False, environ={}) is False
