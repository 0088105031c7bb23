"""Metric writers: clu (TensorBoard + logging) plus a `metrics.jsonl` file per workdir."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

METRICS_FILE = "metrics.jsonl"


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow only writes summaries here; it must never reserve GPU/TPU memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):  # Already initialised, or no such device type.
      pass


def _to_json_number(value: Any) -> float | int | None:
  value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return None  # JSON has no NaN/inf; null keeps the line parseable.
  return value


class JsonlWriter(interface.MetricWriter):
  """Appends one JSON object per step: {"step": N, "<name>": value, ...}.

  Appending (not truncating) keeps the history of a run that was resumed.
  """

  def __init__(self, path: str):
    self._path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step)}
    record.update({k: _to_json_number(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard summaries + console logging + metrics.jsonl (first process only)."""
  _hide_accelerators_from_tensorflow()
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(None, just_logging=True, asynchronous=False)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(os.path.join(workdir, METRICS_FILE)),
  ])


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads metrics.jsonl back; later lines win when a resumed run repeats a step."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  by_step: dict[int, dict[str, Any]] = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        by_step.setdefault(record["step"], {}).update(record)
  return [by_step[s] for s in sorted(by_step)]
