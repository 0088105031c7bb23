"""The metric registry: a metric registered in one place reaches the evaluator's scores,
report keys and the sweep tables; the evaluator reads its reference set on first use."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from configs import ps_pretrain
from gantransfer_jax import builder
from gantransfer_jax import evaluation
from gantransfer_jax import parallel
from gantransfer_jax.metrics import registry
from gantransfer_jax.models import gan as gan_lib

_SWEEP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "launch", "sweep.py")


def _load_sweep():
  """launch/sweep.py as test_sweep.py loads it (one module object per session)."""
  if "sweep" not in sys.modules:
    spec = importlib.util.spec_from_file_location("sweep", _SWEEP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sweep"] = module  # Dataclasses look their module up there.
    spec.loader.exec_module(module)
  return sys.modules["sweep"]


def _mean_norm(real, fake, **unused_options):
  return {"fake_norm": float(np.linalg.norm(fake, axis=1).mean()),
          "real_norm": float(np.linalg.norm(real, axis=1).mean())}


@pytest.fixture
def norm_metric():
  """A throwaway metric, registered for one test only."""
  metric = registry.register(registry.Metric("mean_norm", _mean_norm, scores=(
      registry.Score("fake_norm", "norm", lower_is_better=None),
      registry.Score("real_norm", "reference norm", lower_is_better=None, headline=False))))
  try:
    yield metric
  finally:
    registry.unregister(metric.name)


def _features(images):
  return np.asarray(images, np.float64).reshape(len(images), -1)[:, :8]


def _evaluator(tmp_path, feature_fn=_features):
  config = ps_pretrain.get_config("tiny")
  gan = builder.build_gan(config)
  mesh = parallel.create_mesh(jax.devices()[:1])
  evaluator = evaluation.Evaluator(config, gan, mesh, num_images=16, num_reference=16, k=2,
                                   feature_fn=feature_fn, stats_cache_dir=str(tmp_path))
  g_params, g_state = gan_lib.split_variables(gan.init(jax.random.key(0))[0])
  return evaluator, g_params, g_state


def test_builtin_scores_keep_their_keys_and_order():
  assert registry.score_names() == ("fid", "kid", "kid_std", "precision", "recall")
  assert evaluation.EVAL_KEYS == evaluation.eval_keys()
  assert registry.feature_networks() == (registry.INCEPTION,)
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.Metric("fid_again", _mean_norm, scores=(
        registry.Score("fid", "FID", lower_is_better=True),)))


def test_a_registered_metric_is_scored_by_the_evaluator(tmp_path, norm_metric):
  evaluator, g_params, g_state = _evaluator(tmp_path)
  scores = evaluator(g_params, g_state)
  assert list(scores) == [f"eval/{name}" for name in registry.score_names()]
  assert list(scores)[-2:] == ["eval/fake_norm", "eval/real_norm"]
  assert evaluation.eval_keys()[-2:] == ("eval/fake_norm", "eval/real_norm")
  fake = evaluator.generated_features(g_params, g_state)
  np.testing.assert_allclose(scores["eval/fake_norm"], np.linalg.norm(fake, axis=1).mean())
  np.testing.assert_allclose(scores["eval/real_norm"],
                             np.linalg.norm(evaluator.reference.features, axis=1).mean())
  assert scores["eval/fid"] == evaluation.scores(evaluator.reference, fake, k=2)["fid"]
  registry.unregister(norm_metric.name)
  assert "eval/fake_norm" not in evaluator(g_params, g_state)
  registry.register(norm_metric)  # For the fixture to remove.


def test_the_evaluator_reads_the_reference_set_on_first_use_only(tmp_path, monkeypatch):
  calls = []
  real_reference_set = evaluation.reference_set

  def counting_reference_set(*args, **kwargs):
    calls.append("reference_set")
    return real_reference_set(*args, **kwargs)

  def features(images):
    calls.append(len(images))
    return _features(images)

  monkeypatch.setattr(evaluation, "reference_set", counting_reference_set)
  evaluator, g_params, g_state = _evaluator(tmp_path, features)
  assert not calls  # Neither decoded nor embedded on construction.
  evaluator(g_params, g_state)
  assert calls.count("reference_set") == 1
  calls.clear()
  evaluator(g_params, g_state)
  assert "reference_set" not in calls  # Held in memory after the first evaluation.
  assert calls == [16]  # Only the generated batch is embedded again.


def test_a_registered_metric_gets_sweep_columns(tmp_path, norm_metric):
  sweep = _load_sweep()
  workdir = tmp_path / "run_a"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(
      {"task": "finetune", "method": "transfergan", "seed": 0, "batch_size": 10,
       "data": {"source": "npz:x", "num_images": 10}}))
  records = [{"step": step, "perf/kimg": step / 100, "eval/fid": fid, "eval/kid": 0.1,
              "eval/kid_std": 0.01, "eval/precision": 0.5, "eval/recall": 0.2,
              "eval/fake_norm": norm, "eval/real_norm": 1.0}
             for step, fid, norm in ((10, 80.0, 3.0), (20, 60.0, 4.0))]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

  assert sweep.metric_columns() == ("fid", "best_fid", "convergence_kimg", "kid",
                                    "precision", "recall", "fake_norm")  # Headline only.
  row = sweep.summarize(str(workdir))
  assert row["fake_norm"] == 4.0 and row["fid"] == 60.0 and row["best_fid"] == 60.0
  csv_path, md_path = sweep.write_results(str(tmp_path), [row])
  with open(csv_path, encoding="utf-8") as f:
    header = next(csv.reader(f))
  assert header == list(sweep.RUN_KEYS + sweep.metric_columns())
  assert header[-1] == "fake_norm"
  markdown = open(md_path, encoding="utf-8").read()
  assert "| fake_norm |" in markdown and "4 ± 0" in markdown
  assert "kimg, fid, kid, precision, recall, fake_norm: the last evaluation" in markdown


def test_the_sweep_columns_of_the_builtin_metrics_are_unchanged():
  sweep = _load_sweep()  # Maybe first loaded while a test metric was registered.
  assert sweep.run_columns() == (
      "run", "status", "method", "init", "dataset", "shots", "seed", "kimg", "fid",
      "best_fid", "convergence_kimg", "kid", "precision", "recall")
  assert sweep.metric_columns() == ("fid", "best_fid", "convergence_kimg", "kid",
                                    "precision", "recall")
