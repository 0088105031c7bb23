"""Orbax checkpoints of the train state, with the run's config saved beside it.

Layout: `WORKDIR/checkpoints/<step>/{state,config}`. The config travels with every
checkpoint so finetuning and analysis tools can rebuild the model that wrote it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def _config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


class Checkpointer:
  """Saves every `every` steps (and on demand), keeps the newest `keep`, resumes."""

  def __init__(self, workdir: str, *, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
    if step in self._manager.all_steps():
      return  # Already saved at this step (e.g. periodic save then final save).
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(_config_to_json(config)),
        ),
    )

  def restore_latest(self, target: Any) -> Any | None:
    """Restores the newest checkpoint into `target`'s structure and shardings, or None."""
    step = self.latest_step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return restored.state

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def resolve_checkpoint(path: str) -> tuple[str, int]:
  """Maps a workdir, its checkpoints/ folder or one step folder to (manager dir, step)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint or workdir at {path}")
  candidates = [os.path.join(path, CHECKPOINT_DIR), path]
  for directory in candidates:
    if os.path.isdir(directory):
      steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
      if steps:
        return directory, steps[-1]
  parent, name = os.path.split(path)
  if name.isdigit():
    return parent, int(name)
  raise FileNotFoundError(
      f"{path} holds no checkpoint: expected a workdir with {CHECKPOINT_DIR}/<step>/, "
      "a checkpoints folder, or a step folder")


def _restore(path: str, *, with_state: bool):
  directory, step = resolve_checkpoint(path)
  items = {"config": ocp.args.JsonRestore()}
  if with_state:
    items["state"] = ocp.args.StandardRestore()
  with ocp.CheckpointManager(directory) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  state = restored.state if with_state else None
  return ml_collections.ConfigDict(restored.config), state, step


def restore_raw(path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """Restores (config, state as nested dicts of arrays, step) without knowing the model."""
  return _restore(path, with_state=True)


def restore_params(path: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(config, {'generator', 'generator_ema', 'generator_state', 'discriminator',
  'discriminator_state'}) of a checkpoint; the states are the networks' non-parameter
  collections (`gantransfer_jax.models.gan`)."""
  config, state, _ = restore_raw(path)
  if "g_stats" in state:  # Written before model families had states: StyleGAN2 only.
    g_state, d_state = {"stats": state["g_stats"]}, {}
  else:
    g_state, d_state = state["g_state"], state["d_state"]
  if "g_noise_consts" in state:  # Older StyleGAN2-ADA conversions kept these beside g_state.
    g_state = {**g_state, "noise_consts": state["g_noise_consts"]}
  return config, {
      "generator": state["g_params"],
      "generator_ema": state["g_ema_params"],
      "generator_state": g_state,
      "discriminator": state["d_params"],
      "discriminator_state": d_state,
  }


# Fields that fix parameter shapes: a finetune must match the checkpoint on these.
_ARCHITECTURE_FIELDS = ("model", "resolution", "num_classes")
_MODEL_SECTIONS = ("stylegan2", "resnet", "sngan")
# (finetuned model, source model) pairs that differ by design: AdaFM builds its
# generator around a pretrained ResNet GAN's general part.
_COMPATIBLE_MODELS = {("adafm", "resnet")}
# Change no transferred parameter shape (new class embeddings start fresh: models.gan).
_FREE_MODEL_FIELDS = ("truncation_psi", "mbstd_group_size", "num_classes")


def inherit_model_config(config: ml_collections.ConfigDict,
                         path: str) -> ml_collections.ConfigDict:
  """Fills unset (None) model fields of `config` from the checkpoint's saved config.

  Fields the user did set must agree with the checkpoint on everything that fixes a
  parameter shape; a mismatch is a ValueError naming both values.
  """
  saved = restore_raw_config(path)
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; caller's is untouched.
  problems = []

  def reconcile(section, key, saved_value, qualified):
    value = section.get(key)
    if key == "model" and (value, saved_value) in _COMPATIBLE_MODELS:
      return
    if value is None:
      section[key] = saved_value
    elif value != saved_value and key not in _FREE_MODEL_FIELDS:
      problems.append(f"{qualified}: config has {value!r}, checkpoint has {saved_value!r}")

  for key in _ARCHITECTURE_FIELDS:
    if key in saved:
      reconcile(config, key, saved[key], key)
  name = saved.get("model")  # Only the source family's section fixes shapes.
  if name in _MODEL_SECTIONS and name in saved:
    if config.get(name) is None:
      config[name] = ml_collections.ConfigDict()
    for key, saved_value in saved[name].items():
      reconcile(config[name], key, saved_value, f"{name}.{key}")
  if problems:
    raise ValueError(f"init_checkpoint {path} does not match the requested model:\n  - "
                     + "\n  - ".join(problems))
  return config


def restore_raw_config(path: str) -> ml_collections.ConfigDict:
  """The config saved with a checkpoint, without reading its arrays."""
  return _restore(path, with_state=False)[0]


def save_new_workdir(workdir: str, state: Any, config: ml_collections.ConfigDict) -> str:
  """Writes `state` and `config` as the only checkpoint of a new workdir; returns its folder.

  For converters: the step is `state['step']`. A workdir that already holds checkpoints
  is refused, so a conversion never mixes with (or is resumed over) a real run.
  """
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  if os.path.isdir(directory) and os.listdir(directory):
    raise FileExistsError(f"{directory} already holds checkpoints; convert into a new workdir")
  step = int(state["step"])
  checkpointer = Checkpointer(workdir, keep=1)
  checkpointer.save(step, state, config)
  checkpointer.close()
  return os.path.join(directory, str(step))
