"""launch/sweep.py: commands, the finished check, resuming a grid, the results tables.

A fake trainer (a stdlib-only script taking the real trainer's arguments) stands in
for `python -m gantransfer_jax.main`: it writes what training leaves in a workdir
(config.json, checkpoints/<total_steps>/, metrics.jsonl) and logs each invocation.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys

import pytest

_SWEEP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "launch", "sweep.py")
_spec = importlib.util.spec_from_file_location("sweep", _SWEEP)
sweep = importlib.util.module_from_spec(_spec)
sys.modules["sweep"] = sweep  # Dataclasses look their module up there.
_spec.loader.exec_module(sweep)

FAKE_TRAINER = r'''
import json, os, sys

args = dict(a.split("=", 1) for a in sys.argv[1:])
workdir = args["--workdir"]
method = args["--config"].rsplit(":", 1)[1].split(",")[0]
seed = int(args["--config.seed"])
total = int(args.get("--config.total_steps", 10))
source = args["--config.data.source"]
with open(os.environ["FAKE_TRAINER_LOG"], "a") as f:
  f.write(json.dumps({"run": os.path.basename(workdir), "argv": sys.argv[1:],
                      "device": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
print("fake training", workdir)
if source == "broken":
  print("ValueError: the fake dataset is broken")
  sys.exit(3)
os.makedirs(os.path.join(workdir, "checkpoints", str(total)), exist_ok=True)
config = {"task": "finetune", "method": method, "seed": seed, "total_steps": total,
          "batch_size": 100, "init_checkpoint": args.get("--config.init_checkpoint"),
          "data": {"source": source, "num_images": int(args["--config.data.num_images"])}}
with open(os.path.join(workdir, "config.json"), "w") as f:
  json.dump(config, f)
with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
  for step, fid in ((total // 2, 100.0 + seed), (total, 50.0 + seed)):
    f.write(json.dumps({"step": step, "perf/kimg": step / 10, "eval/fid": fid,
                        "eval/kid": 0.1, "eval/precision": 0.5,
                        "eval/recall": 0.2 + seed / 10}) + "\n")
'''


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
  script = tmp_path / "fake_trainer.py"
  script.write_text(FAKE_TRAINER)
  log = tmp_path / "invocations.jsonl"
  monkeypatch.setenv("FAKE_TRAINER_LOG", str(log))

  def invocations():
    if not log.exists():
      return []
    return [json.loads(line) for line in log.read_text().splitlines()]

  return f"{sys.executable} {script}", invocations


def test_build_command():
  run = sweep.Run("freezed", "folder:/data/afhq/cat", 10, 2)
  assert run.name == "freezed_cat_n10_s2"
  extra = ["--config.init_checkpoint=ps", "--config.eval_every=5"]
  assert sweep.build_command(run, "root", extra, quick=True, config_file="configs/finetune.py",
                             command_prefix=["py", "-m", "gantransfer_jax.main"]) == [
      "py", "-m", "gantransfer_jax.main", "--config=configs/finetune.py:freezed,quick",
      "--workdir=root/freezed_cat_n10_s2", "--config.data.source=folder:/data/afhq/cat",
      "--config.data.num_images=10", "--config.seed=2", "--config.init_checkpoint=ps",
      "--config.eval_every=5"]
  # Scratch is the random-initialisation baseline whatever the grid's overrides.
  command = sweep.build_command(sweep.Run("scratch", "orl_faces", 100, 0), "r", extra)
  assert command[:3] == [sys.executable, "-m", "gantransfer_jax.main"]
  assert command[3] == f"--config={sweep.CONFIG_FILE}:scratch"
  assert command[-1] == "--config.eval_every=5"
  assert not any("init_checkpoint" in a for a in command)


def test_dataset_slugs_and_grid_clashes():
  assert [sweep.dataset_slug(s) for s in (
      "orl_faces", "folder:/data/afhq/cat/", "npz:/x/faces.npz",
      "tfds:oxford_flowers102:train", "folder:/my images/dogs & cats")] == [
          "orl_faces", "cat", "faces", "oxford_flowers102-train", "dogs-cats"]
  with pytest.raises(ValueError, match="share workdirs"):
    sweep.make_grid(["scratch"], ["folder:/a/cat", "folder:/b/cat"], [10], [0])


def test_is_finished(tmp_path):
  workdir = tmp_path / "run"
  assert not sweep.is_finished(str(workdir))  # Never started.
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"total_steps": 10}))
  assert not sweep.is_finished(str(workdir))  # No checkpoint yet.
  (workdir / "checkpoints" / "5").mkdir(parents=True)
  (workdir / "checkpoints" / "10.orbax-checkpoint-tmp-1").mkdir()  # An unfinished save.
  assert not sweep.is_finished(str(workdir))
  (workdir / "checkpoints" / "10").mkdir()
  assert sweep.is_finished(str(workdir))
  assert not sweep.is_finished(str(workdir), total_steps=20)  # --config.total_steps=20.


def test_sweep_resumes_a_partly_finished_grid(tmp_path, fake_trainer, capsys):
  prefix, invocations = fake_trainer
  root = str(tmp_path / "sweep")
  extra = ["--config.init_checkpoint=/ckpts/ps", "--config.total_steps=10"]
  argv = [f"--root={root}", "--methods=scratch,transfergan",
          "--datasets=orl_faces,npz:/d/cats.npz", "--shots=10", "--seeds=0,1", "--parallel=2",
          "--devices=3,5", f"--command_prefix={prefix}", *extra]
  grid = sweep.make_grid(["scratch", "transfergan"], ["orl_faces", "npz:/d/cats.npz"], [10],
                         [0, 1])
  names = [run.name for run in grid]
  # Three runs finished earlier; one stopped at step 5 of 10 (must run again).
  done = ["scratch_orl_faces_n10_s0", "transfergan_cats_n10_s1", "scratch_cats_n10_s1"]
  report = sweep.run_sweep([run for run in grid if run.name in done], root, extra,
                           command_prefix=prefix.split(), poll_seconds=0.05)
  assert sorted(report.completed) == sorted(done)
  partial = os.path.join(root, "transfergan_orl_faces_n10_s0")
  os.makedirs(os.path.join(partial, "checkpoints", "5"))
  with open(os.path.join(partial, "config.json"), "w") as f:
    json.dump({"total_steps": 10}, f)
  before = len(invocations())

  assert sweep.main(argv) == 0

  new = invocations()[before:]
  assert sorted(i["run"] for i in new) == sorted(set(names) - set(done))
  assert {i["device"] for i in new} == {"3", "5"}  # Both parallel slots, each its device.
  for i in new:  # Scratch never gets the init checkpoint.
    assert any("init_checkpoint" in a for a in i["argv"]) == i["run"].startswith("transfergan")
  printed = capsys.readouterr().out
  assert "5 of 8 runs to do, 3 finished already" in printed
  assert "finished already, skipped" in printed

  with open(os.path.join(root, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["run"] for r in rows) == sorted(names)
  by_run = {r["run"]: r for r in rows}
  assert by_run["scratch_cats_n10_s1"]["init"] == "random"
  assert by_run["transfergan_cats_n10_s1"]["init"] == "ps"
  assert by_run["transfergan_cats_n10_s1"]["dataset"] == "npz:/d/cats.npz"
  assert float(by_run["transfergan_cats_n10_s1"]["fid"]) == 51.0
  assert float(by_run["transfergan_cats_n10_s1"]["best_fid"]) == 51.0
  assert float(by_run["transfergan_cats_n10_s1"]["convergence_kimg"]) == 1.0
  assert {r["status"] for r in rows} == {"finished"}
  markdown = open(os.path.join(root, "results.md")).read()
  assert all(name in markdown for name in names)
  # Seeds 0 and 1 have final FIDs 50 and 51: mean 50.5, sample std 0.71.
  assert "| transfergan | ps | orl_faces | 10 | 2 | 50.5 ± 0.71 |" in markdown

  # Everything finished: a third pass trains nothing.
  before = len(invocations())
  assert sweep.main(argv) == 0
  assert len(invocations()) == before


def test_a_runs_log_keeps_the_time_of_every_invocation(tmp_path, fake_trainer):
  prefix, _ = fake_trainer
  root = str(tmp_path / "sweep")
  (run,) = sweep.make_grid(["scratch"], ["orl_faces"], [10], [0])
  workdir = run.workdir(root)
  assert sweep.logged_seconds(workdir) is None  # No log yet.
  for total in (5, 10):  # A run stopped at 5 of 10 steps, then finished.
    sweep.run_sweep([run], root, [f"--config.total_steps={total}"],
                    command_prefix=prefix.split(), poll_seconds=0.05)
  first, second = [float(line.rsplit(" after ", 1)[1].split()[0])
                   for line in open(os.path.join(workdir, sweep.LOG_FILE))
                   if " exited with code 0 after " in line]
  assert first > 0 and second > 0
  assert sweep.logged_seconds(workdir) == pytest.approx(first + second)
  # A finished run's rerun skips it and adds nothing.
  sweep.run_sweep([run], root, ["--config.total_steps=10"], command_prefix=prefix.split())
  assert sweep.logged_seconds(workdir) == pytest.approx(first + second)


def test_failed_runs_are_reported_and_tabulated(tmp_path, fake_trainer, capsys):
  prefix, invocations = fake_trainer
  root = str(tmp_path / "sweep")
  runs = sweep.make_grid(["scratch"], ["orl_faces", "broken"], [10], [0])
  report = sweep.run_sweep(runs, root, ["--config.total_steps=4"],
                           command_prefix=prefix.split(), poll_seconds=0.05)
  assert report.completed == ["scratch_orl_faces_n10_s0"]
  assert report.failed == {"scratch_broken_n10_s0": 3}
  printed = capsys.readouterr().out
  assert "scratch_broken_n10_s0: FAILED with return code 3" in printed
  assert "ValueError: the fake dataset is broken" in printed  # The tail of its sweep.log.
  assert len(invocations()) == 2

  csv_path, md_path = sweep.collect(runs, root)
  with open(csv_path) as f:
    rows = {r["run"]: r for r in csv.DictReader(f)}
  assert rows["scratch_broken_n10_s0"]["status"] == "unfinished"
  assert rows["scratch_broken_n10_s0"]["fid"] == ""
  assert "No evaluation (yet) in: scratch_broken_n10_s0" in open(md_path).read()


def test_dry_run_and_pass_through_checks(tmp_path, fake_trainer, capsys):
  prefix, invocations = fake_trainer
  argv = [f"--root={tmp_path}", "--methods=scratch", "--datasets=orl_faces", "--shots=5",
          f"--command_prefix={prefix}", "--dry_run", "--config.eval_every=2"]
  assert sweep.main(argv) == 0
  assert "--config.eval_every=2" in capsys.readouterr().out
  assert not invocations()
  with pytest.raises(SystemExit):
    sweep.main(argv + ["--bogus=1"])
  assert "only --config.* arguments are passed through" in capsys.readouterr().err


@pytest.mark.parametrize("quick", [False, True])
def test_methods_from_random_weights_never_get_the_init_checkpoint(quick):
  # The presets' config.init decides (DIP's baselines start from scratch too).
  extra = ["--config.init_checkpoint=workdirs/ps_quick"]
  gets_checkpoint = {
      method: any(a.startswith("--config.init_checkpoint") for a in sweep.build_command(
          sweep.Run(method, "orl_faces", 10, 0), "root", extra, quick=quick))
      for method in ("scratch", "dip", "dip_diffaug", "transfergan", "freezed",
                     "dip_freezed", "adafm")}
  assert gets_checkpoint == {"scratch": False, "dip": False, "dip_diffaug": False,
                             "transfergan": True, "freezed": True, "dip_freezed": True,
                             "adafm": True}
