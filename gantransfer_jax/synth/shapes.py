"""Random shape parameters of the Primitives synthesizers (NOTES section 1).

Every parameter is drawn as an integer, as the authors draw them for OpenCV, but
every range scales with the resolution S. The authors hard-code 255 as the upper
end of line endpoints and rectangle corners, which is only right for S = 256 (a
bug: at S = 64 most shapes would fall off the canvas, at S = 1024 they would
crowd its top-left quarter); here those ranges are [0, S) and [0, S - max_size).

Shapes are a struct of arrays: one `Shapes` holds T shapes (or [B, T] after vmap)
in drawing order, so later shapes overwrite earlier ones.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gantransfer_jax.synth.bits import integers

# Shape kinds. A circle is an ellipse with equal semi-axes and angle 0; it keeps
# its own kind so that tests and statistics can tell the two apart.
LINE, CIRCLE, ELLIPSE, RECT = 0, 1, 2, 3
KIND_NAMES = ("line", "circle", "ellipse", "rect")

# The authors' shape list: lines 1/7, circles, ellipses, rectangles 2/7 each.
PRIMITIVE_KIND_MIX = (LINE, CIRCLE, CIRCLE, ELLIPSE, ELLIPSE, RECT, RECT)
# The salient shape: circle, ellipse (angle 0) or rectangle, 1/3 each.
SALIENT_KIND_MIX = (CIRCLE, ELLIPSE, RECT)

SIZE_POLICIES = ("decay", "fix", "rand")

# Random uint32 words consumed per primitive shape and by the salient shape.
PRIMITIVE_WORDS = 13
SALIENT_WORDS = 12

# Colour channels are uniform integers in [0, NUM_COLOURS), i.e. 0..254 as the
# authors' np.random.randint(0, 255).
NUM_COLOURS = 255


class Shapes(NamedTuple):
  """Drawn parameters of T shapes, all int32 arrays with trailing axis T.

  Pixel centres sit at integer coordinates; x is the column, y the row.
    line:    endpoints (x, y) and (x_end, y_end); thickness size_a.
    circle:  centre (x, y); radius size_a (= size_b).
    ellipse: centre (x, y); semi-axes size_a (along the rotated x axis) and
             size_b; rotation `angle` in degrees (as cv2.ellipse).
    rect:    corners (x, y) and (x_end, y_end) = (x + size_a, y + size_b), both
             inclusive as in cv2.rectangle.
  `colour` has an extra trailing axis of 3 (RGB, 0..254).
  """
  kind: jax.Array
  colour: jax.Array
  x: jax.Array
  y: jax.Array
  x_end: jax.Array
  y_end: jax.Array
  size_a: jax.Array
  size_b: jax.Array
  angle: jax.Array


def concat_shapes(first: Shapes, second: Shapes) -> Shapes:
  """Shapes of `first` then `second` along the shape axis (drawing order)."""
  return jax.tree.map(
      lambda a, b: jnp.concatenate([a, b], axis=first.kind.ndim - 1), first, second)


def max_shape_sizes(resolution: int, n_shapes: int, size_policy: str,
                    fix_size: int) -> np.ndarray:
  """Static per-shape size bound m_i, int [n_shapes].

  decay: round(S//5 * (T - i) / T + 2), 53 -> 3 at S = 256; sizes ~ U[1, m_i).
  rand:  S//5 + 2 for every shape; sizes ~ U[1, m_i).
  fix:   fix_size for every shape; every size equals it.
  np.round rounds half to even, as the authors' code does.
  """
  i = np.arange(n_shapes)
  if size_policy == "decay":
    return np.round(resolution // 5 * (n_shapes - i) / n_shapes + 2).astype(np.int32)
  if size_policy == "rand":
    return np.full(n_shapes, resolution // 5 + 2, np.int32)
  if size_policy == "fix":
    return np.full(n_shapes, fix_size, np.int32)
  raise ValueError(f"unknown size_policy {size_policy!r}; valid: {', '.join(SIZE_POLICIES)}")


def sample_primitives(words: jax.Array, resolution: int, size_policy: str, fix_size: int,
                      sort_line_endpoints: bool = False) -> Shapes:
  """The T solid-colour shapes of one image (NOTES section 1) from words [T, PRIMITIVE_WORDS].

  Every parameter of every kind is drawn for every shape and the kind then picks
  which ones it uses: a dozen integers per shape, cheaper than branching.

  sort_line_endpoints: the authors' code sorts the x and the y coordinates of a
    line's endpoints independently (copied from their rectangle code), which
    makes every line run top-left to bottom-right. NOTES section 1 specifies
    endpoints uniform in the canvas, our default; True reproduces the quirk.
  """
  s, t = resolution, words.shape[0]
  max_size = jnp.asarray(max_shape_sizes(s, t, size_policy, fix_size))[:, None]
  kind = jnp.asarray(PRIMITIVE_KIND_MIX, jnp.int32)[
      integers(words[:, 0], 0, len(PRIMITIVE_KIND_MIX))]
  colour = integers(words[:, 1:4], 0, NUM_COLOURS)
  # Columns: centre or start point (x, y), a line's end point (x, y).
  points = integers(words[:, 4:8], 0, s)
  if size_policy == "fix":
    sizes = jnp.broadcast_to(max_size, (t, 2))
  else:
    sizes = integers(words[:, 8:10], 1, max_size)
  # Rectangles stay inside the canvas: top-left in [0, S - m_i).
  corner = integers(words[:, 10:12], 0, s - max_size)
  angle = integers(words[:, 12], 0, 180)

  x, y, x_end, y_end = points.T
  if sort_line_endpoints:
    x, x_end = jnp.minimum(x, x_end), jnp.maximum(x, x_end)
    y, y_end = jnp.minimum(y, y_end), jnp.maximum(y, y_end)
  size_a, size_b = sizes.T
  is_line, is_circle, is_rect = kind == LINE, kind == CIRCLE, kind == RECT
  x = jnp.where(is_rect, corner[:, 0], x)
  y = jnp.where(is_rect, corner[:, 1], y)
  size_b = jnp.where(is_circle | is_line, size_a, size_b)
  return Shapes(
      kind=kind,
      colour=colour,
      x=x,
      y=y,
      x_end=jnp.where(is_line, x_end, jnp.where(is_rect, x + size_a, x)),
      y_end=jnp.where(is_line, y_end, jnp.where(is_rect, y + size_b, y)),
      size_a=size_a,
      size_b=size_b,
      angle=jnp.where(kind == ELLIPSE, angle, 0))


def sample_salient_shape(words: jax.Array, resolution: int) -> Shapes:
  """The large shape of Primitives-S/PS (T = 1) from words [SALIENT_WORDS], NOTES section 1.

  Centre uniform in [S/2 - S/10, S/2 + S/10); circle radius and ellipse
  semi-axes in [S/4, 3S/8), ellipse angle 0; rectangle top-left in [S/8, S/2)
  with sides in [3S/8, 3S/4), so it may be clipped by the border.
  """
  s = resolution
  words = words[None, :]
  kind = jnp.asarray(SALIENT_KIND_MIX, jnp.int32)[
      integers(words[:, 0], 0, len(SALIENT_KIND_MIX))]
  colour = integers(words[:, 1:4], 0, NUM_COLOURS)
  centre = integers(words[:, 4:6], s // 2 - s // 10, s // 2 + s // 10).T
  radii = integers(words[:, 6:8], s // 4, 3 * s // 8).T
  corner = integers(words[:, 8:10], s // 8, s // 2).T
  sides = integers(words[:, 10:12], 3 * s // 8, 3 * s // 4).T

  is_rect, is_circle = kind == RECT, kind == CIRCLE
  x = jnp.where(is_rect, corner[0], centre[0])
  y = jnp.where(is_rect, corner[1], centre[1])
  size_a = jnp.where(is_rect, sides[0], radii[0])
  size_b = jnp.where(is_rect, sides[1], jnp.where(is_circle, radii[0], radii[1]))
  return Shapes(
      kind=kind, colour=colour, x=x, y=y,
      x_end=jnp.where(is_rect, x + size_a, x), y_end=jnp.where(is_rect, y + size_b, y),
      size_a=size_a, size_b=size_b, angle=jnp.zeros_like(kind))
