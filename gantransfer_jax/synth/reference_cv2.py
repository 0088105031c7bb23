"""Per-image numpy + OpenCV synthesizers, the way the authors generate (NOTES section 1).

One image at a time with cv2.line / circle / ellipse / rectangle on a uint8
canvas and numpy FFT pink noise: the baseline of launch/benchmark_synth.py and
an independent implementation for statistical cross-checks of the JAX one.
Written from NOTES section 1, with the same deviations from the authors' code
as gantransfer_jax.synth (coordinate ranges scale with S; line endpoints
unsorted unless sort_line_endpoints). Seeded with numpy's Generator; it does not reproduce JAX's draws.
"""

from __future__ import annotations

import cv2
import numpy as np

from gantransfer_jax.synth import pinknoise
from gantransfer_jax.synth.shapes import NUM_COLOURS, max_shape_sizes
from gantransfer_jax.synth.synthesizers import SynthConfig, make_config

_SHAPE_NAMES = ("line", "circle", "circle", "ellipse", "ellipse", "rect", "rect")


def pink_noise(rng: np.random.Generator, resolution: int) -> np.ndarray:
  """PinkNoise image, uint8 [S, S, 3]: per channel FFT shaping, joint min-max."""
  freq = pinknoise.frequencies(resolution)
  channels = []
  for _ in range(3):
    a, b = rng.uniform(*pinknoise.EXPONENT_RANGE, size=2)
    weights = 1.0 / ((freq[:, None]**a + 1e-6) + (freq[None, :]**b + 1e-6))
    white = rng.standard_normal((resolution, resolution))
    channels.append(np.fft.ifft2(np.fft.fft2(white) * weights).real)
  field = np.stack(channels, axis=-1)
  field = (field - field.min()) / (field.max() - field.min())
  return (255 * field).astype(np.uint8)


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
  return tuple(int(c) for c in rng.integers(0, NUM_COLOURS, size=3))


def draw_primitives(rng: np.random.Generator, canvas: np.ndarray, config: SynthConfig) -> None:
  """Draws config.n_shapes solid shapes in place, sizes bounded by the size policy."""
  s = config.resolution
  bounds = max_shape_sizes(s, config.n_shapes, config.size_policy, config.fix_size)
  for max_size in bounds.tolist():
    shape = _SHAPE_NAMES[rng.integers(len(_SHAPE_NAMES))]
    colour = _colour(rng)

    def size():
      return max_size if config.size_policy == "fix" else int(rng.integers(1, max_size))

    if shape == "line":
      x1, y1, x2, y2 = (int(v) for v in rng.integers(0, s, size=4))
      if config.sort_line_endpoints:
        x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
      cv2.line(canvas, (x1, y1), (x2, y2), colour, size())
    elif shape == "circle":
      x, y = (int(v) for v in rng.integers(0, s, size=2))
      cv2.circle(canvas, (x, y), size(), colour, -1)
    elif shape == "ellipse":
      x, y = (int(v) for v in rng.integers(0, s, size=2))
      axes = (size(), size())
      cv2.ellipse(canvas, (x, y), axes, int(rng.integers(0, 180)), 0, 360, colour, -1)
    else:
      x, y = (int(v) for v in rng.integers(0, s - max_size, size=2))
      cv2.rectangle(canvas, (x, y), (x + size(), y + size()), colour, -1)


def draw_salient(rng: np.random.Generator, canvas: np.ndarray, colour) -> None:
  """Draws the large shape near the centre in place (circle, ellipse or rect)."""
  s = canvas.shape[0]
  shape = ("circle", "ellipse", "rect")[rng.integers(3)]
  x, y = (int(v) for v in rng.integers(s // 2 - s // 10, s // 2 + s // 10, size=2))
  if shape == "circle":
    cv2.circle(canvas, (x, y), int(rng.integers(s // 4, 3 * s // 8)), colour, -1)
  elif shape == "ellipse":
    axes = tuple(int(v) for v in rng.integers(s // 4, 3 * s // 8, size=2))
    cv2.ellipse(canvas, (x, y), axes, 0, 0, 360, colour, -1)
  else:
    x1, y1 = (int(v) for v in rng.integers(s // 8, s // 2, size=2))
    w, h = (int(v) for v in rng.integers(3 * s // 8, 3 * s // 4, size=2))
    cv2.rectangle(canvas, (x1, y1), (x1 + w, y1 + h), colour, -1)


def synthesize_one(rng: np.random.Generator, config: SynthConfig) -> np.ndarray:
  """One image of config's synthesizer, uint8 [S, S, 3]."""
  s = config.resolution
  if config.pink_background:
    canvas = pink_noise(rng, s)
  else:
    levels = rng.integers(0, NUM_COLOURS, size=1 if config.background == "grey" else 3)
    canvas = np.empty((s, s, 3), np.uint8)
    canvas[...] = levels.astype(np.uint8)
  if not config.draws_shapes:
    return canvas
  draw_primitives(rng, canvas, config)
  if config.name == "primitives_s":
    draw_salient(rng, canvas, _colour(rng))
  elif config.name == "primitives_ps":
    mask = np.zeros((s, s), np.uint8)
    draw_salient(rng, mask, 1)
    canvas = np.where(mask[..., None] > 0, pink_noise(rng, s), canvas)
  return canvas


def generate(name: str, resolution: int, num: int, seed: int = 0, **options) -> np.ndarray:
  """`num` images, uint8 [N, S, S, 3]; same options and ValueErrors as make_synthesizer."""
  config = make_config(name, resolution, **options)
  rng = np.random.default_rng(seed)
  return np.stack([synthesize_one(rng, config) for _ in range(num)])
