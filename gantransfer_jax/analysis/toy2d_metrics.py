"""Metrics of the 2D study (paper 004, §2 and Fig. 2/3; NOTES §5) on plain point sets.

* `wasserstein1`: exact W1 between two equally sized empirical distributions. With
  uniform weights and equal sizes the optimal transport plan is a permutation, so W1 is
  the mean cost of the optimal assignment (scipy's `linear_sum_assignment`); this is what
  the authors' `ot.emd` computes. It runs on the host; `wasserstein1_many` spreads many
  problems over threads (scipy releases the GIL while solving); `w1_table` tabulates them
  per evaluation step and run, `reduce_w1` keeps the last step or the minimum.
* `precision_recall`: Kynkaanniemi et al. (2019) improved precision/recall with k-NN
  balls, vectorised in jnp (jittable, vmappable).
* `gradient_field_similarity` / `discriminator_gradient_similarity`: cosine between a
  vector field at the points and the "golden" direction (nearest target centre - x).

Sign convention of the gradient-field similarity (NOTES §5 'Sign caveat'):
  'descent'        cosine of the direction a generated point moves in, -dL_G/dx, with
                   L_G = softplus(-D(x)) the non-saturating generator loss. A good
                   discriminator scores close to +1. This is the primary number.
  'loss_gradient'  cosine of +dL_G/dx, what the authors' code computes (their Pearson
                   -0.73 is in this convention). It is exactly the negative of 'descent'.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

Convention = Literal["descent", "loss_gradient"]
CONVENTIONS: tuple[str, ...] = ("descent", "loss_gradient")


# ------------------------------------------------------------------------------- W1


def wasserstein1(x: np.ndarray, y: np.ndarray) -> float:
  """Exact Wasserstein-1 (Euclidean ground cost) between two point sets of equal size."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 2:
    raise ValueError(f"need two [N, D] sets of equal shape, got {x.shape} and {y.shape}")
  cost = cdist(x, y)
  rows, cols = linear_sum_assignment(cost)
  return float(cost[rows, cols].mean())


def wasserstein1_many(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_threads: int = 1,
                      on_done: Callable[[int], None] | None = None) -> list[float]:
  """`wasserstein1` of each (x, y) pair, solved on `num_threads` threads, in order.

  `on_done(i)` is called (from the caller's thread) as results arrive, for progress.
  """
  pairs = list(pairs)
  if num_threads <= 1:
    results = []
    for i, (x, y) in enumerate(pairs):
      results.append(wasserstein1(x, y))
      if on_done:
        on_done(i)
    return results
  with ThreadPoolExecutor(num_threads) as pool:
    futures = [pool.submit(wasserstein1, x, y) for x, y in pairs]
    results = []
    for i, future in enumerate(futures):
      results.append(future.result())
      if on_done:
        on_done(i)
  return results


def w1_table(fakes: dict[int, np.ndarray], reals: dict[int, np.ndarray], num_threads: int = 1,
             on_done: Callable[[int], None] | None = None) -> dict[int, np.ndarray]:
  """Exact W1 per evaluation step and run, {step: [runs]}, of {step: [runs, N, 2]} sets."""
  pairs = [(step, run) for step in sorted(fakes) for run in range(fakes[step].shape[0])]
  values = wasserstein1_many(((fakes[step][run], reals[step][run]) for step, run in pairs),
                             num_threads, on_done=on_done)
  table = {step: np.zeros(fakes[step].shape[0]) for step in fakes}
  for (step, run), value in zip(pairs, values):
    table[step][run] = value
  return table


def reduce_w1(table: dict[int, np.ndarray], how: str) -> np.ndarray:
  """Per-run W1 from a `w1_table`: after the last evaluation, or the minimum over them."""
  if how == "final":
    return table[max(table)]
  if how == "min":
    return np.min(np.stack([table[step] for step in sorted(table)]), axis=0)
  raise ValueError(f"w1_reduce must be 'final' or 'min', got {how!r}")


# ------------------------------------------------------------------ precision / recall


def pairwise_sq_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """[N, M] squared Euclidean distances, from differences (exact zeros on the diagonal)."""
  return jnp.sum(jnp.square(x[:, None, :] - y[None, :, :]), axis=-1)


def kth_neighbour_sq_radii(x: jax.Array, k: int) -> jax.Array:
  """Squared distance from each point to its k-th nearest neighbour in `x`, itself excluded."""
  neg_sq = -pairwise_sq_distances(x, x)
  # The k+1 nearest include the point itself at distance 0: the last one is the k-th other.
  nearest, _ = jax.lax.top_k(neg_sq, k + 1)
  return -nearest[:, k]


def precision_recall(real: jax.Array, fake: jax.Array, k: int = 5) -> tuple[jax.Array, jax.Array]:
  """Improved precision and recall (Kynkaanniemi et al., 2019) with k-NN balls.

  precision: share of fake points inside the k-NN ball of some real point.
  recall:    share of real points inside the k-NN ball of some fake point.
  Balls are open (strict <), as in the authors' code.
  """
  real_radii = kth_neighbour_sq_radii(real, k)
  fake_radii = kth_neighbour_sq_radii(fake, k)
  real_fake = pairwise_sq_distances(real, fake)  # [N_real, N_fake]
  precision = jnp.mean(jnp.any(real_fake < real_radii[:, None], axis=0))
  recall = jnp.mean(jnp.any(real_fake < fake_radii[None, :], axis=1))
  return precision, recall


# --------------------------------------------------------- gradient-field similarity


def nearest_centre_directions(points: jax.Array, centres: jax.Array) -> jax.Array:
  """The golden field: (nearest centre - x) for each point, [N, 2]."""
  nearest = jnp.argmin(pairwise_sq_distances(points, centres), axis=1)
  return centres[nearest] - points


def gradient_field_similarity(vectors: jax.Array, points: jax.Array,
                              centres: jax.Array) -> jax.Array:
  """Mean cosine between `vectors` at `points` and (nearest centre - point).

  Points where either vector is zero (a flat ReLU discriminator, a point on a centre)
  have no defined cosine and are left out of the mean, as the authors drop NaNs;
  the result is NaN only if no point is left.
  """
  golden = nearest_centre_directions(points, centres)
  norms = jnp.linalg.norm(vectors, axis=-1) * jnp.linalg.norm(golden, axis=-1)
  valid = norms > 0
  cosines = jnp.sum(vectors * golden, axis=-1) / jnp.where(valid, norms, 1.0)
  return jnp.sum(jnp.where(valid, cosines, 0.0)) / jnp.sum(valid)


def generator_loss_gradients(logit_fn: Callable[[jax.Array], jax.Array],
                             points: jax.Array) -> jax.Array:
  """dL_G/dx at each point for the non-saturating loss L_G(x) = softplus(-D(x)).

  `logit_fn` maps [N, 2] points to [N] discriminator logits and must treat points
  independently (true for an MLP without batch statistics), so the gradient of the
  summed loss is the per-point gradient.
  """
  return jax.grad(lambda x: jnp.sum(jax.nn.softplus(-logit_fn(x))))(points)


def discriminator_gradient_similarity(logit_fn: Callable[[jax.Array], jax.Array],
                                      points: jax.Array, centres: jax.Array,
                                      convention: Convention = "descent") -> jax.Array:
  """Gradient-field quality of a discriminator at `points` (see the module docstring)."""
  if convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
  loss_grads = generator_loss_gradients(logit_fn, points)
  vectors = -loss_grads if convention == "descent" else loss_grads
  return gradient_field_similarity(vectors, points, centres)


# ------------------------------------------------------------------------ statistics


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
  """Pearson correlation of two equally long sequences (NaN pairs dropped)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  keep = np.isfinite(x) & np.isfinite(y)
  if keep.sum() < 2 or np.std(x[keep]) == 0 or np.std(y[keep]) == 0:
    return float("nan")
  return float(np.corrcoef(x[keep], y[keep])[0, 1])
