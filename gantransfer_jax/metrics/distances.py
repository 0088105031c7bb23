"""Distances between sets of features: FID, KID, precision/recall, and FID convergence.

All take [N, D] feature arrays (Inception pool features for FID/KID, any embedding for
precision/recall). FID is computed on the host in float64; KID and precision/recall do
their O(N^2 D) work on the default device in chunks, so 50k x 50k pairwise distances
never exist at once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST  # Feature dot products must not run in TF32/bf16.


# ---- FID --------------------------------------------------------------------------------


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] of [N, D] features, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"need [N >= 2, D] features, got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues -> 0)."""
  eigenvalues, eigenvectors = np.linalg.eigh(matrix)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr sqrt(sigma1 sigma2) for PSD sigma1, sigma2.

  sigma1 sigma2 is similar to sqrt(sigma1) sigma2 sqrt(sigma1), which is symmetric PSD,
  so the trace is the sum of the square roots of that matrix's eigenvalues. Two `eigh`
  calls, no non-symmetric `sqrtm`: stable for the singular covariances of small sets,
  where `scipy.linalg.sqrtm` needs an eps offset and can return complex noise.
  """
  root1 = _psd_sqrt(sigma1)
  inner = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
  return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), in float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"mismatched statistics: {mu1.shape} {sigma1.shape} vs "
                     f"{mu2.shape} {sigma2.shape}")
  mean_term = float(np.sum((mu1 - mu2) ** 2))
  return mean_term + float(np.trace(sigma1) + np.trace(sigma2)) - 2 * trace_sqrt_product(
      sigma1, sigma2)


def _fid_from_small_sets(real: np.ndarray, fake: np.ndarray) -> float:
  """FID through the [N1, N2] cross-Gram matrix, for sets with fewer points than dims.

  With centred features A (so sigma = A^T A / (n - 1)), sigma1 sigma2 has the nonzero
  eigenvalues of (A1 A2^T)(A1 A2^T)^T / ((n1 - 1)(n2 - 1)), so tr sqrt(sigma1 sigma2) is
  the nuclear norm of A1 A2^T over sqrt((n1 - 1)(n2 - 1)): exact, and an SVD of N1 x N2
  instead of two eigendecompositions of D x D.
  """
  centred1, centred2 = real - real.mean(axis=0), fake - fake.mean(axis=0)
  scale1, scale2 = len(real) - 1, len(fake) - 1
  singular_values = np.linalg.svd(centred1 @ centred2.T, compute_uv=False)
  mean_term = np.sum((real.mean(axis=0) - fake.mean(axis=0)) ** 2)
  trace_term = np.sum(centred1 ** 2) / scale1 + np.sum(centred2 ** 2) / scale2
  return float(mean_term + trace_term - 2 * singular_values.sum() / np.sqrt(scale1 * scale2))


def fid_from_features(real, fake) -> float:
  """Frechet Inception distance between two [N, D] feature sets (float64)."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if real.ndim != 2 or real.shape[1:] != fake.shape[1:] or min(len(real), len(fake)) < 2:
    raise ValueError(f"need [N >= 2, D] features of equal D, got {real.shape}, {fake.shape}")
  if max(len(real), len(fake)) <= real.shape[1]:
    return _fid_from_small_sets(real, fake)
  return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


# ---- KID --------------------------------------------------------------------------------


@jax.jit
def _subset_mmd2(real: jax.Array, fake: jax.Array, real_index: jax.Array,
                 fake_index: jax.Array) -> jax.Array:
  """Unbiased MMD^2 with the cubic kernel (x.y / d + 1)^3, one value per subset."""
  dim = real.shape[1]

  def kernel_sum(a, b):
    # Of (s + 1)^3 = s^3 + 3s^2 + 3s + 1 the constant cancels in the estimator: dropping it
    # halves the magnitudes that cancel in float32. Row sums first keep the reduction short.
    s = jnp.dot(a, b.T, precision=_HIGHEST) / dim
    k = s * (s * (s + 3) + 3)
    return k.sum(axis=1).sum(), jnp.trace(k)

  def one_subset(indices):
    x, y = fake[indices[1]], real[indices[0]]
    m = x.shape[0]
    xx, xx_diag = kernel_sum(x, x)
    yy, yy_diag = kernel_sum(y, y)
    xy, _ = kernel_sum(x, y)
    return ((xx - xx_diag) + (yy - yy_diag)) / (m * (m - 1)) - 2 * xy / (m * m)

  return jax.lax.map(one_subset, (real_index, fake_index))


def kid_from_features(real, fake, num_subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
  """Kernel Inception distance: mean and std of unbiased MMD^2 over random subsets.

  Each subset draws min(subset_size, len(real), len(fake)) points of each set without
  replacement (the KID of Binkowski et al. with the cubic polynomial kernel).
  """
  real = np.asarray(real, np.float32)
  fake = np.asarray(fake, np.float32)
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f"feature dims differ: {real.shape} vs {fake.shape}")
  m = min(subset_size, len(real), len(fake))
  if m < 2:
    raise ValueError("KID needs at least two points in each set")
  rng = np.random.default_rng(seed)
  real_index = np.stack([rng.choice(len(real), m, replace=False) for _ in range(num_subsets)])
  fake_index = np.stack([rng.choice(len(fake), m, replace=False) for _ in range(num_subsets)])
  mmd2 = np.asarray(_subset_mmd2(real, fake, real_index, fake_index), np.float64)
  return float(mmd2.mean()), float(mmd2.std())


# ---- Precision and recall (Kynkaanniemi et al. 2019) ---------------------------------------


def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  cross = jnp.dot(a, b.T, precision=_HIGHEST)
  squared = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2 * cross
  return jnp.maximum(squared, 0.0)


def _chunked(points: jax.Array, chunk_size: int, fn) -> jax.Array:
  """fn over row chunks of `points` (padded by repeating a row), results trimmed."""
  num = points.shape[0]
  num_chunks = -(-num // chunk_size)
  padded = jnp.concatenate(
      [points, jnp.broadcast_to(points[-1:], (num_chunks * chunk_size - num, points.shape[1]))])
  out = jax.lax.map(fn, padded.reshape(num_chunks, chunk_size, -1))
  return out.reshape(num_chunks * chunk_size, *out.shape[2:])[:num]


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def knn_radii_squared(points: jax.Array, k: int, chunk_size: int = 1024) -> jax.Array:
  """Squared distance from each point to its k-th nearest neighbour, itself excluded."""
  def kth(chunk):
    # The k + 1 smallest distances include the point itself at 0.
    smallest = -jax.lax.top_k(-_squared_distances(chunk, points), k + 1)[0]
    return smallest[:, k]

  return _chunked(points, chunk_size, kth)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _inside_any_ball(queries: jax.Array, centres: jax.Array, radii_squared: jax.Array,
                     chunk_size: int = 1024) -> jax.Array:
  """Per query: does it lie within some centre's k-NN ball?"""
  def covered(chunk):
    return jnp.any(_squared_distances(chunk, centres) <= radii_squared[None, :], axis=1)

  return _chunked(queries, chunk_size, covered)


def precision_recall(real, fake, k: int = 5, chunk_size: int = 1024) -> tuple[float, float]:
  """Improved precision and recall of Kynkaanniemi et al.

  Each point's neighbourhood is the ball reaching its k-th nearest neighbour in its own
  set (itself excluded). Precision: share of fake points inside some real ball; recall:
  share of real points inside some fake ball. Runs on device in row chunks of
  `chunk_size`, so memory is O(chunk_size * N), never N x N.
  """
  real = jnp.asarray(real, jnp.float32)
  fake = jnp.asarray(fake, jnp.float32)
  if min(len(real), len(fake)) <= k:
    raise ValueError(f"k={k} needs more than k points in each set")
  chunk_size = min(chunk_size, max(len(real), len(fake)))
  real_radii = knn_radii_squared(real, k, chunk_size)
  fake_radii = knn_radii_squared(fake, k, chunk_size)
  precision = _inside_any_ball(fake, real, real_radii, chunk_size).mean()
  recall = _inside_any_ball(real, fake, fake_radii, chunk_size).mean()
  return float(precision), float(recall)


# ---- Convergence (papers 001 and 004) -----------------------------------------------------


def convergence_kimg(steps_or_kimg: Sequence[float], fids: Sequence[float],
                     tolerance: float = 0.05) -> float:
  """Images shown (or steps) when FID first comes within `tolerance` of its best value.

  Evaluations whose FID is NaN are ignored. Returns the `steps_or_kimg` entry of the
  first evaluation with fid <= (1 + tolerance) * min(fids).
  """
  steps = np.asarray(steps_or_kimg, np.float64)
  fids = np.asarray(fids, np.float64)
  if steps.shape != fids.shape or steps.ndim != 1:
    raise ValueError(f"need two equal-length 1-D sequences, got {steps.shape}, {fids.shape}")
  valid = ~np.isnan(fids)
  if not valid.any():
    raise ValueError("no finite FID to converge to")
  threshold = (1 + tolerance) * np.min(fids[valid])
  first = np.argmax(valid & (fids <= threshold))
  return float(steps[first])
