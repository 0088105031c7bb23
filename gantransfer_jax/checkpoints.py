"""Orbax checkpoints of the train state, with the run's config saved beside it.

Layout: `WORKDIR/checkpoints/<step>/{state,config,SHA256SUMS}`. The config travels with
every checkpoint so finetuning and analysis tools can rebuild the model that wrote it.

Integrity: once Orbax has committed a step, its `SHA256SUMS` manifest (the format of
coreutils' `sha256sum`, so `sha256sum -c SHA256SUMS` checks a step by hand) records every
file. Restoring verifies it: a damaged newest step is reported in one line and the
newest intact one is used instead (a resumed run moves damaged steps to
`WORKDIR/damaged_checkpoints/`). Steps without a manifest (written before manifests
existed, or killed between commit and manifest) restore unverified, with a warning.

`WorkdirLock` keeps a workdir to one run at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from gantransfer_jax import errors

CHECKPOINT_DIR = "checkpoints"
MANIFEST = "SHA256SUMS"
DAMAGED_DIR = "damaged_checkpoints"
LOCK_FILE = ".lock"

_HASH_CHUNK_BYTES = 1 << 20
_warned_unverified: set[str] = set()  # Step folders already warned about (warn once).


class CheckpointError(errors.UserError, ValueError):
  """A checkpoint that cannot be restored: damaged, or not of the configured model."""


class WorkdirInUseError(errors.UserError, RuntimeError):
  """Another live run holds the workdir."""


def _config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _first_line(error: BaseException, limit: int = 300) -> str:
  """TensorStore errors run to hundreds of lines; their first one says what broke."""
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return text if len(text) <= limit else text[:limit] + "..."


# ---- Checksum manifests --------------------------------------------------------------


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _step_files(step_dir: str) -> list[str]:
  """The step's files relative to it, sorted; the manifest (and its temporary) excluded."""
  files = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if not rel.startswith(MANIFEST):
        files.append(rel)
  return sorted(files)


def write_manifest(step_dir: str) -> None:
  """Records the sha256 of every file of a committed step (atomically: all or nothing)."""
  lines = [f"{_sha256(os.path.join(step_dir, rel))}  {rel}\n" for rel in _step_files(step_dir)]
  temporary = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(temporary, "w", encoding="utf-8") as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, os.path.join(step_dir, MANIFEST))


def has_manifest(step_dir: str) -> bool:
  return os.path.isfile(os.path.join(step_dir, MANIFEST))


def manifest_problem(step_dir: str) -> str | None:
  """What is wrong with a step that has a manifest (a file missing or changed), or None."""
  with open(os.path.join(step_dir, MANIFEST), encoding="utf-8") as f:
    entries = [line.rstrip("\n").split("  ", 1) for line in f if line.strip()]
  if not entries or any(len(entry) != 2 for entry in entries):
    return f"its {MANIFEST} is unreadable"
  for digest, rel in entries:
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      return f"{rel} is missing"
    if _sha256(path) != digest:
      return f"{rel} does not match its checksum"
  return None


def _warn_unverified(step_dir: str) -> None:
  if step_dir not in _warned_unverified:
    _warned_unverified.add(step_dir)
    logging.warning("Checkpoint %s has no %s (written before checksums, or interrupted "
                    "before its manifest): restoring it unverified.", step_dir, MANIFEST)


# ---- One run per workdir -------------------------------------------------------------


class WorkdirLock:
  """An exclusive `flock` on WORKDIR/.lock, held for a whole run.

  The kernel releases a flock when its holder exits, however it exits (kill -9
  included), so the file a dead run leaves is simply taken over; the pid inside only
  names the holder in the error. Only the first process of a multi-host run takes it
  (the others write into the same workdir as part of the same run). Needs a filesystem
  with working flock (local disks do; some network filesystems do not).
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd: int | None = None

  def __enter__(self) -> WorkdirLock:
    if jax.process_index() != 0:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise WorkdirInUseError(
          f"workdir {os.path.dirname(self.path)} is in use by another run (pid {holder}): "
          "wait for it to finish, stop it, or pick another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


# ---- The train state's checkpoints -----------------------------------------------------


class Checkpointer:
  """Saves every `every` steps (and on demand), keeps the newest `keep`, resumes.

  Saves are asynchronous (Orbax); a background thread writes each step's manifest
  once Orbax has committed it.
  """

  def __init__(self, workdir: str, *, keep: int = 3):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )
    self._sealer: threading.Thread | None = None
    self._problems: dict[int, str | None] = {}  # Verified steps: None = intact.
    self._closed = False

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
    self._join_sealer()  # Orbax would wait for the previous save here anyway.
    if step in self._manager.all_steps():
      return  # Already saved at this step (e.g. periodic save then final save).
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            config=ocp.args.JsonSave(_config_to_json(config)),
        ),
    )
    if jax.process_count() > 1:
      # Orbax's wait is a barrier across processes: waited on from a second thread too,
      # it is entered twice ("Barrier _async_write_complete is already ongoing") and
      # the save fails. So several hosts wait and seal here, in step with each other.
      self._seal(step)
      return
    self._sealer = threading.Thread(target=self._seal, args=(step,), daemon=True,
                                    name=f"checkpoint-manifest-{step}")
    self._sealer.start()

  def _seal(self, step: int) -> None:
    try:
      self._manager.wait_until_finished()
      if jax.process_index() == 0 and os.path.isdir(self.step_dir(step)):
        write_manifest(self.step_dir(step))
    except Exception as e:  # pylint: disable=broad-except
      # The step stays restorable, unverified; the save's own error (if any) is
      # Orbax's to report from the main thread.
      logging.warning("No %s for checkpoint %d: %s", MANIFEST, step, _first_line(e))

  def _join_sealer(self) -> None:
    if self._sealer is not None:
      self._sealer.join()
      self._sealer = None

  def _problem(self, step: int) -> str | None:
    """Why `step` is damaged (its manifest disagrees with its files), or None; cached."""
    if step not in self._problems:
      step_dir = self.step_dir(step)
      self._problems[step] = manifest_problem(step_dir) if has_manifest(step_dir) else None
    return self._problems[step]

  def _report_damaged(self, step: int, why: str) -> None:
    logging.warning("Checkpoint %s is damaged (%s): falling back to an older step.",
                    self.step_dir(step), why)

  def latest_intact_step(self) -> int | None:
    """The newest step whose files match its manifest (or that has none), or None."""
    self.wait()  # A save in flight is not judged half-written.
    for step in sorted(self._manager.all_steps(), reverse=True):
      if self._problem(step) is None:
        return step
    return None

  def latest_config(self) -> dict[str, Any] | None:
    """The config saved with the newest intact step (as JSON), or None without one."""
    step = self.latest_intact_step()
    if step is None:
      return None
    restored = self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return dict(restored.config)

  def restore_latest(self, target: Any) -> Any | None:
    """Restores the newest intact checkpoint into `target`'s structure and shardings.

    None when there is no checkpoint. Damaged steps (checksum mismatch; or, without a
    manifest, unreadable) are reported, moved to WORKDIR/damaged_checkpoints/ once an
    older step restores, and skipped; CheckpointError when no step restores.
    """
    self.wait()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    steps = sorted(self._manager.all_steps(), reverse=True)
    damaged = []
    for step in steps:
      step_dir = self.step_dir(step)
      why = self._problem(step)
      if why is None:
        sealed = has_manifest(step_dir)
        if not sealed:
          _warn_unverified(step_dir)
        try:
          restored = self._manager.restore(
              step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # pylint: disable=broad-except
          if sealed:  # Intact files that do not restore: not damage, a different model.
            raise CheckpointError(
                f"checkpoint {step_dir} is intact but does not restore into the "
                f"configured model: {_first_line(e)}") from e
          why = f"unreadable: {_first_line(e)}"
        else:
          self._set_aside(damaged)
          return restored.state
      self._report_damaged(step, why)
      damaged.append((step, why))
    if damaged:
      raise CheckpointError(
          f"no intact checkpoint in {self.directory}: "
          + "; ".join(f"step {s}: {why}" for s, why in damaged)
          + " (move the folder away to start afresh)")
    return None

  def _set_aside(self, damaged: list[tuple[int, str]]) -> None:
    """Moves damaged steps out of Orbax's sight: a resumed run reaching their step
    number again saves afresh instead of finding it taken."""
    if not damaged:
      return
    if jax.process_index() == 0:
      aside = os.path.join(self.workdir, DAMAGED_DIR)
      os.makedirs(aside, exist_ok=True)
      for step, _ in damaged:
        destination, n = os.path.join(aside, str(step)), 1
        while os.path.exists(destination):
          destination, n = os.path.join(aside, f"{step}.{n}"), n + 1
        os.replace(self.step_dir(step), destination)
        logging.warning("Moved damaged checkpoint %d to %s.", step, destination)
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()
    self._join_sealer()

  def close(self) -> None:
    """Waits for the pending save and its manifest; a second call does nothing."""
    if self._closed:
      return
    self._manager.wait_until_finished()
    self._join_sealer()
    self._manager.close()
    self._closed = True


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


def _intact_step(directory: str, step: int, explicit: bool) -> int:
  """`step` if intact; else, unless the user named that very step, the newest intact
  older one (read-only: nothing is moved)."""
  steps = [step] if explicit else sorted(
      (int(d) for d in os.listdir(directory) if d.isdigit() and int(d) <= step), reverse=True)
  problems = []
  for candidate in steps:
    step_dir = os.path.join(directory, str(candidate))
    if not has_manifest(step_dir):
      _warn_unverified(step_dir)
      return candidate
    why = manifest_problem(step_dir)
    if why is None:
      return candidate
    logging.warning("Checkpoint %s is damaged (%s)%s.", step_dir, why,
                    "" if explicit else ": trying an older step")
    problems.append(f"step {candidate}: {why}")
  raise CheckpointError(f"no intact checkpoint in {directory}: " + "; ".join(problems))


def _on_first_local_device(directory: str, step: int) -> Any:
  """The saved arrays' shapes on this process's first device. Without a target Orbax
  restores the saving run's shardings, which fails on another device topology (a run
  of 4 devices or several hosts finetuned, evaluated or sampled on 1)."""
  with ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.StandardCheckpointHandler(),
                                "config": ocp.JsonCheckpointHandler()}) as manager:
    metadata = manager.item_metadata(step)["state"]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                      metadata)


def _restore(path: str, *, with_state: bool):
  directory, step = resolve_checkpoint(path)
  explicit = os.path.abspath(os.path.expanduser(path)) == os.path.join(directory, str(step))
  step = _intact_step(directory, step, explicit)
  try:
    items = {"config": ocp.args.JsonRestore()}
    if with_state:
      items["state"] = ocp.args.StandardRestore(_on_first_local_device(directory, step))
    with ocp.CheckpointManager(directory) as manager:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"cannot read checkpoint {os.path.join(directory, str(step))}: "
                          f"{_first_line(e)}") from e
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
  else:  # A BSA run (tasks/bsa.py) has no D and samples the G it trains, not an EMA.
    g_state, d_state = state["g_state"], state.get("d_state", {})
  if "g_noise_consts" in state:  # Older StyleGAN2-ADA conversions kept these beside g_state.
    g_state = {**g_state, "noise_consts": state["g_noise_consts"]}
  return config, {
      "generator": state["g_params"],
      "generator_ema": state.get("g_ema_params", state["g_params"]),
      "generator_state": g_state,
      "discriminator": state.get("d_params", {}),
      "discriminator_state": d_state,
  }


# Fields that fix parameter shapes: a finetune must match the checkpoint on these.
# A finetune's model may differ from its source's by design where its family says it
# starts from the source's (`Family.transfers_from`: AdaFM around a ResNet GAN's G).
_ARCHITECTURE_FIELDS = ("model", "resolution", "num_classes")
# Change no transferred parameter shape (new class embeddings start fresh: models.gan).
# Fields that fix no parameter shape: a finetune may choose its own (e.g. bfloat16 and
# rematerialisation on a TPU for a checkpoint pretrained in float32 on a GPU).
_FREE_MODEL_FIELDS = ("truncation_psi", "mbstd_group_size", "num_classes",
                      "mixed_precision", "num_fp16_res", "remat")


def inherit_model_config(config: ml_collections.ConfigDict,
                         path: str) -> ml_collections.ConfigDict:
  """Fills unset (None) model fields of `config` from the checkpoint's saved config.

  Fields the user did set must agree with the checkpoint on everything that fixes a
  parameter shape; a mismatch is a ValueError naming both values.
  """
  # Here: the registry imports the model code, which reading checkpoints does not need.
  from gantransfer_jax.models import families  # pylint: disable=g-import-not-at-top

  saved = restore_raw_config(path)
  config = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy; caller's is untouched.
  problems = []

  def reconcile(section, key, saved_value, qualified):
    value = section.get(key)
    if key == "model" and families.can_start_from(value, saved_value):
      return
    if value is None:
      section[key] = saved_value
    elif value != saved_value and key not in _FREE_MODEL_FIELDS:
      problems.append(f"{qualified}: config has {value!r}, checkpoint has {saved_value!r}")

  for key in _ARCHITECTURE_FIELDS:
    if key in saved:
      reconcile(config, key, saved[key], key)
  source = families.lookup(saved.get("model"))  # Only the source's section fixes shapes.
  name = source.config_section if source and source.inherit_section else None
  if name and name in saved:
    if config.get(name) is None:
      config[name] = ml_collections.ConfigDict()
    for key, saved_value in saved[name].items():
      reconcile(config[name], key, saved_value, f"{name}.{key}")
  if problems:
    raise CheckpointError(f"init_checkpoint {path} does not match the requested model:\n  - "
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
