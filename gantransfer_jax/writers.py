"""Metric writers: clu (TensorBoard + logging) plus a `metrics.jsonl` file per workdir."""

from __future__ import annotations

import json
import math
import os
import warnings
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


def json_safe(value: Any) -> Any:
  """`value` with NaN/inf anywhere in its dicts, lists and tuples as None (null), for
  strict JSON files (a Pearson of a constant series is NaN, say)."""
  if isinstance(value, Mapping):
    return {key: json_safe(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(item) for item in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class JsonlWriter(interface.MetricWriter):
  """Appends one JSON object per step: {"step": N, "<name>": value, ...}.

  Appending (not truncating) keeps the history of a run that was resumed. A file whose
  last line was torn (disk full, power loss) gets a newline first, so the next record
  starts a line of its own instead of being glued onto the torn one.
  """

  def __init__(self, path: str):
    self._path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")
    if _ends_mid_line(path):
      self._file.write("\n")

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
  """TensorBoard summaries + metrics.jsonl (first process only).

  No console writer: the training loop logs one line per log step itself (with the
  ETA); clu's LoggingWriter would print every scalar of that step a second time.
  """
  _hide_accelerators_from_tensorflow()
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(workdir),
      JsonlWriter(os.path.join(workdir, METRICS_FILE)),
  ])


def _ends_mid_line(path: str) -> bool:
  with open(path, "rb") as f:
    if f.seek(0, os.SEEK_END) == 0:
      return False
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b"\n"


def _parse_record(line: str) -> dict[str, Any] | None:
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads metrics.jsonl back; later lines win when a resumed run repeats a step.

  A line that is not a record (torn by a crash mid-write; after a resume it is no
  longer the last one) is skipped with a warning naming its line number: losing one
  logged step beats losing the history.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  by_step: dict[int, dict[str, Any]] = {}
  torn = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      record = _parse_record(line)
      if record is None:
        torn.append(number)
      else:
        by_step.setdefault(record["step"], {}).update(record)
  if torn:
    warnings.warn(f"{path}: skipped {len(torn)} torn or malformed line(s) (line "
                  f"{', '.join(map(str, torn[:10]))}); a crash probably cut a write short",
                  stacklevel=2)
  return [by_step[s] for s in sorted(by_step)]
