"""Loads a folder of images into one uint8 array, square-cropped to a resolution.

Low-shot datasets are tens to thousands of images, so the whole set is decoded
once into memory. Files are read (never written) with Pillow in sorted path
order, so the same folder always gives the same array.

A labelled folder (load_labelled_image_folder) is the same files with one more
rule: every image lies in a class subfolder, PATH/CLASS/.../IMAGE, and its label
is CLASS's index among the class names sorted by name. Its images are in the
same order as load_image_folder's, so a labelled and an unlabelled load of one
folder agree image for image.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from gantransfer_jax import errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".bmp", ".webp", ".tif", ".tiff")

# Transparent pixels are composited onto white, as most viewers show them.
_MATTE = (255, 255, 255)


def list_image_files(path: str, *, recursive: bool = True) -> list[str]:
  """Sorted paths of the regular files under `path` with an image extension (any case).

  Anything else with an image name (a dangling or looping symlink, a FIFO, a device) is
  skipped with one warning naming it: opening a FIFO would block forever. Symlinks to
  regular files are followed.
  """
  if recursive:
    found = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
  else:
    found = [entry.path for entry in os.scandir(path) if not entry.is_dir()]
  named = sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS))
  regular = [p for p in named if os.path.isfile(p)]  # Follows links; False if broken.
  if len(regular) < len(named):
    others = sorted(set(named) - set(regular))
    warnings.warn(f"skipped {len(others)} image-named path(s) under {path!r} that are not "
                  "regular files (broken or looping symlinks, FIFOs, devices):\n  "
                  + "\n  ".join(others), stacklevel=2)
  return regular


def _to_rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB from any Pillow mode: greyscale replicated, alpha composited, 16 bit scaled."""
  if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    # 16-bit greyscale (PNG, PGM, TIFF): 65535 -> 255. Mode "I" holds the
    # same 16-bit values for some formats and Pillow versions.
    levels = np.asarray(image, dtype=np.float64)
    image = Image.fromarray(np.clip(np.rint(levels / 257.0), 0, 255).astype(np.uint8))
  elif image.mode == "F":
    levels = np.asarray(image, dtype=np.float64)
    scale = 255.0 if levels.max(initial=0.0) <= 1.0 else 1.0
    image = Image.fromarray(np.clip(np.rint(levels * scale), 0, 255).astype(np.uint8))
  if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
    rgba = image.convert("RGBA")
    matte = Image.new("RGBA", rgba.size, _MATTE + (255,))
    return Image.alpha_composite(matte, rgba).convert("RGB")
  return image.convert("RGB")


def _square(image: Image.Image, resolution: int) -> Image.Image:
  """Resizes so the shorter side is `resolution` and centre-crops, in one resampling."""
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) / 2, (height - side) / 2
  return image.resize((resolution, resolution), Image.Resampling.LANCZOS,
                      box=(left, top, left + side, top + side))


def _array_to_image(array: np.ndarray) -> Image.Image:
  """A Pillow image from uint8 / uint16 / bool [H, W] or [H, W, 1|3|4] (RGB(A)) pixels."""
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise errors.InputError(f"expected an [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] image, "
                     f"got shape {array.shape}")
  if array.dtype == np.uint16:
    array = np.rint(array / 257.0).astype(np.uint8)
  elif array.dtype == bool:
    array = array.astype(np.uint8) * 255
  elif array.dtype != np.uint8:
    raise errors.InputError(f"expected uint8, uint16 or bool pixels, got {array.dtype}")
  return Image.fromarray(np.ascontiguousarray(array))  # Mode L, RGB or RGBA from the shape.


def fit_image(image: np.ndarray | Image.Image, resolution: int) -> np.ndarray:
  """One image as uint8 [R, R, 3], the way load_image_folder brings every file to it.

  `image` is a Pillow image or a uint8 / uint16 / bool array [H, W] or
  [H, W, 1|3|4]. The shorter side is resized (Lanczos) to R and the centre
  cropped; greyscale is replicated, alpha composited onto white, 16 bit scaled.
  """
  if not isinstance(image, Image.Image):
    image = _array_to_image(image)
  return np.asarray(_square(_to_rgb(image), resolution), dtype=np.uint8)


def load_image(path: str, resolution: int) -> np.ndarray:
  """One image file as uint8 [R, R, 3]; raises OSError/ValueError if unreadable."""
  with Image.open(path) as image:
    image.load()
    # Camera JPEGs store their orientation in EXIF; show them upright.
    return fit_image(ImageOps.exif_transpose(image), resolution)


def _check_folder(path: str, resolution: int) -> None:
  if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
    raise errors.InputError(f"resolution must be a positive integer, got {resolution!r}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"image folder {path!r} does not exist")
  if not os.path.isdir(path):
    raise errors.InputError(f"{path!r} is not a folder")


def _load_files(files: list[str], resolution: int, path: str) -> tuple[np.ndarray, list[int]]:
  """Decodes `files` (found under `path`): the images and the indices of the readable files.

  The indices let callers keep per-file data (labels) aligned with the images when
  unreadable files are skipped.
  """
  images, kept, skipped = [], [], []
  for i, file in enumerate(files):
    try:
      images.append(load_image(file, resolution))
      kept.append(i)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
      skipped.append(f"{file} ({type(error).__name__}: {error})")
  if not images:
    raise errors.InputError(f"none of the {len(files)} image files under {path!r} is readable:\n  "
                     + "\n  ".join(skipped))
  if skipped:
    warnings.warn(f"skipped {len(skipped)} unreadable image file(s) under {path!r}:\n  "
                  + "\n  ".join(skipped), stacklevel=3)
  return np.stack(images), kept


def load_image_folder(path: str, resolution: int, *, recursive: bool = True) -> np.ndarray:
  """Every image under `path` as uint8 [N, R, R, 3], in sorted path order.

  Reads jpg, jpeg, png, pgm, bmp, webp, tif and tiff (greyscale, RGB, RGBA,
  palette, 16-bit) with Pillow; resizes (Lanczos) so the shorter side is
  `resolution` and centre-crops. Greyscale is replicated to 3 channels, alpha
  composited onto white, 16-bit scaled to 8-bit. Unreadable files are skipped
  and listed in one warning.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not a folder, holds no image files, none of them is
      readable, or `resolution` is not a positive integer.
  """
  _check_folder(path, resolution)
  files = list_image_files(path, recursive=recursive)
  if not files:
    raise errors.InputError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path!r}"
                     + ("" if recursive else " (recursive=False)"))
  return _load_files(files, resolution, path)[0]


def check_class_folders(path: str) -> None:
  """Cheaply (top level only) checks that `path` is laid out as PATH/CLASS/IMAGE.

  Raises:
    ValueError: `path` has no subfolder at all, or holds image files directly (they
      would have no class); the message names `path`.
  """
  loose = list_image_files(path, recursive=False)
  layout = os.path.join(path, "CLASS", "IMAGE")
  if not any(entry.is_dir() for entry in os.scandir(path)):
    holds = f" (its {len(loose)} image file(s) lie directly in it)" if loose else ""
    raise errors.InputError(
        f"labelled image folder {path!r} has no class subfolders{holds}: with labels, the "
        f"images must lie in one subfolder per class, {layout}")
  if loose:
    shown = ", ".join(os.path.basename(file) for file in loose[:3])
    more = f" and {len(loose) - 3} more" if len(loose) > 3 else ""
    raise errors.InputError(
        f"labelled image folder {path!r} holds {len(loose)} image file(s) directly ({shown}"
        f"{more}): with labels, every image must lie in a class subfolder, {layout}; "
        "move them into one")


def class_of(file: str, path: str) -> str:
  """The class of an image file under a labelled folder: its first folder under `path`."""
  return os.path.relpath(file, path).split(os.sep)[0]


def load_labelled_image_folder(path: str, resolution: int
                               ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """(images uint8 [N, R, R, 3], labels int32 [N], class names) of PATH/CLASS/.../IMAGE.

  A class is an immediate subfolder of `path` holding at least one image file (at any
  depth); classes are sorted by name (string order, so '10' sorts before '2') and a
  label is its class's index. Images are decoded exactly as load_image_folder does, in
  the same (sorted path) order; unreadable files are skipped with their labels.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: as load_image_folder, or an image lies directly in `path` (no class),
      or `path` has no class subfolder.
  """
  _check_folder(path, resolution)
  check_class_folders(path)
  files = list_image_files(path)
  if not files:
    raise errors.InputError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class "
                     f"subfolders of {path!r}")
  classes = [class_of(file, path) for file in files]
  class_names = tuple(sorted(set(classes)))
  index = {name: i for i, name in enumerate(class_names)}
  images, kept = _load_files(files, resolution, path)
  labels = np.array([index[classes[i]] for i in kept], np.int32)
  return images, labels, class_names
