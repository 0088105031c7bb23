"""The Primitives-PS synthesizers against NOTES section 1, OpenCV and the cv2 reference.

Compiles dominate the run time, so tests share a few (synthesizer, resolution,
batch) configurations through `_render`, whose jit cache is process-wide.
"""

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gantransfer_jax import synth
from gantransfer_jax.analysis import spectrum
from gantransfer_jax.synth import bits, pinknoise, raster, reference_cv2, shapes as shapes_lib
from gantransfer_jax.synth import synthesizers

SMALL, SMALL_BATCH = 16, 4
LARGE, LARGE_BATCH = 256, 1


@functools.cache
def _render(name: str, resolution: int, batch: int, seed: int = 0, **options) -> synth.Rendered:
  config = synth.make_config(name, resolution, **options)
  return jax.tree.map(np.asarray, synth.render(jax.random.key(seed), batch, config))


def _shape(kind, x, y, x_end=None, y_end=None, a=1, b=None, angle=0):
  """One Shapes entry (T = 1) from Python ints."""
  x_end = x if x_end is None else x_end
  y_end = y if y_end is None else y_end
  fields = dict(kind=kind, x=x, y=y, x_end=x_end, y_end=y_end, size_a=a,
                size_b=a if b is None else b, angle=angle)
  return shapes_lib.Shapes(colour=jnp.zeros((1, 3), jnp.int32),
                           **{k: jnp.array([v], jnp.int32) for k, v in fields.items()})


def _cv2_mask(shape: shapes_lib.Shapes, resolution: int) -> np.ndarray:
  """cv2's pixels for one drawn shape (T = 1), as the authors draw it."""
  kind, x, y, x_end, y_end, a, b, angle = (
      int(np.asarray(v).reshape(-1)[0]) for v in (shape.kind, shape.x, shape.y, shape.x_end,
                                                    shape.y_end, shape.size_a, shape.size_b,
                                                    shape.angle))
  canvas = np.zeros((resolution, resolution), np.uint8)
  if kind == shapes_lib.LINE:
    cv2.line(canvas, (x, y), (x_end, y_end), 1, a)
  elif kind == shapes_lib.CIRCLE:
    cv2.circle(canvas, (x, y), a, 1, -1)
  elif kind == shapes_lib.ELLIPSE:
    cv2.ellipse(canvas, (x, y), (a, b), angle, 0, 360, 1, -1)
  else:
    cv2.rectangle(canvas, (x, y), (x_end, y_end), 1, -1)
  return canvas > 0


_rasterise_many = jax.jit(jax.vmap(raster.rasterise, in_axes=(0, None)), static_argnums=1)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _sample_primitives(key, num, resolution, n_shapes, size_policy, fix_size=0):
  words = bits.draw_words(key, (num, n_shapes, shapes_lib.PRIMITIVE_WORDS))
  return jax.vmap(shapes_lib.sample_primitives, in_axes=(0, None, None, None))(
      words, resolution, size_policy, fix_size)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  return (a & b).sum() / max((a | b).sum(), 1)


# ------------------------------------------------------------------ output contract


@pytest.mark.parametrize("name", synth.SYNTHESIZERS)
@pytest.mark.parametrize("resolution,batch", [(SMALL, SMALL_BATCH), (LARGE, LARGE_BATCH)])
def test_every_synthesizer_shape_dtype_range(name, resolution, batch):
  images = _render(name, resolution, batch).images
  assert images.shape == (batch, resolution, resolution, 3)
  assert images.dtype == np.float32
  assert images.min() >= -1.0 and images.max() <= 1.0
  # Levels are the authors' uint8 values k / 127.5 - 1.
  levels = (images + 1) * 127.5
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
  assert images.std() > 0.05


def test_make_synthesizer_matches_render_and_is_deterministic():
  fn = synth.make_synthesizer("primitives_ps", SMALL)
  first = np.asarray(fn(jax.random.key(0), SMALL_BATCH))
  np.testing.assert_array_equal(first, _render("primitives_ps", SMALL, SMALL_BATCH).images)
  np.testing.assert_array_equal(first, np.asarray(fn(jax.random.key(0), SMALL_BATCH)))


@pytest.mark.parametrize("name", synth.SYNTHESIZERS)
def test_different_keys_differ(name):
  a = _render(name, SMALL, SMALL_BATCH, seed=0).images
  b = _render(name, SMALL, SMALL_BATCH, seed=1).images
  assert not np.array_equal(a, b)
  # Images within a batch differ too.
  assert not np.array_equal(a[0], a[1])


def test_jit_compatible_inside_enclosing_jit_and_sharded():
  fn = synth.make_synthesizer("primitives", SMALL)
  expected = np.asarray(fn(jax.random.key(3), 8))
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharded = jax.jit(lambda key: fn(key, 8) * 1.0,
                    out_shardings=NamedSharding(mesh, P("data")))(jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(sharded), expected)


def test_images_do_not_depend_on_the_chunking(monkeypatch):
  config = synth.make_config("primitives_ps", SMALL)
  assert synthesizers.chunk_size_for(64, synth.make_config("primitives_ps", 256)) == 1
  # A divisor of the batch: lax.map needs no remainder pass.
  assert synthesizers.chunk_size_for(20, synth.make_config("primitives_ps", 64)) == 10
  assert synthesizers.chunk_size_for(64, synth.make_config("primitives", 256)) == 32
  monkeypatch.setattr(synthesizers, "CHUNK_PIXELS_WITH_NOISE", 2 * SMALL**2)
  assert synthesizers.chunk_size_for(SMALL_BATCH, config) == 2
  chunked = jax.jit(synthesizers.render.__wrapped__, static_argnums=(1, 2))(
      jax.random.key(0), SMALL_BATCH, config)
  np.testing.assert_array_equal(chunked.images, _render("primitives_ps", SMALL, SMALL_BATCH).images)


# ------------------------------------------------------------------ options and errors


@pytest.mark.parametrize("name,resolution,options,match", [
    ("primitives_x", 64, {}, "valid: pinknoise, primitives, primitives_s, primitives_ps"),
    ("primitives", 100, {}, "power of two"),
    ("primitives", 8, {}, "power of two"),
    ("primitives", 2048, {}, "power of two"),
    ("primitives", 64, {"size_policy": "grow"}, "valid: decay, fix, rand"),
    ("primitives", 64, {"n_shape": 10}, "valid: n_shapes"),
    ("primitives", 64, {"n_shapes": -1}, "n_shapes"),
    ("primitives", 64, {"n_shapes": 2.5}, "integer"),
    ("primitives", 64, {"background": "pink"}, "valid: grey, colour"),
    ("primitives_ps", 64, {"background": "grey"}, "primitives and primitives_s only"),
    ("primitives", 64, {"fix_size": 4}, "size_policy='fix'"),
    ("primitives", 64, {"size_policy": "fix", "fix_size": 40}, "fix_size"),
])
def test_bad_names_and_options_raise_value_error(name, resolution, options, match):
  with pytest.raises(ValueError, match=match):
    synth.make_synthesizer(name, resolution, **options)


def test_valid_options_and_exports():
  assert synth.SYNTHESIZERS == ("pinknoise", "primitives", "primitives_s", "primitives_ps")
  config = synth.make_config("primitives", 64, size_policy="fix")
  assert config.fix_size == 64 // 10 and config.background == "grey"
  assert synth.make_config("primitives_ps", 64).background is None
  # Equal options give equal (hashable) configs, so jit caches are shared.
  assert synth.make_config("primitives", np.int64(64)) == synth.make_config("primitives", 64)


def test_backgrounds_grey_by_default_colour_as_option():
  grey = _render("primitives", SMALL, SMALL_BATCH)
  background = grey.images[grey.top_index < 0]
  assert background.size and np.all(background == background[:, :1])  # R = G = B.
  # No shapes: one solid colour per image, not grey.
  colour = _render("primitives", SMALL, SMALL_BATCH, n_shapes=0, background="colour").images
  assert all(np.all(image == image[0, 0]) for image in colour)
  assert any(np.unique(image[0, 0]).size > 1 for image in colour)


# ------------------------------------------------------------------ shapes and sizes


def test_decay_bounds_match_notes():
  bounds = shapes_lib.max_shape_sizes(256, 100, "decay", 0)
  assert bounds[0] == 53 and bounds[-1] == 3 and np.all(np.diff(bounds) <= 0)
  assert np.all(shapes_lib.max_shape_sizes(256, 100, "rand", 0) == 256 // 5 + 2)
  assert np.all(shapes_lib.max_shape_sizes(256, 100, "fix", 7) == 7)


@pytest.mark.parametrize("size_policy", ["decay", "rand", "fix"])
def test_drawn_shape_parameters_follow_the_policy(size_policy):
  s, t, num = 256, 100, 64
  fix_size = 25 if size_policy == "fix" else 0
  shapes = jax.tree.map(np.asarray, _sample_primitives(
      jax.random.key(0), num, s, t, size_policy, fix_size))
  assert shapes.kind.shape == (num, t)
  bound = shapes_lib.max_shape_sizes(s, t, size_policy, fix_size)
  sizes = np.stack([shapes.size_a, shapes.size_b])
  if size_policy == "fix":
    assert np.all(sizes == fix_size)
  else:
    assert sizes.min() == 1 and np.all(sizes < bound)
    # The bound is reached: the largest early shape is close to it.
    assert sizes[:, :, 0].max() == bound[0] - 1
  # Kind mix 1/7 lines, 2/7 circles, ellipses and rectangles.
  shares = np.bincount(shapes.kind.ravel(), minlength=4) / shapes.kind.size
  np.testing.assert_allclose(shares, [1 / 7, 2 / 7, 2 / 7, 2 / 7], atol=0.025)
  is_rect = shapes.kind == shapes_lib.RECT
  assert np.all(shapes.x[is_rect] < (s - bound)[np.nonzero(is_rect)[1]])
  assert np.all(shapes.x_end[is_rect] == shapes.x[is_rect] + shapes.size_a[is_rect])
  for coordinate in (shapes.x, shapes.y, shapes.x_end, shapes.y_end):
    assert coordinate.min() >= 0 and coordinate.max() < s
  # Coordinates scale with the resolution: the right half of the canvas is used.
  assert (shapes.x > s * 0.9).mean() > 0.05
  assert np.all((shapes.angle == 0) | (shapes.kind == shapes_lib.ELLIPSE))
  assert shapes.angle.max() <= 179 and shapes.colour.max() <= 254


def test_rendered_shapes_are_where_their_parameters_say():
  rendered = _render("primitives", LARGE, LARGE_BATCH)
  shapes = jax.tree.map(lambda x: x[0], rendered.shapes)
  top = rendered.top_index[0]
  visible = np.unique(top[top >= 0])
  assert 30 < visible.size <= 100
  # The last shape is drawn over everything: all its pixels (cv2's) are visible.
  last = jax.tree.map(lambda x: x[-1:], shapes)
  assert _iou(top == 99, _cv2_mask(last, LARGE)) > 0.85
  # Every visible shape's pixels lie within its own cv2 pixels (grown by one).
  for index in visible:
    own = _cv2_mask(jax.tree.map(lambda x: x[index:index + 1], shapes), LARGE)
    grown = cv2.dilate(own.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert np.all(grown[top == index])
  # Colours come from the table of the shape on top.
  image_levels = np.rint((rendered.images[0] + 1) * 127.5)
  np.testing.assert_array_equal(image_levels[top == 99][0], shapes.colour[99])


def test_rasteriser_agrees_with_opencv():
  s = 64
  shapes = _sample_primitives(jax.random.key(0), 2, s, 100, "decay")
  flat = jax.tree.map(lambda x: np.asarray(x).reshape(-1, 1, *x.shape[2:]), shapes)
  ours = np.asarray(_rasterise_many(flat, s)) >= 0
  ious = {"circle": [], "rect": [], "thin line": [], "ellipse": [], "thick line": []}
  for i in range(len(flat.kind)):
    shape = jax.tree.map(lambda x: x[i], flat)
    kind = shapes_lib.KIND_NAMES[int(shape.kind[0])]
    if kind == "line":
      kind = "thin line" if shape.size_a[0] == 1 else "thick line"
    ious[kind].append(_iou(ours[i], _cv2_mask(shape, s)))
  # Filled circles, rectangles and one-pixel lines are pixel-exact; the polygon
  # fills of cv2.ellipse and of thick lines are matched on average.
  assert all(min(ious[kind]) == 1.0 for kind in ("circle", "rect", "thin line")), ious
  assert np.mean(ious["ellipse"]) > 0.88 and np.mean(ious["thick line"]) > 0.9


@pytest.mark.parametrize("shape,min_iou", [
    (_shape(shapes_lib.CIRCLE, 30, 31, a=12), 1.0),
    (_shape(shapes_lib.RECT, 5, 9, 40, 20), 1.0),
    (_shape(shapes_lib.CIRCLE, 2, 60, a=9), 1.0),  # Clipped by the border.
    (_shape(shapes_lib.ELLIPSE, 32, 30, a=20, b=7, angle=35), 0.95),
    (_shape(shapes_lib.LINE, 3, 50, 60, 10, a=1), 1.0),
    (_shape(shapes_lib.LINE, 10, 5, 20, 60, a=1), 1.0),
    (_shape(shapes_lib.LINE, 5, 5, 60, 5, a=1), 1.0),  # Horizontal.
    (_shape(shapes_lib.LINE, 8, 12, 50, 40, a=9), 0.95),
    (_shape(shapes_lib.LINE, 30, 30, 30, 30, a=6), 0.9),  # A dot: just the caps.
])
def test_single_shape_iou_with_opencv(shape, min_iou):
  ours = np.asarray(_rasterise_many(jax.tree.map(lambda x: x[None], shape), 64))[0] >= 0
  assert _iou(ours, _cv2_mask(shape, 64)) >= min_iou


# ------------------------------------------------------------------ saliency


def test_salient_shape_is_centred():
  s, num = 64, 256
  salient = jax.vmap(shapes_lib.sample_salient_shape, in_axes=(0, None))(
      bits.draw_words(jax.random.key(0), (num, shapes_lib.SALIENT_WORDS)), s)
  masks = np.asarray(_rasterise_many(salient, s)) >= 0
  mean_mask = masks.mean(axis=0)
  peak = np.unravel_index(np.argmax(mean_mask), mean_mask.shape)
  assert np.hypot(peak[0] - s / 2, peak[1] - s / 2) <= s / 8
  assert mean_mask[s // 2, s // 2] > 0.95
  assert mean_mask[:4, :4].mean() < 0.05 and mean_mask[-4:, -4:].mean() < 0.1
  kinds = np.bincount(np.asarray(salient.kind).ravel(), minlength=4)
  assert kinds[shapes_lib.LINE] == 0 and min(kinds[1:]) > num / 5
  # Large: circle radius and semi-axes at least S/4, rect sides at least 3S/8.
  assert masks.sum(axis=(1, 2)).min() >= (3 * s / 8)**2


def test_ps_has_pink_texture_inside_the_salient_shape_and_s_is_flat():
  ps = _render("primitives_ps", LARGE, LARGE_BATCH)
  flat = _render("primitives_s", LARGE, LARGE_BATCH)
  # Same key, same shapes: the salient region is the same in both.
  np.testing.assert_array_equal(ps.top_index, flat.top_index)
  salient = ps.top_index[0] == 100
  assert salient.sum() > 0.1 * LARGE**2
  assert np.ptp(flat.images[0][salient], axis=0).max() == 0
  assert ps.images[0][salient].std(axis=0).max() > 0.02
  # Outside the salient shape, the solid shapes are shared; the backgrounds differ.
  shape_pixels = (ps.top_index[0] >= 0) & ~salient
  np.testing.assert_array_equal(ps.images[0][shape_pixels], flat.images[0][shape_pixels])


# ------------------------------------------------------------------ pink noise


def test_pink_noise_is_jointly_normalised_levels():
  fields, exponents = jax.vmap(pinknoise.pink_noise, in_axes=(0, None))(
      bits.draw_words(jax.random.key(0), (8, pinknoise.WORDS)), 32)
  fields, exponents = np.asarray(fields), np.asarray(exponents)
  assert exponents.shape == (8, 3, 2)
  assert exponents.min() >= 0.5 and exponents.max() < 3.5
  np.testing.assert_array_equal(fields, np.floor(fields))
  assert np.all(fields.min(axis=(1, 2, 3)) == 0) and np.all(fields.max(axis=(1, 2, 3)) == 255)
  # Jointly, not per channel: some channel of most images stays below 255.
  assert (fields.max(axis=(1, 2)) < 255).any(axis=1).mean() > 0.5


def test_white_spectrum_is_hermitian_and_white():
  z = np.asarray(pinknoise.white_spectrum(bits.draw_words(jax.random.key(0), (3, 2)), 32))
  real = np.fft.irfft2(z, s=(32, 32))
  np.testing.assert_allclose(np.fft.rfft2(real), z, atol=1e-4)
  # The inverse transform of the white spectrum is white noise: flat spectrum.
  power = np.abs(np.fft.rfft2(real))**2
  assert abs(power[..., :8].mean() / power[..., 8:].mean() - 1) < 0.2
  normals = np.asarray(pinknoise.hashed_normals(jnp.array([[1, 2], [1, 3]], jnp.uint32), (50_000,)))
  np.testing.assert_allclose([normals.mean(), normals.std()], [0, 1], atol=0.02)
  assert abs(np.corrcoef(normals)[0, 1]) < 0.02


def test_pink_noise_spectrum_slopes_follow_drawn_exponents():
  s, num = 128, 8
  # Eight fields sharing one draw of exponents (the first 6 words), so that
  # their log spectra can be averaged; unnormalised, free of quantisation noise.
  words = np.array(bits.draw_words(jax.random.key(5), (num, pinknoise.WORDS)))
  words[:, :6] = words[0, :6]
  fields, exponents = jax.vmap(pinknoise.raw_pink_noise, in_axes=(0, None))(words, s)
  fields, exponents = np.asarray(fields), np.asarray(exponents[0])
  freq = pinknoise.frequencies(s)
  for channel, (a, b) in enumerate(exponents):
    magnitude = np.abs(np.fft.fft2(fields[..., channel]))
    for profile, exponent, other in ((magnitude[:, 0, :], b, a), (magnitude[:, :, 0], a, b)):
      # Along one axis at zero frequency of the other, w = 1/(f0^other + f^exponent):
      # fit the slope where the power law dominates (f^exponent > 10 f0^other).
      k = np.arange(2, s // 2)
      k = k[freq[k]**exponent > 10 * freq[0]**other]
      log_mag = np.log(profile[:, k]).mean(axis=0)
      slope = np.polyfit(np.log(freq[k]), log_mag, 1)[0]
      assert abs(slope + exponent) < 0.25, (channel, exponent, slope)


# ------------------------------------------------------------------ against the cv2 reference


def _assert_same_mean(ours: np.ndarray, theirs: np.ndarray, what: str):
  """Means of two samples agree within 4 standard errors."""
  error = np.hypot(ours.std() / np.sqrt(len(ours)), theirs.std() / np.sqrt(len(theirs)))
  assert abs(ours.mean() - theirs.mean()) < 4 * error, (what, ours.mean(), theirs.mean(), error)


@pytest.mark.parametrize("name", synth.SYNTHESIZERS)
def test_statistics_match_the_cv2_reference(name):
  s, num = SMALL, 48
  ours = np.concatenate([_render(name, s, SMALL_BATCH, seed=seed).images
                         for seed in range(num // SMALL_BATCH)])
  ours = np.rint((ours + 1) * 127.5).astype(np.uint8)
  theirs = reference_cv2.generate(name, s, num, seed=0)
  for what, statistic in [("mean level", lambda x: x.mean(axis=(1, 2, 3))),
                          ("image std", lambda x: x.std(axis=(1, 2, 3))),
                          ("channel std", lambda x: x.std(axis=(1, 2)).mean(axis=1)),
                          ("distinct colours", lambda x: np.array(
                              [len(np.unique(i.reshape(-1, 3), axis=0)) for i in x]))]:
    _assert_same_mean(statistic(ours.astype(np.float64)), statistic(theirs.astype(np.float64)),
                      what)
  similarity = spectrum.spectrum_ssim(spectrum.mean_log_spectrum(ours),
                                      spectrum.mean_log_spectrum(theirs))
  assert similarity > 0.9, similarity
