"""Checkpoint selection (paper 004, §4): the ranking rule and the task end to end.

Candidates are two tiny 16 x 16 checkpoints from different random draws; the target is a
small npz. A cheap pooled-pixel feature function stands in for Inception in most runs;
one smoke run uses the real Inception weights when they are cached.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantransfer_jax import builder
from configs import ps_pretrain
from configs import select as select_config
from gantransfer_jax import checkpoints
from gantransfer_jax.pretrained import assets
from gantransfer_jax.tasks import select

_NUM_TARGET = 12


def _write_checkpoint(workdir, config, seed):
  """A checkpoint in the training layout, its parameters drawn from N(0, 1)."""
  gan = builder.build_gan(config)
  generator, discriminator = gan.generator, gan.discriminator
  rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
  g_shapes = jax.eval_shape(generator.init, rngs, jnp.zeros((1, generator.z_dim)))
  d_shapes = jax.eval_shape(discriminator.init, rngs,
                            jnp.zeros((1, config.resolution, config.resolution, 3)))
  rng = np.random.default_rng(seed)
  draw = lambda tree: jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), tree)
  g_params = draw(g_shapes["params"])
  state = {"step": np.zeros((), np.int32), "g_params": g_params, "g_ema_params": g_params,
           "g_state": {"stats": {"w_avg": np.zeros(generator.w_dim, np.float32)}},
           "d_params": draw(d_shapes["params"]), "d_state": {}}
  checkpointer = checkpoints.Checkpointer(str(workdir))
  checkpointer.save(0, state, config)
  checkpointer.close()
  return str(workdir)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
  root = tmp_path_factory.mktemp("candidates")
  config = ps_pretrain.get_config("tiny")
  return [_write_checkpoint(root / name, config, seed) for seed, name in enumerate("ab")]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
  path = tmp_path_factory.mktemp("target") / "target.npz"
  images = np.random.default_rng(7).integers(0, 256, (_NUM_TARGET, 16, 16, 3), np.uint8)
  np.savez(path, images=images)
  return str(path)


def _pooled_pixels(images):
  """A deterministic stand-in for Inception: 4 x 4 average-pooled colours, [N, 48]."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images / 127.5 - 1
  n, h, w, c = images.shape
  pooled = images.reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4))
  return pooled.reshape(n, -1).astype(np.float32)


def _select_config(candidates, target, **overrides):
  config = select_config.get_config()
  config.candidates = ",".join(candidates)
  config.data.source = f"npz:{target}"
  config.num_samples = 8
  config.k = 3
  config.update(overrides)
  return config


def _expected_ranking(rows):
  """The documented rule at tolerance 0: by recall (higher first), then FID (lower)."""
  return [row["candidate"] for row in sorted(rows, key=lambda r: (-r["recall"], r["fid"]))]


# ---- The rule -----------------------------------------------------------------------------


def test_rank_by_recall_then_fid():
  scores = [{"recall": 0.5, "fid": 10.0}, {"recall": 0.8, "fid": 90.0},
            {"recall": 0.8, "fid": 40.0}, {"recall": 0.79, "fid": 5.0}]
  assert select.rank(scores) == [2, 1, 3, 0]
  # With a tolerance, 0.79 ties with 0.8 and its lower FID wins.
  assert select.rank(scores, recall_tolerance=0.02) == [3, 2, 1, 0]
  # Complete ties keep the listed order.
  assert select.rank([{"recall": 1.0, "fid": 3.0}] * 3) == [0, 1, 2]


def test_candidate_lists_are_checked():
  config = select_config.get_config()
  with pytest.raises(ValueError, match="set --config.candidates"):
    select.load_candidates(config)
  config.candidates = "a,b"
  config.source_data = "synth:primitives_ps"
  with pytest.raises(ValueError, match="1 entries for 2 candidates"):
    select.load_candidates(config)
  assert select.parse_list("synth:primitives_ps, ") == ["synth:primitives_ps", ""]


# ---- The task -----------------------------------------------------------------------------


def test_generated_regime_writes_a_consistent_selection(candidates, target, tmp_path, capsys):
  workdir = tmp_path / "select"
  report = select.run(_select_config(candidates, target), str(workdir),
                      feature_fn=_pooled_pixels)

  saved = json.loads((workdir / "selection.json").read_text())
  assert saved == json.loads(json.dumps(report))
  rows = saved["candidates"]
  assert [row["candidate"] for row in rows] == [os.path.abspath(c) for c in candidates]
  for row in rows:
    assert row["regime"] == "generated" and row["resolution"] == 16
    assert row["num_images"] == 8
    assert all(np.isfinite(row[key]) for key in ("fid", "kid", "precision", "recall"))
  assert saved["num_reference"] == _NUM_TARGET
  assert saved["ranking"] == _expected_ranking(rows)
  assert saved["recommended"] == saved["ranking"][0]
  assert sorted(row["rank"] for row in rows) == [1, 2]
  assert "recommended: " + saved["recommended"] in capsys.readouterr().out
  # Different inits generate different images.
  assert rows[0]["fid"] != rows[1]["fid"]


def test_source_regime_and_resizing(candidates, target, tmp_path):
  """Candidate b's source set is the target itself: recall 1 and FID 0, so it wins.

  Compared at 8 x 8, candidate a's 16 x 16 samples are resized (warning)."""
  config = _select_config(candidates, target, source_data=f",npz:{target}", resolution=8)
  with pytest.warns(UserWarning) as caught:
    report = select.run(config, str(tmp_path / "select"), feature_fn=_pooled_pixels)
  messages = " ".join(str(w.message) for w in caught)
  assert "different regimes" in messages and "resized to the target's 8px" in messages

  generated, source = report["candidates"]
  assert generated["regime"] == "generated" and generated["source_data"] is None
  assert source["regime"] == "source_data" and source["source_data"] == f"npz:{target}"
  assert source["num_images"] == _NUM_TARGET
  assert source["recall"] == 1.0 and source["precision"] == 1.0
  assert source["fid"] == pytest.approx(0.0, abs=1e-9)
  assert report["resolution"] == 8
  assert report["recommended"] == source["candidate"]


def test_real_inception_smoke(candidates, target, tmp_path):
  if not os.path.exists(assets.inception_weights_path()):
    pytest.skip(f"Inception weights missing: run `{assets.INCEPTION_FETCH_COMMAND}`")
  from gantransfer_jax.metrics import inception  # pylint: disable=g-import-not-at-top

  # Passed explicitly so that the statistics are cached in tmp_path, not the user's cache.
  # 4 target images and 4 samples: one small Inception batch shape, one compilation.
  config = _select_config(candidates, target, num_samples=4, num_reference=4, k=2)
  report = select.run(config, str(tmp_path / "select"), feature_fn=inception.load())
  rows = report["candidates"]
  assert len(rows) == 2
  for row in rows:
    assert row["fid"] > 0 and 0 <= row["recall"] <= 1 and 0 <= row["precision"] <= 1
  assert report["ranking"] == _expected_ranking(rows)


# ---- A trained checkpoint beats an untrained one --------------------------------------------


def _train_on(target_path, workdir, steps):
  """The real training loop on the npz target (tiny model, no augmentation)."""
  from gantransfer_jax import train  # pylint: disable=g-import-not-at-top

  config = ps_pretrain.get_config("tiny")
  config.update(total_steps=steps, log_every=steps, sample_every=steps, checkpoint_every=steps,
                augment="")
  config.loss.pl_weight = 0.0
  config.data.update(dict(source=f"npz:{target_path}", num_images=0, subset_seed=0,
                          hflip=False, image_key="image"))
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


@pytest.mark.slow
def test_a_checkpoint_trained_on_the_target_is_recommended_over_an_untrained_one(tmp_path):
  # A one-colour target (with a little noise): easy to learn in a few dozen steps.
  rng = np.random.default_rng(0)
  red = np.array([200, 40, 40], np.float64)
  images = np.clip(red + rng.normal(0, 8, (_NUM_TARGET, 16, 16, 3)), 0, 255).astype(np.uint8)
  target_path = tmp_path / "red.npz"
  np.savez(target_path, images=images)

  untrained = _train_on(target_path, tmp_path / "untrained", steps=1)
  trained = _train_on(target_path, tmp_path / "trained", steps=60)
  report = select.run(_select_config([untrained, trained], str(target_path)),
                      str(tmp_path / "select"), feature_fn=_pooled_pixels)

  rows = {os.path.basename(row["candidate"]): row for row in report["candidates"]}
  assert rows["trained"]["fid"] < rows["untrained"]["fid"]
  assert report["recommended"] == os.path.abspath(trained)
