r"""Command-line entry point: `python -m gantransfer_jax.main --config=CONFIG --workdir=DIR`.

The config's `task` picks what runs; each task is `run(config, workdir)` somewhere in
the package, so new tasks plug in here without touching the training loop.

User errors (a mistyped or invalid config, a missing file, unusable data, a checkpoint
that does not fit the preset; see `gantransfer_jax.errors`) print one short message
naming the problem and the fix, and exit with status 2; `--verbose` shows their
traceback. Anything else is a bug: a traceback and status 1.
"""

import ast
import importlib
import os
import re
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gantransfer_jax import errors
from gantransfer_jax import progress

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/ps_pretrain.py or configs/ps_pretrain.py:quick.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and samples go (default: workdirs/<task>). "
    "Running again with the same workdir resumes.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show tracebacks of user errors (config, paths, data) too.")
flags.mark_flags_as_required(["config"])

# task name -> "module:function"; functions take (config, workdir).
TASKS = {
    "pretrain": "gantransfer_jax.train:train_and_evaluate",
    "finetune": "gantransfer_jax.train:train_and_evaluate",
    "bsa": "gantransfer_jax.tasks.bsa:run",
    "evaluate": "gantransfer_jax.tasks.evaluate:run",
    "select": "gantransfer_jax.tasks.select:run",
    "toy2d": "gantransfer_jax.tasks.toy2d:run",
}


def resolve_task(name: str):
  if name not in TASKS:
    raise app.UsageError(f"config.task {name!r} is unknown; valid: {', '.join(sorted(TASKS))}")
  module, function = TASKS[name].split(":")
  return getattr(importlib.import_module(module), function)


# Notebooks call it: what the command line does to absl's console log.
quiet_library_logs = progress.quiet_library_logs


# ---- One-line user errors ----------------------------------------------------------------


def _override_of(field: str, argv: Sequence[str]) -> str | None:
  """The `--config.A.B=V` argument whose path holds `field`, if any."""
  for arg in argv:
    path = arg.split("=", 1)[0]
    if path.startswith("--config.") and field in path[len("--config."):].split("."):
      return path
  return None


def _unquote(text: str) -> str:
  """ml_collections nests its message in the repr of a KeyError in an AttributeError."""
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = ast.literal_eval(text)
    except (SyntaxError, ValueError):
      break
  return text


def flag_error_message(error: Exception, argv: Sequence[str]) -> str:
  """One line for a command-line error: absl's, or ml_collections' for an override.

  ml_collections raises AttributeError/KeyError (with its "Did you mean" hint) for an
  unknown field and TypeError for a field of a value, out of absl's reach.
  """
  text = errors.message(error)
  if isinstance(error, (AttributeError, KeyError)):
    name, _, hint = _unquote(text).partition("\n")
    name = _unquote(name.strip())
    flag = _override_of(name, argv) or "--config"
    return f"{flag}: the config has no field {name!r}." + (f" {hint.strip()}" if hint else "")
  section = re.match(r"flag (--config\.[\w.]+)=(.*?): Failed to parse .* as a ConfigDict",
                     text)
  if section:
    flag, value = section.groups()
    example = f"{flag}.source={value}" if flag == "--config.data" else f"{flag}.FIELD=VALUE"
    return (f"{flag} is a section of the config, not a value: set one of its fields, "
            f"e.g. {example}")
  if isinstance(error, TypeError):
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    return (f"{' / '.join(overrides) or '--config'}: a field path goes through a value "
            f"that is not a section ({text}); check the spelling against the config file")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if "Error whilst parsing config file" in text:  # absl quotes the config's traceback.
    return f"{lines[0].split(': Error whilst', 1)[0]}: {lines[-1]}"
  return " ".join(lines)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with config errors as one line and exit status 2."""
  try:
    return flags.FLAGS(list(argv))
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    if any(arg.startswith("--verbose") for arg in argv):
      raise
    errors.exit_with(flag_error_message(e, argv[1:]))


def use_persistent_compilation_cache() -> str:
  """Compiled steps persist across processes, so a resumed or repeated run (a sweep's
  next seed) loads them instead of compiling again: minutes per step variant at
  256 x 256 on CPU (README, "Memory and throughput"). `$JAX_COMPILATION_CACHE_DIR`
  wins; else `xla/` in the assets cache folder. Returns the folder in use."""
  import jax  # pylint: disable=g-import-not-at-top
  from gantransfer_jax.pretrained import assets  # pylint: disable=g-import-not-at-top

  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(assets.cache_dir() / "xla"))
  return jax.config.jax_compilation_cache_dir


@errors.one_line_user_errors(verbose=lambda: _VERBOSE.value)
def main(argv):
  quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags are "
                         "--config, --workdir, --verbose and --config.FIELD=VALUE)")
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("workdirs", config.task)
  from gantransfer_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed(config.get("distributed", False))
  logging.info("Task %s, workdir %s, compilation cache %s", config.task,
               os.path.abspath(workdir), use_persistent_compilation_cache())
  resolve_task(config.task)(config, workdir)


if __name__ == "__main__":
  progress.quiet_native_logs()  # Before anything imports TensorFlow or JAX.
  app.run(main, flags_parser=parse_flags)
