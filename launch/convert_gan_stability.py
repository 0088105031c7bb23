r"""Converts a GAN_stability resnet2 checkpoint (AdaFM's ImageNet 128 source) to flax, torch-free.

  # The authors' ImageNet file (GAN_stability's configs/pretrained/imagenet_pretrained.yaml):
  wget https://s3.eu-central-1.amazonaws.com/avg-projects/gan_stability/models/imagenet-8c505f47.pt
  # A checkpoint workdir that finetunes start from:
  python launch/convert_gan_stability.py --src imagenet-8c505f47.pt --workdir workdirs/imagenet128
  python -m gantransfer_jax.main --config=configs/finetune.py:adafm \
      --config.init_checkpoint=workdirs/imagenet128 --config.data.source=folder:/my/images
  # AdaFM's download_pretrainedGAN.py output (bare G and D state dicts, two files):
  python launch/convert_gan_stability.py --src ImageNetPre_generator \
      --discriminator_src ImageNetPre_discriminator --workdir workdirs/imagenet128
  # Or the bare params as an .npz (read back with `gan_stability.load_npz`):
  python launch/convert_gan_stability.py --src imagenet-8c505f47.pt --out imagenet128.npz

--src: GAN_stability's training checkpoint {'generator', 'discriminator',
'generator_test', optimizers, 'it'} or a bare G or D state dict, in any torch.save format
or as a pickle of numpy arrays ('module.' prefixes are stripped). G and G_ema both get
the '--generator_key' entry: 'generator' by default, the G that AdaFM transfers
(its download_pretrainedGAN.py saves that one). By default the class condition is
dropped (G's fc keeps its z columns, D's fc is re-initialised: AdaFM's choice);
--generator_class=K folds class K into G's fc bias and keeps D's fc row K, so the
converted pair computes the authors' G(z, K) and D(x, K). The output says which entry
went where (also recorded as `converted_entries` in the workdir's config). See
gantransfer_jax/convert/gan_stability.py for the mapping.
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
_DISCRIMINATOR_SRC = flags.DEFINE_string(
    "discriminator_src", None, "A second file holding D (AdaFM's ImageNetPre_discriminator "
    "beside a bare G; --workdir only).")
_BASE_CONFIG = flags.DEFINE_string(
    "base_config", "ps_pretrain:resnet",
    "CONFIG[:PRESET] (a configs/ name or a .py path) whose get_config(PRESET) completes "
    "a workdir's config.")
_GENERATOR_KEY = flags.DEFINE_enum(
    "generator_key", gan_stability.GENERATOR,
    [gan_stability.GENERATOR, gan_stability.EMA_GENERATOR],
    "Checkpoint entry that becomes G and G_ema: 'generator' (what AdaFM transfers) or "
    "'generator_test' (the authors' EMA copy).")
_GENERATOR_CLASS = flags.DEFINE_integer(
    "generator_class", None, "Fold this class's embedding into G's fc bias (G(z, K)); D keeps "
    "fc row K too unless --discriminator_class says otherwise. Default: class-free.")
_DISCRIMINATOR_CLASS = flags.DEFINE_integer(
    "discriminator_class", None, "Keep this class's row of D's fc (default: "
    "--generator_class, else re-initialise).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the re-initialised D fc (and of a missing D).")


def main(argv):
  del argv
  if (_OUT.value is None) == (_WORKDIR.value is None):
    raise app.UsageError("give exactly one of --out (an .npz) and --workdir (a checkpoint)")
  if _DISCRIMINATOR_SRC.value and _OUT.value:
    raise app.UsageError("--discriminator_src needs --workdir")
  discriminator_class = _DISCRIMINATOR_CLASS.value
  if discriminator_class is None:
    discriminator_class = _GENERATOR_CLASS.value
  options = dict(generator_key=_GENERATOR_KEY.value, generator_class=_GENERATOR_CLASS.value,
                 discriminator_class=discriminator_class, seed=_SEED.value)
  try:
    if _OUT.value is not None:
      architecture = gan_stability.convert_file(_SRC.value, _OUT.value, **options)
      print(f"wrote {os.path.abspath(_OUT.value)}: {architecture}, G <- "
            f"'{_GENERATOR_KEY.value}'")
      return
    config = gan_stability.convert_file_to_workdir(
        _SRC.value, _WORKDIR.value, config_files.get_config(_BASE_CONFIG.value),
        discriminator_source=_DISCRIMINATOR_SRC.value, **options)
  except (FileExistsError, gan_stability.LayoutError) as error:
    raise SystemExit(f"error: {error}") from None
  print(f"wrote {os.path.abspath(_WORKDIR.value)}: {gan_stability.summary(config)}\n"
        f"Finetune with --config.init_checkpoint={_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
