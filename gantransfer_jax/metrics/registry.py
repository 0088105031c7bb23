"""The registered sample-quality metrics: functions of (real, fake) features.

A metric is a `Metric` over the features of one feature network (Inception's pool
features today) and a `register(...)` call. The evaluator (gantransfer_jax.evaluation),
hence the training loop's metrics.jsonl / TensorBoard, the `evaluate` task's report.json
and `select`'s selection.json, and the sweep tables (launch/sweep.py) iterate
`scores()`; none of them names a metric. A score `name` is written as `eval/<name>` in
metrics.jsonl and as `<name>` in report.json and the tables.

  from gantransfer_jax.metrics import registry

  registry.register(registry.Metric(
      "feature_norm", lambda real, fake, **options: {"feature_norm": ...},
      scores=(registry.Score("feature_norm", "feature norm", lower_is_better=None),)))

FID, KID and precision/recall (gantransfer_jax.metrics.distances) are registered below,
in the order their scores have always been written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from gantransfer_jax.metrics import distances

INCEPTION = "inception"  # The FID InceptionV3's 2048-d pool features.
# The score that picks the best checkpoint and the convergence point (train.py, plot.py).
PRIMARY = "fid"
PRIMARY_KEY = f"eval/{PRIMARY}"  # Its key in metrics.jsonl.


@dataclasses.dataclass(frozen=True)
class Score:
  """One number a metric reports."""
  name: str                     # Key: `eval/<name>` in metrics.jsonl, `<name>` elsewhere.
  display: str                  # In log lines and headers: 'FID'.
  lower_is_better: bool | None  # None: not a quality (e.g. a standard deviation).
  headline: bool = True         # In the training log line and the sweep tables.
  log_format: str = ".4f"       # Of the training log line.


@dataclasses.dataclass(frozen=True)
class Metric:
  """`compute(real, fake, **options) -> {score name: value}` for every one of `scores`.

  `real` and `fake` are [N, D] features of `features`' network; options (e.g. `k`, the
  neighbours of precision/recall) are passed to every metric, which ignores the others.
  """
  name: str
  compute: Callable[..., Mapping[str, float]]
  scores: tuple[Score, ...]
  features: str = INCEPTION


_METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
  """Adds `metric` after those registered before; its score names must be new."""
  taken = {score.name for score in scores()}
  clashes = sorted(taken & {score.name for score in metric.scores})
  if metric.name in _METRICS or clashes:
    raise ValueError(f"metric {metric.name!r}: already registered "
                     f"(metric or scores {clashes})")
  _METRICS[metric.name] = metric
  return metric


def unregister(name: str) -> None:
  """Removes a registered metric (tests register throwaway ones)."""
  del _METRICS[name]


def metrics() -> tuple[Metric, ...]:
  return tuple(_METRICS.values())


def scores() -> tuple[Score, ...]:
  """Every registered score, in registration order (the order of the written keys)."""
  return tuple(score for metric in _METRICS.values() for score in metric.scores)


def score_names() -> tuple[str, ...]:
  return tuple(score.name for score in scores())


def headline_scores() -> tuple[Score, ...]:
  return tuple(score for score in scores() if score.headline)


def feature_networks() -> tuple[str, ...]:
  """The feature networks the registered metrics need, each once."""
  return tuple(dict.fromkeys(metric.features for metric in _METRICS.values()))


def compute(real: Mapping[str, np.ndarray], fake: Mapping[str, np.ndarray],
            **options) -> dict[str, float]:
  """{score name: value} of every registered metric; `real` and `fake` map a feature
  network's name to [N, D] features (reference set, generated images)."""
  values = {}
  for metric in _METRICS.values():
    result = metric.compute(real[metric.features], fake[metric.features], **options)
    for score in metric.scores:
      values[score.name] = result[score.name]
  return values


# ---- The built-in metrics ----------------------------------------------------------------


def _fid(real, fake, **unused_options) -> dict[str, float]:
  # From the features, not cached statistics: exact for few-shot targets, whose
  # covariance is singular.
  return {"fid": distances.fid_from_features(real, fake)}


def _kid(real, fake, **unused_options) -> dict[str, float]:
  kid, kid_std = distances.kid_from_features(real, fake)
  return {"kid": kid, "kid_std": kid_std}


def _precision_recall(real, fake, *, k: int = 5, **unused_options) -> dict[str, float]:
  precision, recall = distances.precision_recall(real, fake, k=k)
  return {"precision": precision, "recall": recall}


register(Metric("fid", _fid, scores=(
    Score("fid", "FID", lower_is_better=True, log_format=".2f"),)))
register(Metric("kid", _kid, scores=(
    Score("kid", "KID", lower_is_better=True),
    Score("kid_std", "KID std", lower_is_better=None, headline=False))))
register(Metric("precision_recall", _precision_recall, scores=(
    Score("precision", "precision", lower_is_better=False, log_format=".3f"),
    Score("recall", "recall", lower_is_better=False, log_format=".3f"))))
