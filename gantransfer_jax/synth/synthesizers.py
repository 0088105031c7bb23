"""The four synthesizers of paper 001 (Primitives-PS), batched and jit-compatible.

  pinknoise      PinkNoise only.
  primitives     a solid background, then T solid-colour shapes (dead leaves).
  primitives_s   Primitives, then one large salient shape near the centre.
  primitives_ps  PinkNoise background, T shapes, then the salient shape filled
                 with a fresh PinkNoise texture ("pink leaves", the paper's final).

One PRNG key gives one batch, identically on every backend: all parameters are
integers drawn with jax.random, coverage is exact integer arithmetic on spans,
and only the pink noise is float math. The same key (and batch size) gives the
same shapes for primitives, primitives_s and primitives_ps, and the same
background for pinknoise and primitives_ps: the variants compare image by image.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gantransfer_jax.synth import bits, pinknoise, raster, shapes as shapes_lib
from gantransfer_jax.synth.shapes import SIZE_POLICIES, Shapes

SYNTHESIZERS = ("pinknoise", "primitives", "primitives_s", "primitives_ps")
DISPLAY_NAMES = {"pinknoise": "PinkNoise", "primitives": "Primitives",
                 "primitives_s": "Primitives-S", "primitives_ps": "Primitives-PS"}
# Solid background of primitives and primitives_s. The authors fill all three
# channels with one random value (a random grey); 'colour' draws each channel.
BACKGROUNDS = ("grey", "colour")
RESOLUTIONS = tuple(2**k for k in range(4, 11))  # 16 ... 1024.

Synthesizer = Callable[[jax.Array, int], jax.Array]


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """A validated synthesizer configuration (hashable: a static jit argument).

  Attributes:
    name: one of SYNTHESIZERS.
    resolution: S, a power of two in [16, 1024].
    n_shapes: T, solid-colour shapes per image (paper ablation: 0, 10, 50, 100, 500).
    size_policy: 'decay' (default), 'fix' or 'rand'; see shapes.max_shape_sizes.
    fix_size: the one size of every shape under 'fix'. The paper's three values
      are lost in its text; the default S // 10 is close to the mean Decay
      bound (S // 10 + 2).
    background: 'grey' or 'colour' for primitives and primitives_s (default
      'grey'); PinkNoise for the others, which take no background option.
    sort_line_endpoints: reproduce the authors' line-orientation quirk (see
      shapes.sample_primitives); off by default, as NOTES section 1 specifies.
  """
  name: str
  resolution: int
  n_shapes: int = 100
  size_policy: str = "decay"
  fix_size: int | None = None
  background: str | None = None
  sort_line_endpoints: bool = False

  def __post_init__(self):
    if self.name not in SYNTHESIZERS:
      raise ValueError(f"unknown synthesizer {self.name!r}; valid: {', '.join(SYNTHESIZERS)}")
    resolution = _as_int("resolution", self.resolution)
    if resolution not in RESOLUTIONS:
      raise ValueError(f"resolution must be a power of two in [16, 1024] "
                       f"({', '.join(map(str, RESOLUTIONS))}), got {self.resolution!r}")
    n_shapes = _as_int("n_shapes", self.n_shapes)
    # The z-buffer is int16 and also indexes the salient shape.
    if not 0 <= n_shapes <= 32_000:
      raise ValueError(f"n_shapes must be in [0, 32000], got {n_shapes}")
    if self.size_policy not in SIZE_POLICIES:
      raise ValueError(
          f"unknown size_policy {self.size_policy!r}; valid: {', '.join(SIZE_POLICIES)}")
    fix_size = self.fix_size
    if fix_size is not None:
      if self.size_policy != "fix":
        raise ValueError("fix_size applies only to size_policy='fix'")
      fix_size = _as_int("fix_size", fix_size)
      if not 1 <= fix_size <= resolution // 2:
        raise ValueError(f"fix_size must be in [1, {resolution // 2}], got {fix_size}")
    elif self.size_policy == "fix":
      fix_size = resolution // 10
    if self.background is not None:
      if self.background not in BACKGROUNDS:
        raise ValueError(
            f"unknown background {self.background!r}; valid: {', '.join(BACKGROUNDS)}")
      if self.name not in ("primitives", "primitives_s"):
        raise ValueError(f"background applies to primitives and primitives_s only; "
                         f"{self.name} has a PinkNoise background")
    if not isinstance(self.sort_line_endpoints, bool):
      raise ValueError(f"sort_line_endpoints must be a bool, got {self.sort_line_endpoints!r}")
    # Canonical values keep equal configs equal (and jit caches shared).
    object.__setattr__(self, "resolution", resolution)
    object.__setattr__(self, "n_shapes", n_shapes)
    object.__setattr__(self, "fix_size", fix_size)
    if self.background is None and self.name in ("primitives", "primitives_s"):
      object.__setattr__(self, "background", "grey")

  @property
  def draws_shapes(self) -> bool:
    return self.name != "pinknoise"

  @property
  def has_saliency(self) -> bool:
    return self.name in ("primitives_s", "primitives_ps")

  @property
  def pink_background(self) -> bool:
    return self.name in ("pinknoise", "primitives_ps")


OPTIONS = tuple(field.name for field in dataclasses.fields(SynthConfig)
                if field.name not in ("name", "resolution"))


def _as_int(what: str, value) -> int:
  if isinstance(value, bool):
    raise ValueError(f"{what} must be an integer, got {value!r}")
  try:
    return operator.index(value)
  except TypeError:
    raise ValueError(f"{what} must be an integer, got {value!r}") from None


def make_config(name: str, resolution: int, **options) -> SynthConfig:
  """SynthConfig from keyword options; ValueError naming the valid ones otherwise."""
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise ValueError(f"unknown synthesizer option(s) {', '.join(unknown)}; "
                     f"valid: {', '.join(OPTIONS)}")
  return SynthConfig(name=name, resolution=resolution, **options)


class Rendered(NamedTuple):
  """A batch and how it was drawn (for tests, masks and statistics).

  images:    float32 [B, S, S, 3] in [-1, 1], integer levels k / 127.5 - 1.
  shapes:    Shapes [B, T (+ 1)] in drawing order, the salient shape last;
             None for pinknoise.
  top_index: int16 [B, S, S], the index into `shapes` of the last shape that
             covers each pixel, raster.BACKGROUND (-1) where none does.
  """
  images: jax.Array
  shapes: Shapes | None
  top_index: jax.Array


def _to_signed(levels: jax.Array) -> jax.Array:
  """[0, 255] levels -> [-1, 1], the training range.

  The clip only absorbs float rounding (255 / 127.5 - 1 may land one ulp above 1).
  """
  return jnp.clip(levels / 127.5 - 1.0, -1.0, 1.0)


# On CPU a batch is rendered a chunk of images at a time (each image start to
# end), so that a chunk's intermediates stay in cache. PinkNoise's spectra and
# fields take ~50 bytes per pixel: one 256^2 image per chunk rendered
# Primitives-PS 17% faster than two, 43% faster than 32 (2 EPYC cores). The
# shape-only synthesizers keep a 2-byte z-buffer and gain from wide vmaps:
# 32 images per chunk were 20% faster than one.
CHUNK_PIXELS_WITH_NOISE = 2**16
CHUNK_PIXELS_SHAPES_ONLY = 2**21


def chunk_size_for(batch_size: int, config: SynthConfig) -> int:
  """Images rendered together: the whole batch on accelerators, a cache-sized chunk on CPU.

  On CPU the chunk divides the batch, so that lax.map needs no remainder pass
  (a second trace and compile of the renderer).
  """
  if jax.default_backend() != "cpu":
    return batch_size
  pixels = CHUNK_PIXELS_WITH_NOISE if _num_pink_fields(config) else CHUNK_PIXELS_SHAPES_ONLY
  target = max(1, min(batch_size, pixels // config.resolution**2))
  return max(d for d in range(1, target + 1) if batch_size % d == 0)


def _scene_words(config: SynthConfig) -> int:
  """Words per image for the shapes, the solid background and the salient shape."""
  return shapes_lib.PRIMITIVE_WORDS * config.n_shapes + 3 + shapes_lib.SALIENT_WORDS


def _num_pink_fields(config: SynthConfig) -> int:
  """PinkNoise fields per image: the background, and Primitives-PS's texture."""
  return int(config.pink_background) + int(config.name == "primitives_ps")


def _sample_shapes(scene_words: jax.Array, config: SynthConfig) -> tuple[Shapes, jax.Array]:
  """One image's shapes (the salient one last) and its solid background colour [1 or 3]."""
  s, t = config.resolution, config.n_shapes
  shape_words, background_words, salient_words = jnp.split(
      scene_words, [shapes_lib.PRIMITIVE_WORDS * t, shapes_lib.PRIMITIVE_WORDS * t + 3])
  shapes = shapes_lib.sample_primitives(
      shape_words.reshape(t, shapes_lib.PRIMITIVE_WORDS), s, config.size_policy,
      config.fix_size, config.sort_line_endpoints)
  if config.has_saliency:
    shapes = shapes_lib.concat_shapes(shapes, shapes_lib.sample_salient_shape(salient_words, s))
  channels = 1 if config.background == "grey" else 3
  background = bits.integers(background_words[:channels], 0, shapes_lib.NUM_COLOURS)
  return shapes, background.astype(jnp.float32)


def _compose(colours: jax.Array, top_index: jax.Array, background: jax.Array,
             texture: jax.Array | None) -> jax.Array:
  """Levels [S, S, 3] of one image from its z-buffer.

  The colour [T, 3] of the shape on top, the background where no shape is,
  and the pink texture (if any) on the salient shape, the last one.
  """
  levels = jnp.broadcast_to(background, (*top_index.shape, 3))
  if colours.shape[0]:
    # Index -1 (background) wraps to the last shape; the where replaces it.
    painted = colours.astype(jnp.float32)[top_index.astype(jnp.int32)]
    levels = jnp.where((top_index == raster.BACKGROUND)[..., None], levels, painted)
  if texture is not None:
    levels = jnp.where((top_index == colours.shape[0] - 1)[..., None], texture, levels)
  return levels


def _render_one(scene_words: jax.Array, pink_words: jax.Array, config: SynthConfig) -> Rendered:
  """One image (see Rendered) from its words: scene [_scene_words], pink [2, pinknoise.WORDS]."""
  s = config.resolution
  num_pink = _num_pink_fields(config)
  if num_pink:
    # Primitives-PS's two fields come from one vmapped call: the generator is
    # traced (and compiled) once.
    pink, _ = jax.vmap(pinknoise.pink_noise, in_axes=(0, None))(pink_words[:num_pink], s)
  if not config.draws_shapes:
    return Rendered(_to_signed(pink[0]), None, jnp.full((s, s), raster.BACKGROUND, jnp.int16))
  shapes, background = _sample_shapes(scene_words, config)
  top_index = raster.rasterise(shapes, s)
  if config.pink_background:
    background = pink[0]
  texture = pink[1] if config.name == "primitives_ps" else None
  return Rendered(_to_signed(_compose(shapes.colour, top_index, background, texture)),
                  shapes, top_index)


@functools.partial(jax.jit, static_argnums=(1, 2))
def render(key: jax.Array, batch_size: int, config: SynthConfig) -> Rendered:
  """Draws one batch of `config`'s synthesizer from `key`.

  Every random number comes from two threefry draws (see bits.py): the scene
  words (shapes, background, salient shape) and the pink-noise words, laid out
  alike for every synthesizer, so one key gives the same shapes to primitives,
  primitives_s and primitives_ps and the same pink background to pinknoise
  and primitives_ps. Each image depends on its own words only.
  """
  scene_key, pink_key = jax.random.split(key)
  scene_words = bits.draw_words(
      scene_key, (batch_size, _scene_words(config) if config.draws_shapes else 0))
  pink_words = bits.draw_words(
      pink_key, (batch_size, 2 if _num_pink_fields(config) else 0, pinknoise.WORDS))
  render_one = lambda words: _render_one(*words, config)
  chunk_size = chunk_size_for(batch_size, config)
  if chunk_size == batch_size:
    return jax.vmap(render_one)((scene_words, pink_words))
  return jax.lax.map(render_one, (scene_words, pink_words), batch_size=chunk_size)


def make_synthesizer(name: str, resolution: int, **options) -> Synthesizer:
  """`fn(key, batch_size) -> float32 [B, S, S, 3] in [-1, 1]` for synthesizer `name`.

  Options: n_shapes (100), size_policy ('decay', 'fix', 'rand'), fix_size,
  background ('grey', 'colour'; primitives and primitives_s), sort_line_endpoints.
  `fn` is pure and jitted with batch_size static; it also traces inside an
  enclosing jit. Raises ValueError naming the valid choices on bad input.
  """
  config = make_config(name, resolution, **options)

  def synthesize(key: jax.Array, batch_size: int) -> jax.Array:
    return render(key, batch_size, config).images

  return synthesize
