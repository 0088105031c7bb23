"""Up-front config checks: every problem is reported at once, before any compile."""

from __future__ import annotations

import os
import tempfile

import jax
import ml_collections

MODELS = ("stylegan2",)
LOSSES = ("nonsaturating",)


class ConfigError(ValueError):
  """A config that cannot run; the message lists every problem found."""


def _is_power_of_two(n: int) -> bool:
  return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def _check_workdir(workdir: str) -> str | None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    return f"workdir {workdir!r} is not writable: {e.strerror or e}"
  return None


def _check_data_source(config: ml_collections.ConfigDict) -> list[str]:
  from gantransfer_jax.data import sampler  # pylint: disable=g-import-not-at-top

  try:
    sampler.check_source(config)
  except ValueError as e:
    return [str(e)]
  return []


def _check_augment(policy: str) -> list[str]:
  from gantransfer_jax import augment  # pylint: disable=g-import-not-at-top

  try:
    augment.validate_policy(policy)
  except ValueError as e:
    return [f"augment: {e}"]
  return []


def _check_eval(config: ml_collections.ConfigDict) -> list[str]:
  if not config.get("eval_every"):
    return []
  from gantransfer_jax import assets  # pylint: disable=g-import-not-at-top

  problems = []
  if config.eval_every < 0 or config.eval_num_images < 6:
    problems.append("eval_every must be >= 0 and eval_num_images >= 6 (k-NN recall needs k+1)")
  if not os.path.exists(assets.inception_weights_path()):
    problems.append(f"eval_every={config.eval_every} needs the FID Inception weights; fetch them "
                    f"with `{assets.INCEPTION_FETCH_COMMAND}` (or set eval_every=0)")
  return problems


def _check_freezing(config: ml_collections.ConfigDict) -> list[str]:
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top

  try:
    train.frozen_prefixes(config)
  except ValueError as e:
    return [str(e)]
  return []


def validate_train_config(config: ml_collections.ConfigDict, workdir: str,
                          num_devices: int | None = None) -> None:
  """Raises ConfigError listing every problem with a pretraining/finetuning config."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  problems = []
  if config.get("method") in ("transfergan", "freezed") and not config.get("init_checkpoint"):
    problems.append(f"method {config.method!r} starts from a pretrained model: set "
                    "--config.init_checkpoint=WORKDIR_OR_CHECKPOINT")
  if config.model not in MODELS:
    problems.append(f"model {config.model!r} is unknown; valid: {', '.join(MODELS)}")
  if not _is_power_of_two(config.resolution) or not 16 <= config.resolution <= 1024:
    problems.append(
        f"resolution must be a power of two between 16 and 1024, got {config.resolution!r}")
  if config.batch_size <= 0 or config.batch_size % num_devices:
    problems.append(
        f"batch_size {config.batch_size} must be a positive multiple of the number of "
        f"devices ({num_devices})")
  group = config.stylegan2.mbstd_group_size
  if group and config.batch_size % min(group, config.batch_size):
    problems.append(
        f"batch_size {config.batch_size} must be divisible by the minibatch-stddev group "
        f"size {group} (config.stylegan2.mbstd_group_size)")
  for field in ("total_steps", "log_every", "sample_every", "checkpoint_every"):
    if config[field] <= 0:
      problems.append(f"{field} must be positive, got {config[field]}")
  for field in ("r1_interval", "pl_interval"):
    if config.loss[field] <= 0:
      problems.append(f"loss.{field} must be positive, got {config.loss[field]}")
  if config.loss.kind not in LOSSES:
    problems.append(f"loss.kind {config.loss.kind!r} is unknown; valid: {', '.join(LOSSES)}")
  problems += _check_augment(config.augment)
  problems += _check_eval(config)
  if not problems:  # These checks assume a sane model and resolution.
    problems += _check_data_source(config)
    problems += _check_freezing(config)
  workdir_problem = _check_workdir(workdir)
  if workdir_problem:
    problems.append(workdir_problem)
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
