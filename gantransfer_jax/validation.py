"""Up-front config checks: every problem is reported at once, before any compile."""

from __future__ import annotations

import os
import tempfile

import jax
import ml_collections

MODELS = ("stylegan2", "resnet", "adafm", "sngan")
CONDITIONAL_MODELS = ("sngan", "stylegan2")
LOSSES = ("nonsaturating", "hinge", "wasserstein")
ADAFM_KINDS = ("adafm", "fs", "none")
# Finetuning methods that start from random weights; all others need init_checkpoint.
FROM_SCRATCH = ("scratch", "dip", "dip_diffaug")


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


def _check_model(config: ml_collections.ConfigDict) -> list[str]:
  """Checks that need the model family: its section, conditioning, freezing."""
  from gantransfer_jax.models import gan as gan_lib  # pylint: disable=g-import-not-at-top

  problems = []
  section = "resnet" if config.model == "adafm" else config.model
  if config.get(section) is None:
    problems.append(f"model {config.model!r} needs a config.{section} section")
  if config.model == "adafm":
    adafm = config.get("adafm")
    if adafm is None or adafm.get("kind") not in ADAFM_KINDS:
      problems.append(f"model 'adafm' needs config.adafm.kind in {', '.join(ADAFM_KINDS)}")
    elif adafm.warmup_steps < 0:
      problems.append(f"adafm.warmup_steps must be >= 0, got {adafm.warmup_steps}")
  if config.model != "stylegan2" and config.loss.pl_weight > 0:
    problems.append(f"path-length regularisation is StyleGAN2's; set loss.pl_weight=0 for "
                    f"model {config.model!r}")
  if config.model in ("resnet", "adafm") and config.get("freeze_d"):
    problems.append("for the ResNet GANs freeze D's groups with adafm.general_d, not freeze_d")
  try:
    cond_dim = gan_lib.condition_dim(config)
  except ValueError as e:
    return problems + [str(e)]
  if cond_dim and config.model not in CONDITIONAL_MODELS:
    problems.append(f"conditioning (dip.prior or num_classes) needs model "
                    f"{' or '.join(map(repr, CONDITIONAL_MODELS))}, not {config.model!r}")
  if problems:
    return problems
  try:
    gan_lib.build_gan(config).frozen_prefixes()
  except ValueError as e:
    problems.append(str(e))
  return problems


def validate_train_config(config: ml_collections.ConfigDict, workdir: str,
                          num_devices: int | None = None) -> None:
  """Raises ConfigError listing every problem with a pretraining/finetuning config."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  problems = []
  if config.get("method") not in (None,) + FROM_SCRATCH and not config.get("init_checkpoint"):
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
  group = config.stylegan2.mbstd_group_size if config.model == "stylegan2" else 0
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
  if config.loss.get("d_steps", 1) < 1:
    problems.append(f"loss.d_steps must be >= 1, got {config.loss.d_steps}")
  if config.loss.kind not in LOSSES:
    problems.append(f"loss.kind {config.loss.kind!r} is unknown; valid: {', '.join(LOSSES)}")
  problems += _check_augment(config.augment)
  problems += _check_eval(config)
  if not problems:  # These checks assume a sane model and resolution.
    problems += _check_model(config)
  if not problems:
    problems += _check_data_source(config)
  workdir_problem = _check_workdir(workdir)
  if workdir_problem:
    problems.append(workdir_problem)
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
