r"""Writes a PNG grid of synthetic samples.

  python -m gantransfer_jax.synth --name=primitives_ps --resolution=256 --out=grid.png \
      [--num=16] [--seed=0] [--n_shapes=100] [--size_policy=decay] [--background=grey]
"""

from collections.abc import Sequence

from absl import app
from absl import flags
import jax

from gantransfer_jax import images
from gantransfer_jax import synth

_NAME = flags.DEFINE_enum("name", "primitives_ps", list(synth.SYNTHESIZERS), "Synthesizer.")
_RESOLUTION = flags.DEFINE_integer("resolution", 256, "Image resolution (power of two, 16-1024).")
_OUT = flags.DEFINE_string("out", "grid.png", "Output PNG path.")
_NUM = flags.DEFINE_integer("num", 16, "Number of samples.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_N_SHAPES = flags.DEFINE_integer("n_shapes", 100, "Shapes per image.")
_SIZE_POLICY = flags.DEFINE_enum("size_policy", "decay", list(synth.SIZE_POLICIES),
                                 "Shape size policy.")
_BACKGROUND = flags.DEFINE_enum("background", None, list(synth.BACKGROUNDS),
                                "Solid background of primitives / primitives_s (default grey).")
_COLS = flags.DEFINE_integer("cols", None, "Grid columns (default: about sqrt(num)).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  options = {"n_shapes": _N_SHAPES.value, "size_policy": _SIZE_POLICY.value}
  if _BACKGROUND.value is not None:
    options["background"] = _BACKGROUND.value
  try:
    synthesize = synth.make_synthesizer(_NAME.value, _RESOLUTION.value, **options)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  samples = synthesize(jax.random.key(_SEED.value), _NUM.value)
  print(f"wrote {images.save_grid(_OUT.value, samples, _COLS.value)}")


if __name__ == "__main__":
  app.run(main)
