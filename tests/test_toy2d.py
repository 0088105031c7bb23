"""The 2D study (paper 004, §2): metrics against brute force, and the quick task end to end."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy2d as toy2d_config
from gantransfer_jax import writers
from gantransfer_jax.analysis import toy2d_metrics as metrics
from gantransfer_jax.tasks import toy2d
from gantransfer_jax.tasks import toy2d_gan


# ------------------------------------------------------------------------------- W1


def test_w1_of_a_translated_set_is_the_shift_length():
  x = np.random.default_rng(0).normal(size=(300, 2)) * 5
  assert metrics.wasserstein1(x, x + np.array([3.0, -4.0])) == pytest.approx(5.0, abs=1e-9)


def test_w1_matches_brute_force_over_permutations():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) + 1.0
  cost = np.linalg.norm(x[:, None] - y[None], axis=-1)
  brute = min(cost[range(6), list(p)].mean() for p in itertools.permutations(range(6)))
  assert metrics.wasserstein1(x, y) == pytest.approx(brute, abs=1e-12)


def test_w1_many_on_threads_equals_serial():
  rng = np.random.default_rng(2)
  pairs = [(rng.normal(size=(64, 2)), rng.normal(size=(64, 2)) * 2) for _ in range(5)]
  done = []
  threaded = metrics.wasserstein1_many(pairs, num_threads=2, on_done=done.append)
  assert threaded == [metrics.wasserstein1(x, y) for x, y in pairs]
  assert done == list(range(5))


# ---------------------------------------------------------------- precision / recall


def _brute_force_precision_recall(real, fake, k):
  def radius(points, i):  # k-th nearest other point.
    d = sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)
    return d[k - 1]

  real_r = [radius(real, i) for i in range(len(real))]
  fake_r = [radius(fake, j) for j in range(len(fake))]
  precision = np.mean([any(np.linalg.norm(f - real[i]) < real_r[i] for i in range(len(real)))
                       for f in fake])
  recall = np.mean([any(np.linalg.norm(r - fake[j]) < fake_r[j] for j in range(len(fake)))
                    for r in real])
  return precision, recall


def test_precision_recall_matches_brute_force_loop():
  rng = np.random.default_rng(3)
  real = rng.normal(size=(40, 2))
  fake = rng.normal(size=(30, 2)) * 0.5 + np.array([2.5, 0.0])
  precision, recall = jax.jit(metrics.precision_recall, static_argnums=2)(
      jnp.asarray(real), jnp.asarray(fake), 5)
  expected = _brute_force_precision_recall(real.astype(np.float32), fake.astype(np.float32), 5)
  assert (float(precision), float(recall)) == pytest.approx(expected)
  assert 0 < float(precision) < 1 and 0 < float(recall) < 1  # A non-trivial case.


# --------------------------------------------------------- gradient-field similarity


CENTRES = jnp.asarray([[20.0, 0.0], [0.0, 20.0], [-20.0, 0.0]])


def test_gradient_similarity_of_a_discriminator_pulling_to_the_nearest_centre():
  # D(x) = -min_c |x - c|^2: the generator's descent direction points at the nearest centre.
  def logit_fn(x):
    return -jnp.min(metrics.pairwise_sq_distances(x, CENTRES), axis=1)

  points = jax.random.normal(jax.random.key(0), (100, 2)) * 8
  descent = metrics.discriminator_gradient_similarity(logit_fn, points, CENTRES, "descent")
  loss_grad = metrics.discriminator_gradient_similarity(logit_fn, points, CENTRES,
                                                        "loss_gradient")
  assert float(descent) == pytest.approx(1.0, abs=1e-5)
  assert float(loss_grad) == pytest.approx(-1.0, abs=1e-5)


def test_gradient_similarity_of_a_linear_discriminator():
  # D(x) = w.x: descent direction is +w everywhere (softplus' > 0), so the similarity is
  # the mean cosine between w and the golden directions. (w is small: with |D| >~ 90 the
  # float32 gradient underflows to 0 and the point would be dropped.)
  w = jnp.asarray([0.01, 0.02])
  points = jax.random.normal(jax.random.key(1), (50, 2)) * 10
  golden = np.asarray(metrics.nearest_centre_directions(points, CENTRES))
  expected = np.mean(golden @ np.asarray(w) / np.linalg.norm(golden, axis=1) / np.linalg.norm(w))
  sim = metrics.discriminator_gradient_similarity(lambda x: x @ w, points, CENTRES)
  assert float(sim) == pytest.approx(expected, abs=1e-5)


def test_gradient_similarity_drops_points_without_gradient():
  vectors = jnp.asarray([[1.0, 0.0], [0.0, 0.0]])
  points = jnp.asarray([[10.0, 0.0], [0.0, 10.0]])
  assert float(metrics.gradient_field_similarity(vectors, points, CENTRES)) == pytest.approx(1.0)
  assert np.isnan(float(metrics.gradient_field_similarity(
      jnp.zeros((2, 2)), points, CENTRES)))


def test_w1_table_solves_each_step_and_run_and_reduces_them():
  rng = np.random.default_rng(4)
  fakes = {step: rng.normal(size=(3, 16, 2)) for step in (30, 60)}
  reals = {step: rng.normal(size=(3, 16, 2)) + step / 30 for step in (30, 60)}
  table = metrics.w1_table(fakes, reals, num_threads=2)
  for step in (30, 60):
    np.testing.assert_array_equal(
        table[step], [metrics.wasserstein1(fakes[step][r], reals[step][r]) for r in range(3)])
  np.testing.assert_array_equal(metrics.reduce_w1(table, "final"), table[60])
  np.testing.assert_array_equal(metrics.reduce_w1(table, "min"),
                                np.minimum(table[30], table[60]))
  with pytest.raises(ValueError, match="w1_reduce"):
    metrics.reduce_w1(table, "mean")


def test_pearson():
  assert metrics.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(np.corrcoef([1, 2, 3],
                                                                            [2, 4, 7])[0, 1])
  assert np.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))


# ----------------------------------------------------------------------- the study


def test_config_follows_the_paper():
  config = toy2d_config.get_config()
  assert config.task == "toy2d"
  assert (config.pretrain_steps, config.finetune_steps, config.batch_size, config.d_steps) == (
      5000, 1000, 64, 4)
  assert toy2d.checkpoint_interval(config) == 50 and config.dissection.num_checkpoints == 100
  config.pretrain_steps = 500  # Checkpoints follow the pretraining length unless set.
  assert toy2d.checkpoint_interval(config) == 5
  assert (config.lr, config.b1, config.b2, config.ema_decay) == (2e-4, 0.5, 0.999, 0.99)
  assert config.w1_num_points == 2048 and config.dissection.k == 5
  with pytest.raises(ValueError):
    toy2d_config.get_config("nope")


def test_distributions():
  dists = toy2d_gan.distributions_from_config(toy2d_config.get_config())
  key = jax.random.key(0)
  target = np.asarray(dists["target"].sample(key, 4000))
  centres = np.asarray(dists["target"].centres())
  nearest = np.linalg.norm(target[:, None] - centres[None], axis=-1).min(axis=1)
  assert np.all(nearest < 0.25 * 6) and np.linalg.norm(centres, axis=1) == pytest.approx(20.0)
  ring = np.asarray(dists["source_i"].sample(key, 4000))
  assert np.linalg.norm(ring, axis=1).std() == pytest.approx(4.0, rel=0.1)
  source_ii = np.asarray(dists["source_ii"].sample(key, 4000))
  modes = np.linalg.norm(source_ii[:, None] - centres[None], axis=-1).argmin(axis=1)
  assert set(modes.tolist()) == {0, 1, 2}


def test_vmap_over_runs_equals_a_single_run():
  config = toy2d_config.get_config("quick")
  spec = toy2d_gan.gan_spec_from_config(config)
  dists = toy2d_gan.distributions_from_config(config)
  datas = (dists["source_i"], dists["source_ii"])
  snapshots = [toy2d_gan.init_snapshot(jax.random.key(i), spec) for i in range(2)]
  states = jax.vmap(lambda s: toy2d_gan.state_from_snapshot(s, spec))(
      toy2d_gan.stack(snapshots))
  keys = toy2d_gan.run_keys(jax.random.key(7), 2)
  batched, _ = toy2d_gan.train_chunk_many(states, keys, jnp.arange(2), spec=spec,
                                          datas=datas, num_steps=config.chunk_steps)
  single, _ = toy2d_gan.train_chunk(toy2d_gan.state_from_snapshot(snapshots[1], spec),
                                    keys[1], jnp.asarray(1), spec=spec, datas=datas,
                                    num_steps=config.chunk_steps)
  assert int(single.step) == config.chunk_steps
  # Batched and single matmuls round differently, and Adam amplifies that in tiny
  # gradients: equal up to ~1e-4 after 20 steps, whereas another run differs by ~1e-1.
  jax.tree.map(lambda b, s: np.testing.assert_allclose(b[1], s, rtol=1e-3, atol=3e-4),
               batched, single)
  assert not np.allclose(batched.g_params["Dense_0"]["kernel"][0],
                         single.g_params["Dense_0"]["kernel"], atol=1e-2)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("toy2d_quick")
  return workdir, toy2d.run(toy2d_config.get_config("quick"), str(workdir))


def test_json_of_the_study_has_null_for_nan_at_any_depth():
  result = {"pearson": float("nan"), "w1": {"random": np.float64(np.inf), "ok": 1.5},
            "series": (0.25, [float("-inf"), 2]), "name": "toy2d", "flag": True}
  text = json.dumps(writers.json_safe(result), allow_nan=False)
  assert json.loads(text) == {"pearson": None, "w1": {"random": None, "ok": 1.5},
                              "series": [0.25, [None, 2]], "name": "toy2d", "flag": True}


def test_quick_run_writes_json_and_figures(quick_run):
  workdir, result = quick_run
  with open(workdir / toy2d.JSON_NAME) as f:
    written = json.load(f)
  assert set(written["w1"]) == {"source_i", "source_ii", "random"}
  assert all(np.isfinite(v) and v > 0 for v in written["w1"].values())
  for key in ("pearson_recall_w1", "pearson_gradsim_w1", "pearson_gradsim_loss_gradient_w1",
              "pearson_recall_w1_min", "w1_ema", "dissection"):
    assert key in written
  # Constant series (the quick run's recall may all be 0) give null, not NaN.
  assert written["pearson_recall_w1"] is None or -1 <= written["pearson_recall_w1"] <= 1
  config = toy2d_config.get_config("quick")
  assert len(written["dissection"]["w1_final"]) == config.dissection.num_checkpoints
  assert written["dissection"]["gradsim_loss_gradient"] == pytest.approx(
      [-v for v in written["dissection"]["gradsim_descent"]])
  assert (workdir / toy2d.SAMPLES_NAME).exists()
  for name in (toy2d.FIGURE2_NAME, toy2d.FIGURE3_NAME):
    assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_run_is_deterministic(quick_run, tmp_path):
  _, first = quick_run
  second = toy2d.run(toy2d_config.get_config("quick"), str(tmp_path))
  for key in ("w1", "w1_ema", "pearson_recall_w1", "pearson_gradsim_w1", "dissection"):
    np.testing.assert_equal(second[key], first[key])
