r"""Scores a checkpoint's EMA generator against an image set: FID, KID, precision/recall.

  python -m gantransfer_jax.main --config=configs/evaluate.py \
      --config.checkpoint=workdirs/finetune --config.data.source=orl_faces --config.num_samples=5000

`data.source` takes any data source (folder:PATH, tfds:NAME[:SPLIT], npz:PATH, orl_faces)
or `synth:NAME` for a synthetic reference set, as finetuning's `data.source` does; unset,
it is the checkpoint's own training data (all of it). Writes WORKDIR/report.json and prints it.
"""

import ml_collections
from ml_collections import config_dict


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  del preset
  config = ml_collections.ConfigDict()
  config.task = "evaluate"
  config.seed = 0
  config.checkpoint = config_dict.placeholder(str)  # Workdir, checkpoints folder or step folder.
  # The reference set; None: the checkpoint's data.source.
  config.data = ml_collections.ConfigDict(dict(source=config_dict.placeholder(str)))
  config.num_samples = 5_000      # Generated images.
  config.num_reference = 0        # Reference images (0 = the whole set; synthetic: num_samples).
  config.truncation_psi = 1.0
  config.noise_mode = "random"    # StyleGAN2: random | const (the checkpoint's fixed maps) | none.
  config.k = 5                    # Neighbours for precision/recall.
  return config
