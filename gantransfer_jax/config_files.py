"""Experiment config files, loaded by path as `--config=configs/NAME.py:PRESET` loads them.

Config files are not a package (ml_collections' config flags import them from a path),
so code that needs one away from the command line (a config building on a sibling,
the converters, benchmarks, notebooks) loads it here: by path, or by name from the
repository's `configs/` folder.

  config = config_files.get_config("finetune:dip,quick")
  config = config_files.get_config("configs/ps_pretrain.py:resnet")
  ps_pretrain = config_files.load_module("ps_pretrain")
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import types
from collections.abc import Iterable

import ml_collections

# The repository's configs/, beside the package (an editable or source install).
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def resolve(name_or_path: str | os.PathLike) -> pathlib.Path:
  """A config file's path: `NAME` is `CONFIG_DIR/NAME.py`, anything ending in .py a path."""
  text = os.fspath(name_or_path)
  path = pathlib.Path(text) if text.endswith(".py") else CONFIG_DIR / f"{text}.py"
  if not path.is_file():
    hint = ("" if text.endswith(".py") else
            " (config names are looked up in the repository's configs/: install the "
            "package from a checkout with `pip install -e .`, or pass a path)")
    raise FileNotFoundError(f"config file {path} not found{hint}")
  return path


def load_module(name_or_path: str | os.PathLike) -> types.ModuleType:
  """The config module itself (its `get_config` and preset tables)."""
  path = resolve(name_or_path)
  spec = importlib.util.spec_from_file_location(f"gantransfer_jax_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def split_spec(spec: str) -> tuple[str, str]:
  """'NAME_OR_PATH[:PRESET]' -> (name or path, preset); the preset may hold commas."""
  if ".py:" in spec:
    path, preset = spec.split(".py:", 1)
    return path + ".py", preset
  if spec.endswith(".py"):
    return spec, ""
  name, _, preset = spec.partition(":")
  return name, preset


def get_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config(PRESET)` of 'NAME_OR_PATH[:PRESET]', as the `--config` flag reads it
  (no preset: the file's default)."""
  name_or_path, preset = split_spec(spec)
  module = load_module(name_or_path)
  return module.get_config(preset) if preset else module.get_config()


def apply_overrides(config: ml_collections.ConfigDict,
                    assignments: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `KEY=VALUE` assignments (the launch scripts' --set flags) to config, in
  place; values are Python literals where they parse, bare strings otherwise."""
  for assignment in assignments:
    key, value = assignment.split("=", 1)
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # A bare string.
    config.update_from_flattened_dict({key: value})
  return config
