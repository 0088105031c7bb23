r"""Finetuning on a small real image set (papers 001, 004; NOTES §2, §6).

Presets: `--config=configs/finetune.py:METHOD[,quick]`
  scratch      random initialisation (+ DiffAugment): the papers' baseline.
  transfergan  start from `init_checkpoint`, finetune everything (TransferGAN).
  freezed      start from `init_checkpoint`, freeze the `freeze_d` highest-resolution
               discriminator blocks (FreezeD).
  ,quick       CPU-sized: a 32 x 32 model (the ps_pretrain quick one) and short runs.

The model (kind, resolution, widths) comes from the config saved with
`init_checkpoint`; setting any of those fields on the command line must agree with it.

  python -m gantransfer_jax.main --config=configs/finetune.py:transfergan \
      --config.init_checkpoint=workdirs/ps_pretrain --config.data.source=folder:/my/images
"""

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

METHODS = ("scratch", "transfergan", "freezed")


def _pretrain_config(preset: str) -> ml_collections.ConfigDict:
  # Config files are loaded by path, not as a package: import the sibling by path too.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ps_pretrain.py")
  spec = importlib.util.spec_from_file_location("ps_pretrain_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def get_config(preset: str = "transfergan") -> ml_collections.ConfigDict:
  method, *modifiers = preset.split(",")
  if method not in METHODS or any(m != "quick" for m in modifiers):
    raise ValueError(f"unknown preset {preset!r}; valid: METHOD[,quick] with METHOD one of "
                     f"{', '.join(METHODS)}")
  quick = "quick" in modifiers
  config = _pretrain_config("quick" if quick else "")
  config.task = "finetune"
  config.method = method

  config.data = ml_collections.ConfigDict(dict(
      source="orl_faces",  # folder:PATH | tfds:NAME[:SPLIT] | npz:PATH | orl_faces
      num_images=100,      # n-shot subset (0 = all), fixed by subset_seed.
      subset_seed=0,
      hflip=False,
      image_key="image",
      # Synthesizer options stay so a finetune may also target synthetic data.
      n_shapes=config.data.n_shapes,
      size_policy=config.data.size_policy,
  ))
  config.total_steps = 400_000 // config.batch_size  # 400 kimg (NOTES §2).
  config.loss.r1_interval = 16  # Lazy R1 when finetuning (authors' code).
  config.augment = "color,translation,cutout"
  config.freeze_d = 0
  config.init_checkpoint = config_dict.placeholder(str)

  if method != "scratch":
    # Filled from the checkpoint's saved config unless set on the command line.
    config.model = config_dict.placeholder(str)
    config.resolution = config_dict.placeholder(int)
    for key, value in config.stylegan2.items():
      config.stylegan2[key] = config_dict.placeholder(type(value))
  if method == "freezed":
    # Freeze the high-resolution blocks, train the last few low-resolution blocks and
    # the epilogue (NOTES §6): 4 of the 7 blocks at 256, 2 of the 4 at 32.
    config.freeze_d = 2 if quick else 4

  if quick:
    config.total_steps = 1_000
    config.log_every = 50
    config.sample_every = 250
    config.checkpoint_every = 500
    config.loss.r1_interval = 4
  return config
