"""Filter diversity (paper 001 Table 4) on synthetic params trees."""

import itertools

import numpy as np
import pytest

from gantransfer_jax.analysis import filter_diversity as fd


def _kernel_from_filters(filters: np.ndarray, kh: int, kw: int) -> np.ndarray:
  """HWIO kernel whose output filter o, flattened over (kh, kw, in), is filters[o]."""
  out = filters.shape[0]
  return np.moveaxis(filters.reshape(out, kh, kw, -1), 0, -1)


def test_orthogonal_filters_score_zero():
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(36, 8)))
  tree = {"conv": {"kernel": _kernel_from_filters(q.T, 3, 3)}}  # 8 filters of 3x3x4.
  assert fd.filter_similarity(tree) == {"conv/kernel": pytest.approx(0.0, abs=1e-12)}


def test_identical_filters_score_one_and_opposite_minus_one():
  f = np.random.default_rng(1).normal(size=(1, 18))
  same = _kernel_from_filters(np.repeat(f * 3.0, 5, axis=0), 3, 3)
  opposite = _kernel_from_filters(np.concatenate([f, -f]), 3, 3)
  sims = fd.filter_similarity({"same": {"kernel": same}, "opposite": {"kernel": opposite}})
  assert sims["same/kernel"] == pytest.approx(1.0)
  assert sims["opposite/kernel"] == pytest.approx(-1.0)  # Signed: no absolute value.


def test_matches_brute_force_pairs_and_flattens_hwio():
  kernel = np.random.default_rng(2).normal(size=(3, 3, 5, 7))
  filters = [kernel[..., o].ravel() for o in range(7)]
  pairs = [a @ b / np.linalg.norm(a) / np.linalg.norm(b)
           for a, b in itertools.combinations(filters, 2)]
  sims = fd.filter_similarity({"kernel": kernel})
  assert sims["kernel"] == pytest.approx(np.mean(pairs), rel=1e-10)


def test_selects_conv_kernels_only_and_skips_1x1_by_default():
  rng = np.random.default_rng(3)
  tree = {
      "b8": {"conv0": {"kernel": rng.normal(size=(3, 3, 4, 6)), "bias": rng.normal(size=6)},
             "torgb": {"kernel": rng.normal(size=(1, 1, 6, 3))}},
      "dense": {"kernel": rng.normal(size=(6, 6))},
      "adafm": {"gamma": rng.normal(size=(3, 3, 4, 6))},  # 4-D, but not a kernel.
      "blocks": [{"kernel": rng.normal(size=(3, 3, 2, 2))}],
  }
  assert list(fd.filter_similarity(tree)) == ["b8/conv0/kernel", "blocks/0/kernel"]
  assert "b8/torgb/kernel" in fd.filter_similarity(tree, include_1x1=True)


def test_summarize_and_table():
  sims = {"a/kernel": 0.01, "b/kernel": 0.03, "c/kernel": float("nan")}
  summary = fd.summarize(sims)
  assert summary["mean"] == pytest.approx(0.02)
  assert summary["num_layers"] == 2
  table = fd.format_table({"ckpt_1": sims, "ckpt_2": {"a/kernel": 0.5}})
  assert "b/kernel" in table and "mean" in table and "ckpt_2" in table
  assert np.isnan(fd.summarize({})["mean"])
