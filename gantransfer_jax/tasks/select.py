"""The `select` task: which pretrained checkpoint to finetune from (paper 004, §4; NOTES §5).

Each candidate checkpoint is scored by the distance between what it stands for and the
target set, with FID, KID, precision and recall on Inception features, in one of paper
004's two regimes:

* generated (default): `num_samples` images of the candidate's EMA generator, drawn from
  fixed latents (the same ones for candidates of equal z_dim), against the target;
* source data: when `config.source_data` names the candidate's source dataset, that
  dataset against the target instead (no sampling; `num_source_images` images of a real
  set, 0 meaning all of it, or `num_samples` synthetic ones).

Paper 004 finds that FID and recall predict the best source, precision does not, and
that recall (coverage of the target) is what a pretrained generator contributes. Hence
the recommendation rule: the highest recall wins; candidates whose recall lies within
`config.recall_tolerance` of the best (default 0: exact ties) are tied, and the tie goes
to the lowest FID, then to the candidate listed first. `ranking` orders all candidates by
applying the rule again to those left, i.e. by (-recall, FID) when the tolerance is 0.

The target is loaded at `config.resolution` (default: the first candidate's resolution);
images of candidates at another resolution are resized to it (antialiased bilinear)
before feature extraction, with a warning. Precision/recall use the Inception features,
not the paper's VGG16 (see gantransfer_jax.evaluation).

Writes WORKDIR/selection.json (per-candidate metrics in input order, `ranking`,
`recommended`, the rule) and prints a table, best first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from gantransfer_jax import builder
from gantransfer_jax import checkpoints
from gantransfer_jax import evaluation
from gantransfer_jax import parallel
from gantransfer_jax import validation
from gantransfer_jax.metrics import registry
from gantransfer_jax.models import families

GENERATED = "generated"
SOURCE_DATA = "source_data"
RULE = ("highest recall; recalls within {tolerance} of the best are tied and the lowest "
        "FID among them wins; remaining ties go to the candidate listed first")

FeatureFn = Callable[[Any], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Candidate:
  path: str                            # Absolute workdir, checkpoints or step folder.
  source_data: str                     # Its source dataset; '' scores its samples.
  config: ml_collections.ConfigDict    # The config saved with the checkpoint.

  @property
  def regime(self) -> str:
    return SOURCE_DATA if self.source_data else GENERATED


def parse_list(value: str | None) -> list[str]:
  """'a, b,,c' -> ['a', 'b', '', 'c']; '' or None -> []."""
  if not value or not value.strip():
    return []
  return [entry.strip() for entry in value.split(",")]


def load_candidates(config: ml_collections.ConfigDict) -> list[Candidate]:
  """The candidates of `config.candidates`, aligned with `config.source_data`."""
  paths = parse_list(config.candidates)
  if not paths or not all(paths):
    raise validation.ConfigError(
        "set --config.candidates=WORKDIR[,WORKDIR...]: comma-separated checkpoints "
        f"without empty entries, got {config.candidates!r}")
  sources = parse_list(config.source_data) or [""] * len(paths)
  if len(sources) != len(paths):
    raise validation.ConfigError(
        f"source_data has {len(sources)} entries for {len(paths)} candidates: give one "
        "per candidate, empty for none (e.g. 'synth:primitives_ps,')")
  return [Candidate(os.path.abspath(path), source, checkpoints.restore_raw_config(path))
          for path, source in zip(paths, sources)]


def rank(scores: Sequence[Mapping[str, float]], recall_tolerance: float = 0.0) -> list[int]:
  """Candidate indices, best first, by the recommendation rule (module docstring)."""
  remaining = list(range(len(scores)))
  order = []
  while remaining:
    best_recall = max(scores[i]["recall"] for i in remaining)
    tied = [i for i in remaining if scores[i]["recall"] >= best_recall - recall_tolerance]
    chosen = min(tied, key=lambda i: (scores[i]["fid"], i))
    order.append(chosen)
    remaining.remove(chosen)
  return order


# ---- Features of one candidate ----------------------------------------------------------


def _data_config(source: str, template: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A data section for `source`; a checkpoint's own section supplies the other fields
  (synthesizer options for synth:NAME sources)."""
  return ml_collections.ConfigDict(
      {"subset_seed": 0, "image_key": "image", **template.data.to_dict(), "source": source})


def _scoring_config(config: ml_collections.ConfigDict, candidate: Candidate,
                    data: ml_collections.ConfigDict,
                    resolution: int) -> ml_collections.ConfigDict:
  """What evaluation.reference_set and Evaluator read: the candidate's config pointed at
  `data` at the comparison resolution (the generator is built from the saved config)."""
  run = ml_collections.ConfigDict(candidate.config.to_dict())
  run.seed = config.seed
  run.resolution = resolution
  run.data = data
  run.eval_num_images = config.num_samples
  families.set_truncation_psi(run, config.truncation_psi)
  return run


def _dataset_features(run_config: ml_collections.ConfigDict, num_images: int,
                      feature_fns: Mapping[str, FeatureFn], *, cache_dir: str,
                      stats_cache_dir: str | None) -> dict[str, np.ndarray]:
  """{network: features} of `run_config.data`, cached like evaluation references."""
  reference = evaluation.ReferenceFeatures(run_config, num_reference=num_images or None,
                                           cache_dir=cache_dir,
                                           stats_cache_dir=stats_cache_dir)
  return {network: reference(network, feature_fn).features
          for network, feature_fn in feature_fns.items()}


def _resized(feature_fn: FeatureFn, resolution: int) -> FeatureFn:
  """`feature_fn` of images first resized to resolution x resolution (antialiased)."""
  def features(images):
    if images.shape[1:3] != (resolution, resolution):
      shape = (images.shape[0], resolution, resolution, images.shape[3])
      images = jax.image.resize(jnp.asarray(images, jnp.float32), shape, "linear")
    return feature_fn(images)

  return features


def _generated_features(config: ml_collections.ConfigDict, candidate: Candidate,
                        run_config: ml_collections.ConfigDict, mesh,
                        feature_fns: Mapping[str, FeatureFn], *,
                        cache_dir: str) -> dict[str, np.ndarray]:
  """{network: features} of `num_samples` images of the candidate's EMA generator (no
  reference set: the target's features are computed once for all candidates)."""
  gan = builder.build_gan(candidate.config)
  if gan.resolution != run_config.resolution:
    warnings.warn(f"{candidate.path} generates {gan.resolution}px images: resized to "
                  f"the target's {run_config.resolution}px before scoring", stacklevel=3)
    feature_fns = {network: _resized(feature_fn, run_config.resolution)
                   for network, feature_fn in feature_fns.items()}
  generated = evaluation.GeneratedFeatures(
      run_config, gan, mesh, num_images=config.num_samples,
      sample_cond=evaluation.condition_sampler(candidate.config, gan, cache_dir))
  _, params = checkpoints.restore_params(candidate.path)
  # Via the host: a mesh over several processes takes no array committed to one device.
  variables = jax.device_put(
      jax.device_get((params["generator_ema"], params["generator_state"])),
      parallel.replicated(mesh))
  return generated(*variables, feature_fns)


# ---- The task ---------------------------------------------------------------------------


def format_table(report: Mapping[str, Any]) -> str:
  """The report's candidates as a text table, best first."""
  header = (f"{'rank':>4}  {'recall':>7}  {'FID':>9}  {'KID':>8}  {'precision':>9}  "
            f"{'regime':<11}  {'res':>4}  candidate")
  lines = [header]
  for row in sorted(report["candidates"], key=lambda row: row["rank"]):
    lines.append(f"{row['rank']:>4}  {row['recall']:>7.4f}  {row['fid']:>9.3f}  "
                 f"{row['kid']:>8.4f}  {row['precision']:>9.4f}  {row['regime']:<11}  "
                 f"{row['resolution']:>4}  {row['candidate']}"
                 + (f"  (source: {row['source_data']})" if row["source_data"] else ""))
  lines.append(f"recommended: {report['recommended']}")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str, *,
        feature_fn: FeatureFn | None = None) -> dict[str, Any]:
  """Scores every candidate, writes WORKDIR/selection.json and returns its content.

  Args:
    config: configs/select.py.
    workdir: output folder (also caches decoded data sets).
    feature_fn: images -> [N, D] features in place of Inception's (tests). Its statistics
      are cached in the workdir: the shared cache holds Inception statistics only.
  """
  validation.validate_scoring_config(
      config, workdir, {"select (the target)": config.data.source},
      needs_inception=feature_fn is None)
  candidates = load_candidates(config)
  if len({candidate.regime for candidate in candidates}) > 1:
    warnings.warn("candidates are scored in different regimes (generated samples and "
                  "source data); paper 004 compares candidates within one regime",
                  stacklevel=2)
  resolution = config.resolution or candidates[0].config.resolution
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.create_mesh()
  cache_dirs = {"cache_dir": os.path.join(workdir, "data_cache"),
                "stats_cache_dir": None if feature_fn is None
                                   else os.path.join(workdir, "feature_cache")}
  feature_fns = ({registry.INCEPTION: feature_fn} if feature_fn is not None else
                 {network: evaluation.load_feature_fn(network, mesh)
                  for network in registry.feature_networks()})

  target_data = _data_config(config.data.source, candidates[0].config)
  target = _dataset_features(_scoring_config(config, candidates[0], target_data, resolution),
                             config.num_reference, feature_fns, **cache_dirs)
  rows = []
  for candidate in candidates:
    logging.info("Scoring %s (%s).", candidate.path, candidate.regime)
    if candidate.source_data:
      source_data = _data_config(candidate.source_data, candidate.config)
      features = _dataset_features(
          _scoring_config(config, candidate, source_data, resolution),
          config.num_source_images, feature_fns, **cache_dirs)
    else:
      features = _generated_features(
          config, candidate, _scoring_config(config, candidate, target_data, resolution),
          mesh, feature_fns, cache_dir=cache_dirs["cache_dir"])
    rows.append({"candidate": candidate.path, "regime": candidate.regime,
                 "source_data": candidate.source_data or None,
                 "resolution": candidate.config.resolution,
                 "num_images": len(next(iter(features.values()))),
                 **registry.compute(target, features, k=config.k)})

  order = rank(rows, config.recall_tolerance)
  for position, index in enumerate(order, start=1):
    rows[index]["rank"] = position
  report = {
      "target": config.data.source,
      "resolution": resolution,
      "num_reference": len(next(iter(target.values()))),
      "num_samples": config.num_samples,
      "k": config.k,
      "truncation_psi": config.truncation_psi,
      "rule": RULE.format(tolerance=config.recall_tolerance),
      "candidates": rows,
      "ranking": [rows[index]["candidate"] for index in order],
      "recommended": rows[order[0]]["candidate"],
  }
  path = os.path.join(workdir, "selection.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  logging.info("Wrote %s", path)
  print(format_table(report))
  return report
