"""DIP at inference: embedding samplers, edits, inversion and sample grids (tiny G)."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from gantransfer_jax import dip
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.models import sngan
from gantransfer_jax.transfer import condition
from gantransfer_jax.transfer import wrapper

PRIOR_DIM, NUM_PRIORS, BATCH = 10, 12, 4


def _key(seed: int) -> jax.Array:
  return jax.random.key(seed)


class Tiny(NamedTuple):
  generator: sngan.Generator
  g_vars: dict         # What the network sees: its params (G_emb taken out) and state.
  embed: dip.Embed     # G_emb, the condition transform's.
  priors: np.ndarray
  gan: gan_lib.Gan     # The networks behind their condition transforms.
  g_params: dict       # G's params with G_emb.
  g_state: dict


@pytest.fixture(scope="module")
def tiny():
  """A conditional SNGAN G: 16 x 16, two blocks, 8-d embeddings, as `sample` runs it."""
  generator = sngan.Generator(resolution=16, z_dim=9, embedding_dim=8, width=4,
                              channel_multipliers=(2, 1, 1))
  discriminator = sngan.ProjectionDiscriminator(resolution=16, width=4,
                                                channel_multipliers=(1, 1, 2))
  family_gan = gan_lib.SNGan(generator, discriminator,
                             ml_collections.ConfigDict({"resolution": 16}), cond_dim=PRIOR_DIM)
  gan = wrapper.TransferGan.wrap(family_gan, condition.from_family(family_gan))
  priors = np.asarray(jax.random.normal(_key(0), (NUM_PRIORS, PRIOR_DIM)))
  # 'rbg' keys make initialising the many small layers cheap (see test_sngan).
  g_vars, _ = jax.jit(gan.init)(jax.random.key(1, impl="rbg"))
  g_params, g_state = gan_lib.split_variables(g_vars)
  network_vars = gan_lib.variables(gan.network_params(gan_lib.GENERATOR, g_params), g_state)
  return Tiny(generator, network_vars, dip.embedder(gan, g_params, g_state), priors, gan,
              g_params, g_state)


def _sorted_rows(x) -> np.ndarray:
  x = np.asarray(x)
  return x[np.lexsort(x.T[::-1])]


def test_embed_priors_is_g_emb(tiny):
  priors = tiny.priors
  embeddings = dip.embed_priors(tiny.embed, priors, batch_size=5)  # 3 batches.
  params = tiny.g_params["g_emb"]
  np.testing.assert_allclose(embeddings, priors @ params["kernel"] + params["bias"],
                             rtol=1e-5, atol=1e-5)


def test_samplers_shapes_and_keys(tiny):
  embeddings = dip.embed_priors(tiny.embed, tiny.priors)
  centroids, weights = dip.fit_kmeans(_key(0), embeddings, 3)
  gmm = dip.fit_gmm(_key(1), embeddings, 2, covariance_type="diag")
  samplers = {
      "priors": lambda key: dip.sample_training(key, embeddings, 7),
      "interpolation": lambda key: dip.sample_interpolation(key, embeddings, 7),
      "kmeans": lambda key: dip.sample_kmeans(key, centroids, 7, weights=weights),
      "gmm": lambda key: dip.sample_gmm(key, gmm, 7),
  }
  for name, sample in samplers.items():
    first = sample(_key(2))
    assert first.shape == (7, 8), name
    assert bool(jnp.all(jnp.isfinite(first))), name
    np.testing.assert_array_equal(sample(_key(2)), first, err_msg=name)  # Key-determined.
    assert not np.allclose(sample(_key(3)), first), name
  # Training picks are training embeddings.
  picks = np.asarray(samplers["priors"](_key(4)))
  assert all(np.any(np.all(row == np.asarray(embeddings), axis=1)) for row in picks)
  assert centroids.shape == (3, 8) and weights.shape == (3,)
  np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)


def test_interpolation_endpoints_reproduce_the_priors(tiny):
  generator, g_vars, embed, priors = tiny.generator, tiny.g_vars, tiny.embed, tiny.priors
  p1, p2 = priors[:BATCH], priors[BATCH:2 * BATCH]
  e1, e2 = dip.embed_priors(embed, p1), dip.embed_priors(embed, p2)
  z = dip.sample_z(_key(0), BATCH, generator)
  from_prior = jax.jit(functools.partial(tiny.gan.sample, key=None))
  for lam, prior in ((1.0, p1), (0.0, p2)):
    fakes = dip.generate(generator, g_vars, z, dip.interpolate(e1, e2, lam))
    np.testing.assert_allclose(fakes, from_prior(tiny.g_params, tiny.g_state, z, prior),
                               atol=1e-6)
  # Mixing priors or their embeddings is the same (G_emb is affine, weights sum to 1).
  lam = jnp.linspace(0.1, 0.9, BATCH)
  np.testing.assert_allclose(
      dip.embed_priors(embed, dip.interpolate(p1, p2, lam)),
      dip.interpolate(e1, e2, lam), rtol=1e-5, atol=1e-5)


def test_kmeans_with_one_cluster_per_point_gives_back_the_points(tiny):
  embeddings = np.asarray(dip.embed_priors(tiny.embed, tiny.priors))
  centroids, weights = dip.fit_kmeans(_key(0), embeddings, NUM_PRIORS)
  np.testing.assert_allclose(_sorted_rows(centroids), _sorted_rows(embeddings), atol=1e-6)
  np.testing.assert_allclose(weights, np.full(NUM_PRIORS, 1 / NUM_PRIORS), rtol=1e-6)
  samples = np.asarray(dip.sample_kmeans(_key(1), centroids, 50, weights=weights,
                                         noise_std=0.0))
  distances = np.abs(samples[:, None] - embeddings[None]).max(-1).min(-1)
  np.testing.assert_allclose(distances, 0.0, atol=1e-6)
  # The noise is N(0, noise_std^2 I) around the drawn centroid.
  one = centroids[:1]
  noisy = np.asarray(dip.sample_kmeans(_key(2), one, 4000, noise_std=0.5))
  np.testing.assert_allclose((noisy - one).mean(0), 0.0, atol=0.05)
  np.testing.assert_allclose((noisy - one).std(0), 0.5, rtol=0.08)


def test_gmm_samples_stay_near_the_data():
  # Two tight blobs far apart in an 8-d embedding space.
  centres = np.stack([np.full(8, -5.0), np.full(8, 5.0)]).astype(np.float32)
  data = np.repeat(centres, 30, axis=0) + 0.1 * np.asarray(
      jax.random.normal(_key(0), (60, 8)))
  gmm = dip.fit_gmm(_key(1), data, 2)
  samples = np.asarray(dip.sample_gmm(_key(2), gmm, 200))
  assert samples.shape == (200, 8) and samples.dtype == np.float32
  to_centre = np.linalg.norm(samples[:, None] - centres[None], axis=-1).min(-1)
  assert to_centre.max() < 1.5  # The blobs' radius is about 0.1 * sqrt(8) = 0.28.
  near_first = np.linalg.norm(samples - centres[0], axis=-1) < 2
  assert 0.3 < near_first.mean() < 0.7  # Both components drawn, in random order.
  assert 0 < near_first[:100].sum() < 100


def test_edits_do_what_they_say(tmp_path):
  a = jax.random.uniform(_key(0), (2, 16, 16, 3), minval=-1, maxval=1)
  b = jax.random.uniform(_key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  box = (3, 5, 6, 4)  # top, left, height, width
  inside = np.zeros((16, 16), bool)
  inside[3:9, 5:9] = True

  mixed = np.asarray(dip.cutmix(a, b, box))
  np.testing.assert_array_equal(mixed[:, inside], np.asarray(b)[:, inside])
  np.testing.assert_array_equal(mixed[:, ~inside], np.asarray(a)[:, ~inside])
  cut = np.asarray(dip.cutout(a[0], box))  # One [H, W, C] image works too.
  np.testing.assert_array_equal(cut[inside], 0.0)
  np.testing.assert_array_equal(cut[~inside], np.asarray(a[0])[~inside])
  grey = np.asarray(dip.greyscale(a))
  assert grey.shape == a.shape and np.all(np.abs(grey) <= 1.0)
  np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  np.testing.assert_allclose(dip.greyscale(jnp.full((1, 1, 3), 0.3)), 0.3, rtol=1e-6)
  top, left, height, width = dip.random_box(_key(2), 16, 0.25)
  assert height == width == 4 and 0 <= top <= 12 and 0 <= left <= 12

  # A sketch: black strokes on white, greyscale PNG at another size.
  sketch = np.full((40, 40), 255, np.uint8)
  sketch[5:35, 15:25] = 0
  path = str(tmp_path / "sketch.png")
  Image.fromarray(sketch).save(path)
  loaded = dip.load_sketch(path, 16)
  assert loaded.shape == (16, 16, 3) and loaded.dtype == np.float32
  assert loaded.min() < -0.5 and loaded.max() == 1.0

  seen = []

  def prior_fn(images):
    seen.append(images)
    return images.mean(axis=(1, 2))

  edited = np.stack([mixed[0], cut, loaded])
  features = dip.edited_priors(prior_fn, edited)
  np.testing.assert_array_equal(seen[0], edited)
  assert features.shape == (3, 3) and features.dtype == np.float32


def test_inversion_reduces_the_reconstruction_error(tiny):
  generator, g_vars = tiny.generator, tiny.g_vars
  embedding = dip.embed_priors(tiny.embed, tiny.priors[:BATCH])
  # The query is G's own image at a z that inversion does not start from.
  query = dip.generate(generator, g_vars, dip.sample_z(_key(0), BATCH, generator), embedding)
  steps = 60
  z, per_block, errors = dip.invert(generator, g_vars, query, embedding, _key(1),
                                    steps=steps)
  assert z.shape == (BATCH, 9) and per_block.shape == (2, BATCH, 8)
  assert errors.shape == (steps,) and bool(jnp.all(jnp.isfinite(errors)))
  assert float(errors[-1]) < 0.2 * float(errors[0]), errors
  final = dip.reconstruction_error(generator, g_vars, z, per_block, query)
  assert final.shape == (BATCH,)
  assert float(final.mean()) < float(errors[0]) * 0.2
  # The blocks' embeddings moved apart from their common start.
  assert not np.allclose(per_block[0], per_block[1])


def test_write_sample_grids_writes_pngs(tiny, tmp_path):
  generator, g_vars, embed, priors = tiny.generator, tiny.g_vars, tiny.embed, tiny.priors
  paths = dip.write_sample_grids(generator, g_vars, embed, priors, str(tmp_path), _key(0),
                                 num=BATCH, interpolation_rows=2, interpolation_steps=2)
  assert set(paths) == {"priors", "interpolation", "kmeans", "gmm"}
  for mode, path in paths.items():
    with Image.open(path) as image:
      image.load()
      # Four 16 x 16 tiles, 2 x 2 with 2-pixel padding.
      assert image.size == (2 * 18 + 2, 2 * 18 + 2), mode
      pixels = np.asarray(image)
    assert pixels.std() > 0, mode
  with pytest.raises(ValueError, match="unknown sample modes"):
    dip.write_sample_grids(generator, g_vars, embed, priors, str(tmp_path), _key(0),
                           modes=("bogus",))
