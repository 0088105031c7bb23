r"""Which pretrained checkpoint to finetune from: rank candidates against a target set.

  python -m gantransfer_jax.main --config=configs/select.py --workdir=workdirs/select \
      --config.candidates=workdirs/ps_pretrain,workdirs/ffhq256 \
      --config.data.source=folder:/my/images --config.num_samples=5000

`candidates`: comma-separated workdirs, checkpoints folders or step folders (ours, or
StyleGAN2-ADA files converted by launch/convert_stylegan2_ada.py). `data.source`: the
target (required), in any data-source form (folder:PATH, tfds:NAME[:SPLIT], npz:PATH, orl_faces, synth:NAME).
`source_data`: comma-separated, aligned with `candidates`; a non-empty entry scores that
candidate's source dataset against the target instead of its samples (paper 004's
"source data" regime), e.g. `--config.source_data=synth:primitives_ps,` for the first of
two candidates. Writes WORKDIR/selection.json; see gantransfer_jax/tasks/select.py for
the recommendation rule.
"""

import ml_collections
from ml_collections import config_dict


def get_config(preset: str = "") -> ml_collections.ConfigDict:
  del preset
  config = ml_collections.ConfigDict()
  config.task = "select"
  config.seed = 0
  config.candidates = config_dict.placeholder(str)  # 'workdir_a,workdir_b,...'
  config.source_data = ""         # '' or one entry per candidate, '' entries allowed.
  # The target set, required (as finetuning's --config.data.source).
  config.data = ml_collections.ConfigDict(dict(source=config_dict.placeholder(str)))
  # Resolution the target is loaded at and every candidate is compared at (candidates of
  # another resolution are resized, with a warning). None: the first candidate's.
  config.resolution = config_dict.placeholder(int)
  config.num_samples = 5_000      # Generated images per candidate (synthetic sources: images).
  config.num_reference = 0        # Target images (0 = the whole set).
  config.num_source_images = 0    # Source-set images (0: all of a real set, num_samples synthetic).
  config.truncation_psi = 1.0
  config.k = 5                    # Neighbours for precision/recall (paper 004: 5).
  config.recall_tolerance = 0.0   # Recalls this close to the best tie (then FID decides).
  return config
