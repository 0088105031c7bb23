"""Image conversions and sample-grid files shared by every task."""

from __future__ import annotations

import math
import os

import jax
import numpy as np


def to_uint8(images) -> np.ndarray:
  """Maps float images in [-1, 1] (any array type) to uint8 in [0, 255]."""
  images = np.asarray(images, dtype=np.float32)
  return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images, num_cols: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles [N, H, W, C] images (uint8, or float in [-1, 1]) into one uint8 image."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = to_uint8(images)
  if images.ndim != 4:
    raise ValueError(f"expected [N, H, W, C] images, got shape {images.shape}")
  n, h, w, c = images.shape
  num_cols = num_cols or int(math.ceil(math.sqrt(n)))
  num_rows = int(math.ceil(n / num_cols))
  grid = np.full((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, num_cols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def make_panels(panels, num_cols: int | None = None, gap: int = 8) -> np.ndarray:
  """Grids of several image sets side by side (e.g. training images | samples).

  Every panel is tiled by `make_grid` with the same `num_cols`; panels are separated
  by `gap` white columns and top-aligned, so sets of different sizes still line up.
  Panels of greyscale and colour images are combined as colour.
  """
  grids = [make_grid(images, num_cols) for images in panels]
  if not grids:
    raise ValueError("make_panels needs at least one panel")
  channels = max(g.shape[-1] for g in grids)
  height = max(g.shape[0] for g in grids)
  width = sum(g.shape[1] for g in grids) + gap * (len(grids) - 1)
  out = np.full((height, width, channels), 255, np.uint8)
  x = 0
  for grid in grids:
    out[:grid.shape[0], x:x + grid.shape[1]] = grid  # Broadcasts 1 channel to 3.
    x += grid.shape[1] + gap
  return out


def _write_png(path: str, grid: np.ndarray) -> str:
  from PIL import Image  # Imported lazily: only file-writing code needs Pillow.

  if jax.process_index() > 0:  # Every process of a multi-host run draws the same images.
    return path
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid).save(path)
  return path


def save_grid(path: str, images, num_cols: int | None = None) -> str:
  """Writes a PNG grid of images; creates parent folders. Returns the path."""
  return _write_png(path, make_grid(images, num_cols))


def save_panels(path: str, panels, num_cols: int | None = None) -> str:
  """Writes `make_panels(panels, num_cols)` as a PNG; creates parent folders."""
  return _write_png(path, make_panels(panels, num_cols))
