"""FID/KID/PR during training (best checkpoint, convergence) and the evaluate task."""

import json
import os

import numpy as np
import pytest

from configs import evaluate as evaluate_config
from configs import ps_pretrain
from gantransfer_jax import evaluation
from gantransfer_jax import train
from gantransfer_jax import writers
from gantransfer_jax.tasks import evaluate
from tests.weights_markers import needs_inception



def test_convergence_from_history_uses_kimg_of_first_fid_within_five_percent():
  records = [
      {"step": 1, "perf/kimg": 1.0, "eval/fid": 100.0},
      {"step": 2, "perf/kimg": 2.0, "loss/d": 1.0},  # A training-only line.
      {"step": 3, "perf/kimg": 3.0, "eval/fid": 52.0},
      {"step": 4, "perf/kimg": 4.0, "eval/fid": 50.0},
      {"step": 5, "perf/kimg": 5.0, "eval/fid": 60.0},
  ]
  assert evaluation.convergence_from_history(records) == 3.0  # 52 <= 1.05 * 50.
  assert evaluation.convergence_from_history(records[1:2]) is None


@needs_inception
@pytest.mark.slow
def test_training_evaluates_keeps_the_best_checkpoint_and_reports_convergence(tmp_path):
  config = ps_pretrain.get_config("tiny")
  config.update(total_steps=4, log_every=2, sample_every=4, checkpoint_every=4,
                eval_every=2, eval_num_images=8)
  config.loss.pl_weight = 0.0
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))

  records = writers.read_metrics(str(workdir))
  evals = [r for r in records if "eval/fid" in r]
  assert [r["step"] for r in evals] == [2, 4]
  for record in evals:
    for key in evaluation.EVAL_KEYS:
      assert np.isfinite(record[key]), key
    assert 0 <= record["eval/precision"] <= 1 and 0 <= record["eval/recall"] <= 1
  best_step = min(evals, key=lambda r: r["eval/fid"])["step"]
  assert os.listdir(workdir / "best" / "checkpoints") == [str(best_step)]
  summary = records[-1]
  assert summary["eval/best_fid"] == min(r["eval/fid"] for r in evals)
  assert summary["eval/convergence_kimg"] in [r["perf/kimg"] for r in evals]


@needs_inception
@pytest.mark.slow
def test_evaluate_task_writes_a_report(tmp_path):
  config = ps_pretrain.get_config("tiny")
  config.update(total_steps=1, log_every=1, sample_every=1, checkpoint_every=1)
  config.loss.pl_weight = 0.0
  train.train_and_evaluate(config, str(tmp_path / "run"))
  target = tmp_path / "target.npz"
  rng = np.random.default_rng(0)
  np.savez(target, images=rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8))

  eval_config = evaluate_config.get_config()
  eval_config.update(checkpoint=str(tmp_path / "run"), num_samples=12)
  eval_config.data.source = f"npz:{target}"
  report = evaluate.run(eval_config, str(tmp_path / "eval"))

  saved = json.loads((tmp_path / "eval" / "report.json").read_text())
  assert saved == report
  assert report["num_generated"] == 12 and report["num_reference"] == 10
  for key in ("fid", "kid", "precision", "recall"):
    assert np.isfinite(report[key]), key
  assert report["fid"] > 0
