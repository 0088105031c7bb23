"""Up-front config checks: every problem is reported at once, before any compile."""

from __future__ import annotations

import json
import os
import re
import tempfile

import jax
import ml_collections

from gantransfer_jax import errors
from gantransfer_jax.models import families

LOSSES = ("nonsaturating", "hinge", "wasserstein")
REGULARIZER_DISPATCH = ("static", "cond")  # train.make_train_step


class ConfigError(errors.UserError, ValueError):
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


def _check_augment(config: ml_collections.ConfigDict) -> list[str]:
  """DiffAugment policies or an ADA form, ADA's controller settings, bCR's weight."""
  from gantransfer_jax import augment  # pylint: disable=g-import-not-at-top

  problems = []
  try:
    if augment.parse(config.augment).is_ada:
      augment.ada_controller(config)
  except ValueError as e:
    problems.append(f"augment: {e}")
  if config.loss.get("bcr_weight", 0.0) < 0:
    problems.append(f"loss.bcr_weight must be >= 0, got {config.loss.bcr_weight}")
  return problems


def _check_minegan(config: ml_collections.ConfigDict) -> list[str]:
  from gantransfer_jax import minegan  # pylint: disable=g-import-not-at-top

  return minegan.config_problems(config)


def _check_eval(config: ml_collections.ConfigDict) -> list[str]:
  if not config.get("eval_every"):
    return []
  from gantransfer_jax.pretrained import assets  # pylint: disable=g-import-not-at-top

  problems = []
  if config.eval_every < 0 or config.eval_num_images < 6:
    problems.append("eval_every must be >= 0 and eval_num_images >= 6 (k-NN recall needs k+1)")
  if not os.path.exists(assets.inception_weights_path()):
    problems.append(f"eval_every={config.eval_every} needs the FID Inception weights; fetch them "
                    f"with `{assets.INCEPTION_FETCH_COMMAND}` (or set eval_every=0)")
  return problems


def _check_model(config: ml_collections.ConfigDict) -> list[str]:
  """Checks that need the model family (a registered one): its section, its own checks,
  path length, conditioning, the transfer transforms (freezing, modulation)."""
  from gantransfer_jax.models import gan as gan_lib  # pylint: disable=g-import-not-at-top

  family = families.get(config.model)
  problems = []
  if config.get(family.config_section) is None:
    problems.append(f"model {config.model!r} needs a config.{family.config_section} section")
  problems += family.problems(config)
  if not family.supports_path_length and config.loss.pl_weight > 0:
    problems.append(f"path-length regularisation is StyleGAN2's; set loss.pl_weight=0 for "
                    f"model {config.model!r}")
  try:
    cond_dim = gan_lib.condition_dim(config)
  except ValueError as e:
    return problems + [str(e)]
  if cond_dim and not family.conditional:
    conditional = sorted(families.names_with("conditional"))
    problems.append(f"conditioning (dip.prior or num_classes) needs model "
                    f"{' or '.join(map(repr, conditional))}, not {config.model!r}")
  if problems:
    return problems
  from gantransfer_jax.transfer import registry  # pylint: disable=g-import-not-at-top

  return [problem + _freeze_d_hint(problem)
          for problem in registry.problems(config, family.build(config))]


def _freeze_d_hint(problem: str) -> str:
  """Which freeze_d fits, for a preset's value that does not fit the checkpoint's D."""
  match = re.match(r"freeze_d must be in \[0, (\d+)\]", problem)
  if not match:
    return ""
  fits = round((int(match.group(1)) + 1) * 4 / 7)
  return (f"; FreezeD here freezes about 4/7 of D's blocks (the freezed presets: 4 of 7 "
          f"at 256 x 256, 2 of 4 at 32 x 32 with ',quick'): set --config.freeze_d={fits}")


def _check_init(config: ml_collections.ConfigDict) -> list[str]:
  """`config.init` (set by the finetune presets) against `init_checkpoint`."""
  init, checkpoint = config.get("init"), config.get("init_checkpoint")
  if init == "checkpoint" and not checkpoint:
    return [f"method {config.method!r} starts from a pretrained {config.init_model} model: "
            "set --config.init_checkpoint=WORKDIR_OR_CHECKPOINT"]
  if init == "scratch" and checkpoint:
    return [f"method {config.method!r} starts from random weights: drop "
            f"--config.init_checkpoint={checkpoint} (or pick a preset that transfers)"]
  return []


def check_init_checkpoint(config: ml_collections.ConfigDict) -> None:
  """Before the checkpoint's model fields are inherited: it must exist and be of the
  family the preset transfers from (a preset's other checks assume that family)."""
  from gantransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top

  problems = _check_init(config)
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
  expected, path = config.get("init_model"), config.init_checkpoint
  saved = checkpoints.restore_raw_config(path).get("model")
  if expected and not families.serves_as(saved, expected):
    raise ConfigError(
        f"preset {config.get('method')!r} transfers from a {expected} checkpoint, but "
        f"{path} holds a {saved!r} model: pick a finetune preset for {saved!r} models "
        f"(configs/finetune.py lists them) or a {expected} checkpoint")


def check_bsa_source(config: ml_collections.ConfigDict) -> None:
  """BSA adapts batch-norm statistics: its source must be an unconditional SNGAN, and
  its own fields sane. One line per problem, before anything is built."""
  from gantransfer_jax import checkpoints  # pylint: disable=g-import-not-at-top

  problems = _check_init(config)
  path = config.get("init_checkpoint")
  if path and not problems:
    saved = checkpoints.restore_raw_config(path)
    source = families.lookup(saved.get("model"))
    if source is None or not source.has_generator_batch_stats:
      problems.append(
          f"BSA adapts the generator's batch-norm statistics, and {path} holds a "
          f"{saved.get('model')!r} model, which has none: start it from an SNGAN "
          "checkpoint (configs/ps_pretrain.py:sngan)")
    elif saved.get("num_classes") or (saved.get("dip") or {}).get("prior"):
      problems.append(f"BSA adapts an unconditional SNGAN; {path} is conditioned on "
                      "labels or DIP priors: start it from a ps_pretrain.py:sngan checkpoint")
  cfg = config.bsa
  for field in ("latent_lr", "stats_lr"):
    if cfg[field] <= 0:
      problems.append(f"bsa.{field} must be positive, got {cfg[field]}")
  for field in ("l1_weight", "perceptual_weight", "latent_weight", "latent_noise"):
    if cfg[field] < 0:
      problems.append(f"bsa.{field} must be >= 0, got {cfg[field]}")
  if cfg.perceptual not in ("mobilenet_v2", ""):
    problems.append(f"bsa.perceptual must be 'mobilenet_v2' or '' (off), got "
                    f"{cfg.perceptual!r} (VGG16 has no offline weights)")
  if cfg.perceptual and cfg.perceptual_resolution < 32:
    problems.append(f"bsa.perceptual_resolution must be >= 32 (MobileNetV2 downsamples "
                    f"32x), got {cfg.perceptual_resolution}")
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def validate_train_config(config: ml_collections.ConfigDict, workdir: str,
                          num_devices: int | None = None) -> None:
  """Raises ConfigError listing every problem with a pretraining/finetuning config."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  problems = _check_init(config)
  if config.task in ("finetune", "bsa") and not config.data.get("source"):
    problems.append("finetuning needs a target data set: set --config.data.source="
                    "folder:/my/images (or npz:PATH, tfds:NAME[:SPLIT], orl_faces)")
  family = families.lookup(config.model)
  if family is None:
    problems.append(f"model {config.model!r} is unknown; valid: {', '.join(families.names())}")
  if not _is_power_of_two(config.resolution) or not 16 <= config.resolution <= 1024:
    problems.append(
        f"resolution must be a power of two between 16 and 1024, got {config.resolution!r}")
  if config.batch_size <= 0 or config.batch_size % num_devices:
    problems.append(
        f"batch_size {config.batch_size} must be a positive multiple of the number of "
        f"devices ({num_devices})")
  rounds = config.get("batch_rounds", 1)
  round_batch = config.batch_size // max(rounds, 1)
  if rounds < 1 or config.batch_size % (rounds * num_devices):
    problems.append(
        f"batch_size {config.batch_size} must be a multiple of batch_rounds ({rounds}) "
        f"times the number of devices ({num_devices})")
  group = family.minibatch_std_group(config) if family else 0
  if group and round_batch and round_batch % min(group, round_batch):
    problems.append(
        f"batch_size {config.batch_size} must be divisible by the minibatch-stddev group "
        f"size {group} (config.{family.config_section}.mbstd_group_size)"
        + (f" in each of its {rounds} batch_rounds" if rounds > 1 else ""))
  dispatch = config.get("regularizer_dispatch", "static")
  if dispatch not in REGULARIZER_DISPATCH:
    problems.append(f"regularizer_dispatch {dispatch!r} is unknown; valid: "
                    f"{', '.join(REGULARIZER_DISPATCH)}")
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
  problems += _check_augment(config)
  problems += _check_eval(config)
  problems += _check_minegan(config)
  if not problems:  # These checks assume a sane model and resolution.
    problems += _check_model(config)
  if not problems and config.data.get("source"):
    problems += _check_data_source(config)
  workdir_problem = _check_workdir(workdir)
  if workdir_problem:
    problems.append(workdir_problem)
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _check_source_string(source: str | None, what: str) -> list[str]:
  """A `data.source` of the evaluate/select tasks: real (parsed, paths checked) or synth:."""
  from gantransfer_jax.data import sampler  # pylint: disable=g-import-not-at-top
  from gantransfer_jax.data import sources  # pylint: disable=g-import-not-at-top

  if not source:
    return [f"{what} needs a data set: set --config.data.source=folder:/my/images (or "
            "npz:PATH, tfds:NAME[:SPLIT], orl_faces, synth:NAME)"]
  try:
    if sampler.is_synthetic(source):
      from gantransfer_jax.synth import synthesizers  # pylint: disable=g-import-not-at-top
      synthesizers.make_config(source[len(sampler.SYNTH_PREFIX):], 32)
    else:
      sources.parse_source(source)
  except ValueError as e:
    return [str(e)]
  return []


def validate_scoring_config(config: ml_collections.ConfigDict, workdir: str,
                            sources: dict[str, str | None], *,
                            needs_inception: bool = True) -> None:
  """Raises ConfigError listing every problem with an evaluate/select config.

  `sources`: the data sources to score, by what they are for ("the target", ...).
  """
  from gantransfer_jax.pretrained import assets  # pylint: disable=g-import-not-at-top

  problems = []
  for what, source in sources.items():
    problems += _check_source_string(source, what)
  if config.num_samples < config.k + 1:
    problems.append(f"num_samples must be > k ({config.k}) for k-NN precision/recall, "
                    f"got {config.num_samples}")
  if needs_inception and not os.path.exists(assets.inception_weights_path()):
    problems.append(f"{config.task} needs the FID Inception weights; fetch them with "
                    f"`{assets.INCEPTION_FETCH_COMMAND}`")
  workdir_problem = _check_workdir(workdir)
  if workdir_problem:
    problems.append(workdir_problem)
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


# Fields a resumed run may change: how long it runs and what it logs, saves or evaluates
# (plus any `*_every` interval), never what it learns. Anything else differing from the
# config a workdir's checkpoint was written with means a different experiment.
RESUMABLE_FIELDS = frozenset({
    "total_steps", "keep_checkpoints", "eval_num_images", "num_sample_images",
    "distributed", "resume_with_changed_config",
    "stylegan2.remat",  # Recomputes activations: memory, not results.
    "regularizer_dispatch",  # How the step is compiled, not what it computes.
})


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def resume_differences(saved: dict, config: ml_collections.ConfigDict
                       ) -> tuple[list[str], list[str]]:
  """How `config` differs from a workdir's saved config (JSON), run-length and logging
  fields aside: ('field: saved X, now Y' for fields both have, 'field (only in the saved
  config | new)' for fields one lacks: the code gained or lost a field since)."""
  # Through JSON, as the saved side went: tuples become lists, numbers compare alike.
  old = _flatten(saved)
  new = _flatten(json.loads(config.to_json_best_effort()))
  changed, one_sided = [], []
  for field in sorted(old.keys() | new.keys()):
    if field in RESUMABLE_FIELDS or field.endswith("_every"):
      continue
    if field not in new:
      one_sided.append(f"{field} (only in the saved config)")
    elif field not in old:
      one_sided.append(f"{field} (new, now {new[field]!r})")
    elif old[field] != new[field]:
      changed.append(f"{field}: saved {old[field]!r}, now {new[field]!r}")
  return changed, one_sided
