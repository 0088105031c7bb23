r"""Command-line entry point: `python -m gantransfer_jax.main --config=CONFIG --workdir=DIR`.

The config's `task` picks what runs; each task is `run(config, workdir)` somewhere in
the package, so new tasks plug in here without touching the training loop.
"""

import importlib
import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/ps_pretrain.py or configs/ps_pretrain.py:quick.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and samples go (default: workdirs/<task>). "
    "Running again with the same workdir resumes.")
flags.mark_flags_as_required(["config"])

# task name -> "module:function"; functions take (config, workdir).
TASKS = {
    "pretrain": "gantransfer_jax.train:train_and_evaluate",
    "finetune": "gantransfer_jax.train:train_and_evaluate",
    "evaluate": "gantransfer_jax.tasks.evaluate:run",
    "select": "gantransfer_jax.tasks.select:run",
    "toy2d": "gantransfer_jax.tasks.toy2d:run",
}


def resolve_task(name: str):
  if name not in TASKS:
    raise app.UsageError(f"config.task {name!r} is unknown; valid: {', '.join(sorted(TASKS))}")
  module, function = TASKS[name].split(":")
  return getattr(importlib.import_module(module), function)


class _QuietLibraries(std_logging.Filter):
  """Keeps Orbax's per-save INFO chatter off the console; warnings still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """What the command line does to absl's console log (notebooks call it too)."""
  absl_logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _QuietLibraries) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietLibraries())


def main(argv):
  quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("workdirs", config.task)
  from gantransfer_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed(config.get("distributed", False))
  logging.info("Task %s, workdir %s", config.task, os.path.abspath(workdir))
  resolve_task(config.task)(config, workdir)


if __name__ == "__main__":
  app.run(main)
