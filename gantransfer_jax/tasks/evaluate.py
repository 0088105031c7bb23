"""The `evaluate` task: the registered metrics (FID, KID, precision/recall) of a saved
generator, in WORKDIR/report.json."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import logging

from gantransfer_jax import builder
from gantransfer_jax import checkpoints
from gantransfer_jax import evaluation
from gantransfer_jax import parallel
from gantransfer_jax import validation
from gantransfer_jax.metrics import registry
from gantransfer_jax.models import families
from gantransfer_jax.models import gan as gan_lib


def _run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The checkpoint's own config, pointed at the requested reference data."""
  saved = checkpoints.restore_raw_config(config.checkpoint)
  run = ml_collections.ConfigDict(saved.to_dict())
  run.seed = config.seed
  run.eval_num_images = config.num_samples
  families.set_truncation_psi(run, config.truncation_psi)
  run.data.source = config.data.source or saved.data.source  # Default: its own data.
  run.data.num_images = config.num_reference
  return run


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if not config.checkpoint:
    raise validation.ConfigError("set --config.checkpoint=WORKDIR_OR_CHECKPOINT")
  run_config = _run_config(config)
  validation.validate_scoring_config(config, workdir, {"evaluate": run_config.data.source})
  train_config, params = checkpoints.restore_params(config.checkpoint)
  try:  # Before the reference set is read: 'const' needs maps the checkpoint may lack.
    gan_lib.set_noise_mode(run_config, config.get("noise_mode") or "random",
                           params["generator_state"])
  except ValueError as error:
    raise validation.ConfigError(f"{config.checkpoint}: {error}") from None
  mesh = parallel.create_mesh()
  gan = builder.build_gan(run_config)
  os.makedirs(workdir, exist_ok=True)
  cache_dir = os.path.join(workdir, "data_cache")
  evaluator = evaluation.Evaluator(
      run_config, gan, mesh, num_images=config.num_samples,
      num_reference=config.num_reference or None, k=config.k, cache_dir=cache_dir,
      sample_cond=evaluation.condition_sampler(train_config, gan, cache_dir))
  # Via the host: a mesh over several processes takes no array committed to one device.
  params_on_mesh = jax.device_put(
      jax.device_get((params["generator_ema"], params["generator_state"])),
      parallel.replicated(mesh))
  scores = evaluator(*params_on_mesh)
  report = {
      "checkpoint": os.path.abspath(config.checkpoint),
      "data": run_config.data.source,
      **{name: scores[f"eval/{name}"] for name in registry.score_names()},
      "k": config.k,
      "num_generated": config.num_samples,
      "num_reference": int(len(evaluator.reference.features)),
  }
  path = os.path.join(workdir, "report.json")
  if jax.process_index() == 0:  # Every process of a multi-host run has the same scores.
    with open(path, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
    logging.info("Wrote %s", path)
    print(json.dumps(report, indent=2))
  return report
