"""The command line as a newcomer meets it: one-line user errors with exit status 2, a
required target, one data-source spelling, `config.init` as the one record of where
weights start, and checkpoints of another family or resolution named as such.

Subprocess tests stop at flag parsing (no JAX import); the rest call the same code
in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gantransfer_jax import checkpoints
from gantransfer_jax import config_files
from gantransfer_jax import errors
from gantransfer_jax import main as cli
from gantransfer_jax import train
from gantransfer_jax import validation
from gantransfer_jax.data import sources
from gantransfer_jax.pretrained import torch_pickle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
finetune = config_files.load_module("finetune")


def run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "gantransfer_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)


def test_a_config_typo_is_one_line_with_the_hint_and_exit_status_2():
  result = run_cli("--config=configs/finetune.py:transfergan,quick",
                   "--config.loss.r1_gama=3")
  assert result.returncode == errors.USAGE_EXIT_CODE == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip() == ('error: --config.loss.r1_gama: the config has no field '
                                   '\'r1_gama\'. Did you mean "r1_gamma" instead of '
                                   '"r1_gama"?')


def test_evaluate_takes_the_finetune_spelling_and_names_it_for_the_other():
  result = run_cli("--config=configs/evaluate.py", "--config.data=orl_faces")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "e.g. --config.data.source=orl_faces" in result.stderr
  for name in ("evaluate", "select"):
    config = config_files.get_config(name)
    config.data.source = "folder:/my/images"  # The field finetuning has.


def test_a_config_error_found_at_run_time_is_one_line_with_exit_status_2(tmp_path):
  # Validation runs inside the task, past flag parsing: main's own error handling.
  result = run_cli("--config=configs/finetune.py:scratch,quick", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
  assert "finetuning needs a target data set" in result.stderr


def test_an_unknown_preset_is_one_line():
  result = run_cli("--config=configs/finetune.py:transfergan,quik")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "unknown preset 'transfergan,quik'" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_user_errors_at_run_time_exit_2_and_bugs_keep_their_traceback(capsys):
  @errors.one_line_user_errors()
  def fails(error):
    raise error

  with pytest.raises(SystemExit) as exit_info:
    fails(validation.ConfigError("invalid config:\n  - batch_size 3 must be ..."))
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith("error: invalid config:\n  - batch_size 3")
  with pytest.raises(SystemExit):
    fails(FileNotFoundError("no checkpoint or workdir at /nope"))
  with pytest.raises(ZeroDivisionError):
    fails(ZeroDivisionError("a bug"))
  with pytest.raises(ValueError):  # A ValueError of generic code is a bug too.
    fails(ValueError("shapes do not match"))


def test_the_input_readers_errors_are_user_errors_by_their_class(tmp_path):
  """Bad data, checkpoints to convert and torch files raise UserError subclasses (no
  guessing from the file that raised), so each command prints them as one line."""
  truncated = tmp_path / "truncated.pt"
  truncated.write_bytes(b"PK\x03\x04 not a zip")
  raised = []
  for read in (lambda: sources.parse_source(f"npz:{tmp_path / 'missing.npz'}"),
               lambda: sources.decode_source(sources.parse_source(f"folder:{tmp_path}"), 16),
               lambda: torch_pickle.load(str(truncated))):
    with pytest.raises(ValueError) as info:
      read()
    raised.append(info.value)
  assert all(errors.is_user_error(error) for error in raised), raised
  assert not errors.is_user_error(ValueError("data/ code's own bug"))


def test_finetuning_needs_a_target_and_uses_all_of_it(tmp_path):
  config = finetune.get_config("scratch,quick")
  with pytest.raises(validation.ConfigError, match=r"set --config.data.source=folder:"):
    validation.validate_train_config(config, str(tmp_path))
  assert config.data.num_images == 0  # A user's folder is used whole.
  config.data.source = "orl_faces"
  validation.validate_train_config(config, str(tmp_path))


@pytest.mark.parametrize("method,init", [
    ("scratch", "scratch"), ("dip", "scratch"), ("dip_diffaug", "scratch"),
    ("transfergan", "checkpoint"), ("freezed", "checkpoint"), ("adafm", "checkpoint"),
    ("gphead", "checkpoint"), ("dip_freezed", "checkpoint"), ("cifar", "checkpoint")])
def test_the_preset_records_where_weights_start(method, init):
  assert finetune.get_config(method).init == init


def test_a_from_scratch_method_refuses_an_init_checkpoint(tmp_path):
  config = finetune.get_config("dip,quick")
  config.update(init_checkpoint=str(tmp_path))
  config.data.source = "orl_faces"
  with pytest.raises(validation.ConfigError, match="'dip' starts from random weights"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def _fake_checkpoint(workdir: str, config) -> str:
  """A workdir whose checkpoint holds `config` (what the family checks read)."""
  checkpointer = checkpoints.Checkpointer(workdir, keep=1)
  checkpointer.save(1, {"x": np.zeros(1, np.float32)}, config)
  checkpointer.close()
  return workdir


def test_a_checkpoint_of_another_family_is_named_as_such(tmp_path):
  resnet = config_files.get_config("ps_pretrain:resnet,quick")
  config = finetune.get_config("transfergan,quick")
  config.init_checkpoint = _fake_checkpoint(str(tmp_path / "resnet"), resnet)
  config.data.source = "orl_faces"
  with pytest.raises(validation.ConfigError,
                     match=r"'transfergan' transfers from a stylegan2 checkpoint, but .* "
                           r"holds a 'resnet' model"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_freeze_d_that_does_not_fit_the_resolution_says_which_value_does(tmp_path):
  quick = config_files.get_config("ps_pretrain:quick")  # 32 x 32: 4 D blocks.
  config = finetune.get_config("freezed")  # The 256 x 256 recipe: freeze_d=4.
  config.init_checkpoint = _fake_checkpoint(str(tmp_path / "ps_quick"), quick)
  config.data.source = "orl_faces"
  with pytest.raises(validation.ConfigError, match=r"freeze_d must be in \[0, 3\] at "
                     r"resolution 32.*set --config.freeze_d=2"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_flag_error_messages():
  message = cli.flag_error_message(
      AttributeError("'\\'total_step\\'\\nDid you mean \"total_steps\" instead of "
                     "\"total_step\"?'"), ["--config.total_step=3"])
  assert message == ('--config.total_step: the config has no field \'total_step\'. Did you '
                     'mean "total_steps" instead of "total_step"?')


def _cache_dir_of_a_run(tmp_path, **env) -> tuple[str, list[str]]:
  """The compilation cache a `main` process uses, and what one small jit wrote there."""
  script = ("import jax, jax.numpy as jnp\n"
            "from gantransfer_jax import main\n"
            "folder = main.use_persistent_compilation_cache()\n"
            "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()\n"
            "print(folder)\n")
  base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  result = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
      timeout=120, check=True,
      env={**base, "GANTRANSFER_JAX_CACHE": str(tmp_path / "assets"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **env})
  folder = result.stdout.strip().splitlines()[-1]
  return folder, sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_main_keeps_compiled_programs_in_the_assets_cache_unless_told_otherwise(tmp_path):
  folder, entries = _cache_dir_of_a_run(tmp_path)
  assert folder == str(tmp_path / "assets" / "xla")
  assert entries, "the jitted function was not written to the persistent cache"
  chosen = tmp_path / "chosen"
  folder, entries = _cache_dir_of_a_run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(chosen))
  assert folder == str(chosen) and entries
