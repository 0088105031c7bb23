"""FID, KID, precision/recall and convergence against closed forms and brute force."""

import numpy as np
import pytest
import scipy.linalg

from gantransfer_jax import metrics
from gantransfer_jax.metrics import distances


def _random_covariance(rng, dim, rank=None):
  factor = rng.normal(size=(dim, rank or dim))
  return factor @ factor.T / dim


def _inception_like(rng, num, dim=2048, shift=0.0):
  """Non-negative, skewed features at Inception's scale (post-ReLU averages)."""
  return np.maximum(rng.gamma(0.6, 0.5, (num, dim)) + shift, 0).astype(np.float32)


# ---- FID ------------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  var1, var2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_for_full_covariances():
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=64), rng.normal(size=64)
  sigma1, sigma2 = _random_covariance(rng, 64), _random_covariance(rng, 64)
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
  np.testing.assert_allclose(metrics.frechet_distance(mu1, sigma1, mu2, sigma2), expected,
                             rtol=1e-8)


def test_fid_of_gaussian_samples_approaches_closed_form():
  rng = np.random.default_rng(2)
  dim = 8
  mu1, mu2 = np.zeros(dim), np.full(dim, 0.5)
  sigma1, sigma2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
  real = rng.multivariate_normal(mu1, sigma1, size=40_000)
  fake = rng.multivariate_normal(mu2, sigma2, size=40_000)
  expected = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
  np.testing.assert_allclose(metrics.fid_from_features(real, fake), expected, rtol=0.03)


def test_fid_of_a_set_with_itself_is_zero_even_when_covariance_is_singular():
  features = _inception_like(np.random.default_rng(3), 40, dim=256)  # rank 39 < 256
  mu, sigma = metrics.feature_statistics(features)
  assert abs(metrics.fid_from_features(features, features)) < 1e-9 * np.trace(sigma)
  # The D x D route: sqrt amplifies round-off in the zero eigenvalues, still tiny.
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


@pytest.mark.parametrize("sizes", [(30, 25), (64, 10), (5, 60)])
def test_small_set_and_covariance_routes_agree(sizes):
  rng = np.random.default_rng(10)
  real = _inception_like(rng, sizes[0], 64)
  fake = _inception_like(rng, sizes[1], 64, shift=0.05)
  by_covariance = metrics.frechet_distance(*metrics.feature_statistics(real),
                                           *metrics.feature_statistics(fake))
  np.testing.assert_allclose(metrics.fid_from_features(real, fake), by_covariance, rtol=1e-6)


def test_fid_is_symmetric_and_positive_for_low_rank_sets():
  rng = np.random.default_rng(4)
  a, b = _inception_like(rng, 30, 256), _inception_like(rng, 25, 256, shift=0.05)
  ab, ba = metrics.fid_from_features(a, b), metrics.fid_from_features(b, a)
  assert ab > 0
  np.testing.assert_allclose(ab, ba, rtol=1e-9)


# ---- KID ------------------------------------------------------------------------------------


def _mmd2_numpy(x, y):
  """The unbiased MMD^2 estimator with the cubic kernel, written out in float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  dim, m = x.shape[1], len(x)
  kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
  off_diagonal = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
  return off_diagonal / (m * (m - 1)) - 2 * kxy.mean()


@pytest.mark.parametrize("shift", [0.0, 0.01, 0.05])
def test_kid_matches_numpy_formula(shift):
  rng = np.random.default_rng(5)
  real, fake = _inception_like(rng, 150), _inception_like(rng, 150, shift=shift)
  # subset_size >= both sets: every subset is a permutation of the whole set.
  mean, std = metrics.kid_from_features(real, fake, num_subsets=3, subset_size=1000)
  np.testing.assert_allclose(mean, _mmd2_numpy(fake, real), rtol=1e-3, atol=1e-7)
  assert std < 1e-6


def test_kid_subsets_are_unbiased_and_spread():
  rng = np.random.default_rng(6)
  real, fake = _inception_like(rng, 400), _inception_like(rng, 300, shift=0.02)
  mean, std = metrics.kid_from_features(real, fake, num_subsets=50, subset_size=100)
  full = _mmd2_numpy(fake, real[:300])
  assert std > 0
  assert abs(mean - full) < 4 * std / np.sqrt(50) + 0.1 * full


def test_kid_of_same_distribution_is_near_zero():
  rng = np.random.default_rng(7)
  real, fake = _inception_like(rng, 300), _inception_like(rng, 300)
  mean, std = metrics.kid_from_features(real, fake, num_subsets=20, subset_size=100)
  assert abs(mean) < 3 * std


# ---- Precision and recall -------------------------------------------------------------------


def _precision_recall_brute_force(real, fake, k):
  def pairwise(a, b):
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)

  real_radii = np.sort(pairwise(real, real), axis=1)[:, k]  # column 0 is the point itself
  fake_radii = np.sort(pairwise(fake, fake), axis=1)[:, k]
  precision = np.mean(np.any(pairwise(fake, real) <= real_radii[None, :], axis=1))
  recall = np.mean(np.any(pairwise(real, fake) <= fake_radii[None, :], axis=1))
  return precision, recall


@pytest.mark.parametrize("k, chunk_size", [(5, 1024), (3, 16)])
def test_precision_recall_matches_brute_force(k, chunk_size):
  rng = np.random.default_rng(8)
  real = rng.normal(size=(70, 6)).astype(np.float32)
  fake = (rng.normal(size=(50, 6)) * 1.3 + 0.4).astype(np.float32)
  got = metrics.precision_recall(real, fake, k=k, chunk_size=chunk_size)
  expected = _precision_recall_brute_force(real.astype(np.float64), fake.astype(np.float64), k)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_knn_radii_exclude_the_point_itself():
  points = np.array([[0.0], [1.0], [3.0], [7.0]], np.float32)
  radii = np.sqrt(np.asarray(distances.knn_radii_squared(points, k=1, chunk_size=3)))
  np.testing.assert_allclose(radii, [1, 1, 2, 4], atol=1e-6)


def test_precision_recall_of_identical_sets_is_one():
  points = np.random.default_rng(9).normal(size=(40, 3)).astype(np.float32)
  np.testing.assert_allclose(metrics.precision_recall(points, points), (1.0, 1.0))


# ---- Convergence ----------------------------------------------------------------------------


def test_convergence_kimg_finds_first_fid_within_tolerance_of_best():
  kimg = [0, 100, 200, 300, 400, 500]
  fids = [250.0, 80.0, 30.0, 20.9, 21.5, 20.0]
  assert metrics.convergence_kimg(kimg, fids) == 300  # first <= 1.05 * 20 = 21
  assert metrics.convergence_kimg(kimg, fids, tolerance=0.0) == 500
  assert metrics.convergence_kimg(kimg, fids, tolerance=1.0) == 200


def test_convergence_kimg_ignores_missing_evaluations():
  assert metrics.convergence_kimg([1, 2, 3, 4], [np.nan, 50.0, np.nan, 49.0]) == 2
  with pytest.raises(ValueError):
    metrics.convergence_kimg([1, 2], [np.nan, np.nan])
