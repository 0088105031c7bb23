r"""Converts the AdaFM authors' GAN_stability ResNet checkpoint (ImageNet 128) to flax, torch-free.

  python launch/convert_gan_stability.py --src imagenet-8c525f2c.pt --out imagenet128.npz

--src: {'generator': ..., 'discriminator': ...} as GAN_stability saves it, or a bare G or
D state dict, in any torch.save format or as a pickle of numpy arrays ('module.' prefixes
are stripped). The class embedding is dropped and G's fc keeps only its z columns; D's fc
is re-initialised unless --discriminator_class picks a class row. See
gantransfer_jax/convert/gan_stability.py for the mapping; read the result back with
`gan_stability.load_npz`.
"""

import os

from absl import app
from absl import flags

from gantransfer_jax.convert import gan_stability

_SRC = flags.DEFINE_string("src", None, "The authors' checkpoint (.pt / .pth / .pkl).",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "The .npz file to write.", required=True)
_GENERATOR_KEY = flags.DEFINE_string(
    "generator_key", gan_stability.GENERATOR,
    "Checkpoint entry holding G ('generator_test' for the authors' EMA copy).")
_DISCRIMINATOR_CLASS = flags.DEFINE_integer(
    "discriminator_class", None, "Keep this class's row of D's fc (default: re-initialise).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the re-initialised D fc.")


def main(argv):
  del argv
  architecture = gan_stability.convert_file(
      _SRC.value, _OUT.value, generator_key=_GENERATOR_KEY.value,
      discriminator_class=_DISCRIMINATOR_CLASS.value, seed=_SEED.value)
  print(f"wrote {os.path.abspath(_OUT.value)}: {architecture}")


if __name__ == "__main__":
  app.run(main)
