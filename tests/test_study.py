"""launch/study.py: the whole transfer study at a tiny size, end to end, and its rerun.

The real trainer runs (pretraining, four finetune methods, in-loop FID Inception
evaluations); only the sizes shrink: the `tiny` pretraining model, a few steps, one
seed, 8 generated images per evaluation against a 24-image folder target.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import sys

import numpy as np
from PIL import Image
import pytest

from gantransfer_jax import writers
from tests.weights_markers import needs_inception, needs_mobilenet

_STUDY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "launch", "study.py")
_spec = importlib.util.spec_from_file_location("study", _STUDY)
study = importlib.util.module_from_spec(_spec)
sys.modules["study"] = study
_spec.loader.exec_module(study)

# The tiny pretraining model's fields (ps_pretrain.py:tiny): the finetunes' ,quick
# presets get them too, so that scratch has the transfers' architecture.
TINY_MODEL = ["--config.resolution=16", "--config.stylegan2.z_dim=32",
              "--config.stylegan2.w_dim=32", "--config.stylegan2.channel_base=256",
              "--config.stylegan2.channel_max=32", "--config.stylegan2.embedding_dim=32"]


def test_schedule_is_equal_kimg_at_any_batch():
  assert study.schedule(16, 4, 16) == study.Schedule(16, 1000, 250)
  assert study.schedule(16, 4, 8) == study.Schedule(8, 2000, 500)  # DIP + FreezeD's batch.
  with pytest.raises(ValueError, match=r"not a whole number of steps at batch 16"):
    study.schedule(1, 3, 16)
  with pytest.raises(ValueError, match="--evals must be >= 1"):
    study.schedule(16, 0, 16)


def test_batch_size_and_overrides():
  assert study.batch_size("dip_freezed+stylegan2", [], study.sweep.CONFIG_FILE) == 8
  assert study.batch_size("scratch", [], study.sweep.CONFIG_FILE) == 16
  assert study.batch_size("scratch", ["--config.batch_size=4"], study.sweep.CONFIG_FILE) == 4
  extra = study.finetune_overrides(
      ["--config.total_steps=5", "--config.augment=", "--config.eval_every=1"],
      study.Schedule(8, 40, 10), init_checkpoint="ps", eval_num_images=50, subset_seed=3)
  # The study's own schedule replaces the user's, whatever else passes through.
  assert extra == ["--config.augment=", "--config.total_steps=40", "--config.eval_every=10",
                   "--config.eval_num_images=50", "--config.init_checkpoint=ps",
                   "--config.data.subset_seed=3"]


def _target_folder(path, count=24, size=32):
  rng = np.random.default_rng(0)
  ramp = np.linspace(0, 1, size)
  os.makedirs(path)
  for i in range(count):
    image = np.outer(ramp, ramp[::-1] if i % 2 else ramp)[..., None] * rng.uniform(0, 255, 3)
    image = (image + rng.uniform(0, 40, (size, size, 3))).clip(0, 255).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(path, f"{i:02d}.png"))


def _headers(workdir):
  with open(os.path.join(workdir, "sweep.log"), encoding="utf-8") as f:
    return sum(line.startswith("=== ") for line in f)


@needs_inception
@needs_mobilenet
def test_tiny_study_end_to_end_and_rerun(tmp_path, monkeypatch, capsys):
  # One device per training process (the suite's emulated 4 only slow compilation);
  # the suite's persistent XLA cache makes a repeated test run cheap.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  _target_folder(str(tmp_path / "faces"))
  root, out = tmp_path / "root", tmp_path / "results"
  argv = [f"--root={root}", f"--out={out}", "--pretrain_config=configs/ps_pretrain.py:tiny",
          "--pretrain_steps=4", "--pretrain.sample_every=2", "--pretrain.checkpoint_every=4",
          # Regularisers every step: one train-step variant to compile per run.
          "--pretrain.loss.pl_interval=1", "--config.loss.r1_interval=1",
          f"--dataset=folder:{tmp_path / 'faces'}", "--shots=16", "--seeds=0",
          # 32 images: 2 steps at the ,quick batch 16, 4 at DIP + FreezeD's 8.
          "--finetune_kimg=0.032", "--evals=2", "--eval_num_images=8", *TINY_MODEL,
          "--config.log_every=1", "--config.sample_every=2", "--config.checkpoint_every=2"]
  assert study.main(argv) == 0

  runs = {m: f"{m.replace('+', '-')}_faces_n16_s0" for m in study.DEFAULT_METHODS}
  with open(out / "results.csv", encoding="utf-8") as f:
    rows = {row["run"]: row for row in csv.DictReader(f)}
  assert set(rows) == set(runs.values())
  for method, name in runs.items():
    row = rows[name]
    assert row["status"] == "finished" and row["method"] == study.preset(method)
    assert np.isfinite(float(row["fid"])) and float(row["fid"]) > 0
    assert 0 <= float(row["recall"]) <= 1
    assert row["init"] == ("random" if method == "scratch" else study.PRETRAIN_DIR)
    # Equal kimg: every method was evaluated at the same points whatever its batch.
    records = writers.read_metrics(str(root / study.RUNS_DIR / name))
    assert [r["perf/kimg"] for r in records if "eval/fid" in r] == [0.016, 0.032]
  with open(out / study.SUMMARY_CSV, encoding="utf-8") as f:
    summary = list(csv.DictReader(f))
  assert sorted(r["method"] for r in summary) == sorted(map(study.preset, runs))
  assert all(r["seeds"] == "1" and float(r["fid_std"]) == 0 for r in summary)
  assert "Mean ± std over seeds" in (out / "results.md").read_text()
  for image in [study.FIGURE, "pretrain_samples.png",
                *(f"samples_{m.replace('+', '-')}.png" for m in runs)]:
    with Image.open(out / image) as opened:
      assert opened.size[0] > 16, image
  schedules = json.loads((out / "study.json").read_text())["schedules"]
  assert schedules["dip_freezed+stylegan2"] == {"batch_size": 8, "total_steps": 4,
                                                "eval_every": 2}

  # The rerun starts no training process and rewrites the outputs.
  workdirs = [root / study.PRETRAIN_DIR] + [root / study.RUNS_DIR / n for n in runs.values()]
  before = [_headers(w) for w in workdirs]
  (out / "results.csv").unlink()
  capsys.readouterr()
  assert study.main(argv) == 0
  assert [_headers(w) for w in workdirs] == before
  log = capsys.readouterr().out
  assert "pretraining" in log and "finished already, skipped" in log
  assert log.count("0 of 1 runs to do") == len(runs)
  assert (out / "results.csv").exists()
  # The rerun's study.md still has every run's wall time, from the runs' own logs.
  table = [line for line in (out / study.STUDY_MD).read_text().splitlines()
           if line.startswith(("| pretraining ", *(f"| {n} " for n in runs.values())))]
  assert len(table) == 1 + len(runs)
  assert all(re.fullmatch(r"\d+m\d\ds", line.split("|")[-2].strip()) for line in table)

  # The same root with another pretraining length: refused before any process starts,
  # instead of resuming the pretraining and keeping finetunes of the old checkpoint.
  capsys.readouterr()
  longer = [a if not a.startswith("--pretrain_steps=") else "--pretrain_steps=8" for a in argv]
  assert study.main(longer) == 2
  assert [_headers(w) for w in workdirs] == before
  assert "pretrain_steps: 4 there, 8 now" in capsys.readouterr().out


def test_a_root_keeps_the_protocol_its_runs_were_made_with(tmp_path):
  args, extra, pretrain_extra = study.parse_args(["--pretrain_steps=4", "--config.seed=1"])
  wanted = study.protocol(args, extra, pretrain_extra)
  study.check_protocol(str(tmp_path), wanted)  # Recorded,
  study.check_protocol(str(tmp_path), wanted)  # and found the same.
  more = study.parse_args(["--pretrain_steps=4", "--config.seed=1", "--seeds=0,1,2,3",
                           "--methods=scratch"])
  study.check_protocol(str(tmp_path), study.protocol(*more))  # More seeds, fewer methods.
  other = study.parse_args(["--pretrain_steps=4", "--shots=10"])
  with pytest.raises(ValueError, match=r"shots: 100 there, 10 now; finetune_overrides: "
                                       r"\['--config.seed=1'\] there, \[\] now"):
    study.check_protocol(str(tmp_path), study.protocol(*other))
  (tmp_path / study.PROTOCOL_JSON).write_text('{"pretrain_st')  # Truncated.
  with pytest.raises(ValueError, match="is unreadable"):
    study.check_protocol(str(tmp_path), wanted)
