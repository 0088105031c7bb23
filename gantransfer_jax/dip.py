"""DIP at inference (paper 003): sampling conditional embeddings, semantic diffusion
through edited images' priors, and inversion of a query image.

A DIP generator draws G(z | G_emb(C(x))): `models.sngan.Generator` (G_emb linear,
conditional batch norm) or a conditional `models.stylegan2.Generator` (G_emb a 2-layer
MLP, its output a mapping-network input). Both expose `z_dim`, `num_blocks` and
`__call__(z, embedding=...)`, which is all this module uses of them; G_emb is the
condition transform's (`transfer.condition`), reached through `embedder`. At
inference the prior set D_prior = {C(x_j)} of the training images is what makes
samples, and everything here works in the conditional space E = G_emb(prior):

* `sample_training`: embeddings of randomly picked training priors.
* `sample_interpolation` (eq. 5): lambda * p1 + (1 - lambda) * p2 of two random training
  priors, lambda ~ U[0, 1], to be embedded. `write_sample_grids` mixes priors, as eq. 5
  does; for SNGAN's affine G_emb that is the same point as mixing the embeddings, for
  StyleGAN2's MLP it is not.
* `fit_kmeans` / `sample_kmeans` (eq. 6): a K-means centroid mu of G_emb(D_prior) plus
  N(0, sigma^2 I) noise. The paper writes N(0, I), so sigma defaults to 1; how much that
  is depends on the scale of the learnt embeddings, hence the knob.
* `fit_gmm` / `sample_gmm` (eq. 6): a draw of a Gaussian mixture fitted to G_emb(D_prior).
  The paper fits 10K clusters / 1K components to 200K embeddings and sees both as ways
  not to keep millions of priors around; `write_sample_grids` keeps those ratios.

Semantic diffusion conditions G on C(x') of an edited image x' (`cutmix`, `cutout`,
`greyscale`, a `load_sketch`ed drawing); `edited_priors` runs the prior extractor.

`invert` fits z and one embedding per block to a query image (appendix C); a StyleGAN2
"block" is one w of the synthesis network, each mapped from its own embedding.

All randomness comes from JAX keys; scikit-learn gets a seed drawn from the key.
StyleGAN2's per-pixel noise is drawn from one fixed key in every call here, so that an
inversion's objective and the reconstruction it reports see the same noise.
Images are float in [-1, 1], NHWC.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gantransfer_jax import images as images_lib
from gantransfer_jax.data import folder
from gantransfer_jax.models import gan as gan_lib

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels.
# A conditional sngan.Generator or stylegan2.Generator (see the module docstring).
Generator = Any
# G_emb: priors [N, prior_dim] -> embeddings [N, E].
Embed = Callable[[jax.Array], jax.Array]

SAMPLE_MODES = ("priors", "interpolation", "kmeans", "gmm")


def _noise_rngs() -> dict[str, jax.Array]:
  """The rng streams of a generator call: StyleGAN2's fixed noise (SNGAN has none)."""
  return {"noise": jax.random.key(0)}


def _seed(key: jax.Array) -> int:
  """A scikit-learn random_state drawn from a JAX key."""
  return int(jax.random.randint(key, (), 0, 2**31 - 1))


# ---- The conditional space ---------------------------------------------------------------


def embedder(gan, g_params, g_state) -> Embed:
  """G_emb of a conditional `Gan`'s G with these params and state, jitted."""
  embed = jax.jit(gan.embed_condition, static_argnums=0)
  return lambda priors: embed(gan_lib.GENERATOR, g_params, g_state, priors)


def embed_priors(embed: Embed, priors, *, batch_size: int = 4096) -> jax.Array:
  """G_emb(priors): [N, prior_dim] -> [N, embedding_dim], in batches so that a large
  D_prior (the paper clusters 200K) never sits on the device at once."""
  priors = np.asarray(priors, np.float32)
  chunks = [embed(priors[i:i + batch_size]) for i in range(0, len(priors), batch_size)]
  return jnp.concatenate(chunks) if len(chunks) > 1 else chunks[0]


@functools.partial(jax.jit, static_argnums=0)
def generate(generator: Generator, g_vars, z: jax.Array,
             embeddings: jax.Array) -> jax.Array:
  """G(z | embeddings) in eval mode (running batch statistics, no state updates; no
  truncation).

  Args:
    z: [N, z_dim].
    embeddings: [N, E], or [num_blocks, N, E] for one per block (as `invert` returns).
  Returns: [N, R, R, 3] images in [-1, 1].
  """
  return generator.apply(g_vars, z, embedding=embeddings, rngs=_noise_rngs())


def sample_z(key: jax.Array, n: int, generator: Generator) -> jax.Array:
  """z ~ N(0, I), [n, z_dim] (the prior G was trained with)."""
  return jax.random.normal(key, (n, generator.z_dim))


def reconstruction_error(generator: Generator, g_vars, z: jax.Array,
                         embeddings: jax.Array, query: jax.Array) -> jax.Array:
  """Per-image mean squared error between G(z | embeddings) and `query`: [N]."""
  return jnp.mean(jnp.square(generate(generator, g_vars, z, embeddings) - query),
                  axis=(1, 2, 3))


# ---- Embedding samplers ------------------------------------------------------------------


def sample_training(key: jax.Array, embeddings: jax.Array, n: int) -> jax.Array:
  """n embeddings of training priors picked uniformly with replacement: [n, E]."""
  picks = jax.random.randint(key, (n,), 0, embeddings.shape[0])
  return jnp.asarray(embeddings)[picks]


def interpolate(e1: jax.Array, e2: jax.Array, lam) -> jax.Array:
  """lam * e1 + (1 - lam) * e2 (eq. 5), lam a scalar or [n] (one per row of e1, e2).

  lam = 1 gives e1 and lam = 0 gives e2 exactly. Applied to priors or to embeddings:
  where G_emb is affine (SNGAN), G_emb(interpolate(p1, p2, lam)) equals
  interpolate(G_emb(p1), G_emb(p2), lam) up to rounding.
  """
  lam = jnp.asarray(lam, jnp.result_type(e1))
  if lam.ndim == 1:
    lam = lam[:, None]
  return lam * e1 + (1 - lam) * e2


def sample_interpolation(key: jax.Array, embeddings: jax.Array, n: int) -> jax.Array:
  """n mixes of two random rows of `embeddings` (training priors, or their embeddings
  where G_emb is affine), lambda ~ U[0, 1] each (eq. 5): [n, E]."""
  first, second, lam_key = jax.random.split(key, 3)
  lam = jax.random.uniform(lam_key, (n,))
  return interpolate(sample_training(first, embeddings, n),
                     sample_training(second, embeddings, n), lam)


def fit_kmeans(key: jax.Array, embeddings, k: int) -> tuple[np.ndarray, np.ndarray]:
  """K-means (scikit-learn) on G_emb(D_prior): (centroids [k, E], weights [k]).

  `weights` are the clusters' shares of the embeddings, so that sampling centroids by
  weight follows the data; the paper does not say how mu is drawn, and with 10K
  clusters of unequal sizes drawing them uniformly would over-sample rare modes.
  """
  from sklearn.cluster import KMeans  # Imported lazily: only inference needs sklearn.

  data = np.asarray(embeddings, np.float64)
  kmeans = KMeans(n_clusters=k, n_init=1, random_state=_seed(key)).fit(data)
  weights = np.bincount(kmeans.labels_, minlength=k) / len(data)
  return kmeans.cluster_centers_.astype(np.float32), weights.astype(np.float32)


def sample_kmeans(key: jax.Array, centroids, n: int, *, weights=None,
                  noise_std: float = 1.0) -> jax.Array:
  """mu + N(0, noise_std^2 I), mu a centroid drawn by `weights` (uniform if None) (eq. 6):
  [n, E]. The paper's noise is N(0, I), i.e. noise_std = 1."""
  centroids = jnp.asarray(centroids, jnp.float32)
  pick_key, noise_key = jax.random.split(key)
  if weights is None:
    picks = jax.random.randint(pick_key, (n,), 0, centroids.shape[0])
  else:
    picks = jax.random.choice(pick_key, centroids.shape[0], (n,), p=jnp.asarray(weights))
  noise = noise_std * jax.random.normal(noise_key, (n, centroids.shape[1]))
  return centroids[picks] + noise


def fit_gmm(key: jax.Array, embeddings, n_components: int, *,
            covariance_type: str = "full"):
  """A `sklearn.mixture.GaussianMixture` fitted on G_emb(D_prior) (eq. 6: mu, Sigma ~ GMM).

  'full' covariances are the paper's N(mu, Sigma); 'diag' is far cheaper in memory for
  many components (the paper uses 1K components of 128-d embeddings).
  """
  from sklearn.mixture import GaussianMixture  # Imported lazily, as in fit_kmeans.

  data = np.asarray(embeddings, np.float64)
  return GaussianMixture(n_components=n_components, covariance_type=covariance_type,
                         random_state=_seed(key)).fit(data)


def sample_gmm(key: jax.Array, gmm, n: int) -> jax.Array:
  """n draws of a fitted GaussianMixture: [n, E], in random order.

  scikit-learn's `sample` draws from the estimator's own random_state, so we sample a
  shallow copy seeded from `key` (the same key gives the same draws, the fitted model
  is left alone), and shuffle: `sample` returns the draws grouped by component.
  """
  seed_key, order_key = jax.random.split(key)
  seeded = copy.copy(gmm)
  seeded.random_state = _seed(seed_key)
  draws, _ = seeded.sample(n)
  order = np.asarray(jax.random.permutation(order_key, n))
  return jnp.asarray(draws[order], jnp.float32)


# ---- Semantic diffusion: edited images ---------------------------------------------------


def _box_slices(box: Box) -> tuple[slice, slice]:
  top, left, height, width = box
  return slice(top, top + height), slice(left, left + width)


def random_box(key: jax.Array, resolution: int, fraction: float = 0.5) -> Box:
  """A square box of side fraction * resolution at a random place inside the image."""
  side = min(resolution, max(1, int(round(fraction * resolution))))
  top, left = (int(v) for v in jax.random.randint(key, (2,), 0, resolution - side + 1))
  return top, left, side, side


def cutmix(a: jax.Array, b: jax.Array, box: Box) -> jax.Array:
  """`a` with the box pasted from `b` ("custom editing"): [..., H, W, C] each."""
  rows, cols = _box_slices(box)
  return jnp.asarray(a).at[..., rows, cols, :].set(jnp.asarray(b)[..., rows, cols, :])


def cutout(image: jax.Array, box: Box, fill: float = 0.0) -> jax.Array:
  """`image` with the box set to `fill` ("inpainting"); 0 is mid-grey in [-1, 1], as in
  DiffAugment's cutout."""
  rows, cols = _box_slices(box)
  return jnp.asarray(image).at[..., rows, cols, :].set(fill)


def greyscale(image: jax.Array) -> jax.Array:
  """Luma (ITU-R BT.601) replicated over 3 channels ("colourisation"). The weights sum to
  one, so [-1, 1] maps to [-1, 1] without leaving that range."""
  image = jnp.asarray(image)
  luma = image @ jnp.asarray([0.299, 0.587, 0.114], image.dtype)
  return jnp.repeat(luma[..., None], 3, axis=-1)


def load_sketch(path: str, resolution: int) -> np.ndarray:
  """An external sketch (any image file) as float32 [R, R, 3] in [-1, 1] ("sketch to
  image"), brought to size the way training folders are (`data.folder.load_image`)."""
  return folder.load_image(path, resolution).astype(np.float32) / 127.5 - 1.0


def edited_priors(prior_fn: Callable, images) -> np.ndarray:
  """C(x') of edited images [N, H, W, C] in [-1, 1]: the priors to generate from.

  `prior_fn` is a `priors.load_prior` extractor; feed its output to `embed_priors`.
  """
  return np.asarray(prior_fn(np.asarray(images, np.float32)), np.float32)


# ---- Inversion ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("generator", "steps", "learning_rate"))
def _invert(generator, g_vars, query, initial_embedding, key, steps, learning_rate):
  z = jax.random.normal(key, (query.shape[0], generator.z_dim), query.dtype)
  embeddings = jnp.broadcast_to(initial_embedding,
                                (generator.num_blocks,) + initial_embedding.shape)
  params = (z, embeddings)
  optimizer = optax.adam(learning_rate)

  def loss_fn(params):
    z, embeddings = params
    fakes = generator.apply(g_vars, z, embedding=embeddings, rngs=_noise_rngs())
    return jnp.mean(jnp.square(fakes - query))

  def step(carry, _):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (params, _), errors = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
  return params[0], params[1], errors


def invert(generator: Generator, g_vars, query, initial_embedding, key: jax.Array, *,
           steps: int, learning_rate: float = 0.1
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Fits z and one embedding per block so that G reproduces `query` (paper, appendix C).

  min over z, C_1..C_k of ||G(z | C_1..C_k) - x_q||^2 with Adam (lr 0.1), every C_i
  starting at G_emb(C(x_q)) and z at a draw of N(0, I) from `key` (the paper does not
  say how z starts). The loss is the mean rather than the paper's sum of squares:
  Adam's steps do not depend on the loss scale (but for its epsilon), and the mean
  reads as a per-pixel error. The generator's weights and batch statistics stay fixed
  (eval mode). All steps run as one jitted `lax.scan`.

  Args:
    query: [N, R, R, 3] images in [-1, 1].
    initial_embedding: [N, E], G_emb(C(query)) (`embed_priors` of its priors).
    steps: Adam iterations.
  Returns:
    z [N, z_dim], per-block embeddings [num_blocks, N, E] (for `generate`), and
    errors [steps], the batch's mean squared error before each step (errors[0] is
    the starting point's; `reconstruction_error` gives the final one).
  """
  query = jnp.asarray(query, jnp.float32)
  initial_embedding = jnp.asarray(initial_embedding, jnp.float32)
  return _invert(generator, g_vars, query, initial_embedding, key, steps,
                 float(learning_rate))


# ---- Sample grids ------------------------------------------------------------------------


def write_sample_grids(generator: Generator, g_vars, embed: Embed, train_priors, out_dir: str,
                       key: jax.Array, *, num: int = 16, modes: Sequence[str] = SAMPLE_MODES,
                       kmeans_clusters: int | None = None, gmm_components: int | None = None,
                       noise_std: float = 1.0, interpolation_rows: int = 4,
                       interpolation_steps: int = 8) -> dict[str, str]:
  """Writes `<out_dir>/samples_<mode>.png` for each mode; returns {mode: path}.

  'priors', 'kmeans' and 'gmm' grids hold `num` samples, each with its own z. The
  'interpolation' grid has `interpolation_rows` rows, each one z and one pair of random
  training priors, lambda sweeping 0 -> 1 over `interpolation_steps` columns (so a
  row runs from the second prior's image to the first's). Interpolation mixes the
  priors, then embeds the mixes (eq. 5).

  Args:
    train_priors: D_prior, [N, prior_dim].
    kmeans_clusters / gmm_components: default to the paper's proportions (10K clusters
      and 1K components for 200K embeddings): N // 20 and N // 200, at least 1.
    noise_std: the K-means sampler's noise (paper: 1).
  """
  unknown = set(modes) - set(SAMPLE_MODES)
  if unknown:
    raise ValueError(f"unknown sample modes {sorted(unknown)}; valid: {SAMPLE_MODES}")
  embeddings = embed_priors(embed, train_priors)
  count = embeddings.shape[0]
  mode_keys = dict(zip(SAMPLE_MODES, jax.random.split(key, len(SAMPLE_MODES))))
  paths = {}
  for mode in modes:
    fit_key, sample_key, z_key = jax.random.split(mode_keys[mode], 3)
    num_cols = None
    if mode == "priors":
      samples = sample_training(sample_key, embeddings, num)
    elif mode == "interpolation":
      pair = jax.random.randint(sample_key, (2, interpolation_rows), 0, count)
      lam = jnp.tile(jnp.linspace(0.0, 1.0, interpolation_steps), interpolation_rows)
      p1, p2 = (jnp.repeat(jnp.asarray(train_priors)[p], interpolation_steps, axis=0)
                for p in pair)
      samples = embed_priors(embed, interpolate(p1, p2, lam))
      num_cols = interpolation_steps
    elif mode == "kmeans":
      centroids, weights = fit_kmeans(fit_key, embeddings,
                                      kmeans_clusters or max(1, count // 20))
      samples = sample_kmeans(sample_key, centroids, num, weights=weights,
                              noise_std=noise_std)
    else:
      gmm = fit_gmm(fit_key, embeddings, gmm_components or max(1, count // 200))
      samples = sample_gmm(sample_key, gmm, num)
    if mode == "interpolation":  # One z per row, so only the prior changes along it.
      z = jnp.repeat(sample_z(z_key, interpolation_rows, generator), interpolation_steps,
                     axis=0)
    else:
      z = sample_z(z_key, samples.shape[0], generator)
    fakes = generate(generator, g_vars, z, samples)
    paths[mode] = images_lib.save_grid(os.path.join(out_dir, f"samples_{mode}.png"),
                                       np.asarray(fakes), num_cols)
  return paths
