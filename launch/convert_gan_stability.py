r"""Converts the AdaFM authors' GAN_stability ResNet checkpoint (ImageNet 128) to flax, torch-free.

  # A checkpoint workdir that finetunes start from:
  python launch/convert_gan_stability.py --src imagenet-8c525f2c.pt --workdir workdirs/imagenet128
  python -m gantransfer_jax.main --config=configs/finetune.py:adafm \
      --config.init_checkpoint=workdirs/imagenet128 --config.data.source=folder:/my/images
  # Or the bare params as an .npz (read back with `gan_stability.load_npz`):
  python launch/convert_gan_stability.py --src imagenet-8c525f2c.pt --out imagenet128.npz

--src: {'generator': ..., 'discriminator': ..., 'generator_test': ...} as GAN_stability
saves it, or a bare G or D state dict, in any torch.save format or as a pickle of numpy
arrays ('module.' prefixes are stripped). The class embedding is dropped and G's fc keeps
only its z columns; D's fc is re-initialised unless --discriminator_class picks a class
row. A workdir's G_ema is the file's 'generator_test' (G when absent), its D a fresh one
when the file has none, and its config --base_config with the inferred resolution, nf and
z_dim. See gantransfer_jax/convert/gan_stability.py for the mapping.
"""

import os

from absl import app
from absl import flags

from gantransfer_jax import config_files
from gantransfer_jax.convert import gan_stability

_SRC = flags.DEFINE_string("src", None, "The authors' checkpoint (.pt / .pth / .pkl).",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "The .npz file to write (or give --workdir).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A new workdir to write checkpoint 0 into, for "
    "--config.init_checkpoint (or give --out).")
_BASE_CONFIG = flags.DEFINE_string(
    "base_config", "ps_pretrain:resnet",
    "CONFIG[:PRESET] (a configs/ name or a .py path) whose get_config(PRESET) completes "
    "a workdir's config.")
_GENERATOR_KEY = flags.DEFINE_string(
    "generator_key", gan_stability.GENERATOR,
    "Checkpoint entry holding G ('generator_test' for the authors' EMA copy).")
_DISCRIMINATOR_CLASS = flags.DEFINE_integer(
    "discriminator_class", None, "Keep this class's row of D's fc (default: re-initialise).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the re-initialised D fc (and of a missing D).")


def main(argv):
  del argv
  if (_OUT.value is None) == (_WORKDIR.value is None):
    raise app.UsageError("give exactly one of --out (an .npz) and --workdir (a checkpoint)")
  options = dict(generator_key=_GENERATOR_KEY.value,
                 discriminator_class=_DISCRIMINATOR_CLASS.value, seed=_SEED.value)
  if _OUT.value is not None:
    architecture = gan_stability.convert_file(_SRC.value, _OUT.value, **options)
    print(f"wrote {os.path.abspath(_OUT.value)}: {architecture}")
    return
  try:
    config = gan_stability.convert_file_to_workdir(
        _SRC.value, _WORKDIR.value, config_files.get_config(_BASE_CONFIG.value), **options)
  except (FileExistsError, gan_stability.LayoutError) as error:
    raise SystemExit(f"error: {error}") from None
  print(f"wrote {os.path.abspath(_WORKDIR.value)}: model {config.model}, "
        f"{config.resolution}x{config.resolution}, nf {config.resnet.nf}, "
        f"z_dim {config.resnet.z_dim}.\n"
        f"Finetune with --config.init_checkpoint={_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
