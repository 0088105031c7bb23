"""Conditional SNGAN training: DIP (paper 003, Algorithm 1) and the CIFAR track (paper 001).

Tiny 16 x 16 SNGANs (`ps_pretrain` 'sngan,tiny' / 'cifar,tiny' sizes) on ORL faces.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantransfer_jax import builder
from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax import losses
from gantransfer_jax import parallel
from gantransfer_jax import priors
from gantransfer_jax import sample
from gantransfer_jax import train
from gantransfer_jax import writers
from gantransfer_jax.data import sampler as sampler_lib
from tests.data.checkpoints_4192753 import write as pre_transform_checkpoints
from tests.weights_markers import needs_inception, needs_mobilenet


TINY_SNGAN = dict(z_dim=18, embedding_dim=8, g_width=4, d_width=4, g_multipliers=(2, 2, 1),
                  d_multipliers=(1, 2, 2))


def dip_config(method="dip", **overrides):
  config = finetune.get_config(f"{method},quick")
  config.resolution = 16
  config.sngan.update(TINY_SNGAN)
  config.data.update(source="orl_faces", num_images=16)
  config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2, batch_size=8)
  config.update_from_flattened_dict(overrides)
  return config


def test_hinge_and_wasserstein_losses_are_the_formulas():
  real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.5])
  np.testing.assert_allclose(losses.d_hinge_loss(real, fake),
                             np.mean([0, 0.5, 2.0]) + np.mean([0, 1.0, 2.5]), rtol=1e-6)
  np.testing.assert_allclose(losses.g_hinge_loss(fake), -np.mean([-2.0, 0.0, 1.5]))
  np.testing.assert_allclose(losses.gan_loss("wasserstein").discriminator(real, fake),
                             np.mean(fake) - np.mean(real), rtol=1e-6)
  with pytest.raises(ValueError, match="hinge"):
    losses.gan_loss("least_squares")


def test_several_d_steps_per_g_step_draw_fresh_batches(tmp_path):
  """With d_steps = k the step makes k D updates: D moves further than with one."""
  def d_change(d_steps):
    config = dip_config(**{"loss.d_steps": d_steps})
    config.dip.prior = ""  # Unconditional SNGAN: the baseline DIP is compared with.
    setup = train.build(config, parallel.create_mesh(jax.devices()[:1]),
                        data_cache_dir=str(tmp_path))
    before = jax.device_get(setup.state.d_params)
    state, metrics = setup.train_step(setup.state, setup.data, do_r1=False, do_pl=False)
    after = jax.device_get(state.d_params)
    assert np.isfinite(float(metrics["loss/d"]))
    return sum(float(np.abs(a - b).sum()) for a, b in
               zip(jax.tree.leaves(after), jax.tree.leaves(before)))

  assert d_change(4) > 1.5 * d_change(1)


@needs_mobilenet
def test_dip_trains_on_cached_priors_and_samples_every_way(tmp_path):
  config = dip_config()
  workdir = str(tmp_path / "dip")
  calls = []

  def counting_prior_fn(images):
    calls.append(len(images))
    return priors.load_prior("mobilenet_v2")(images)

  made = sampler_lib.make_sampler(config, cache_dir=str(tmp_path / "cache"),
                                  prior_fn=counting_prior_fn)
  assert made.data["priors"].shape == (16, priors.FEATURE_DIMS["mobilenet_v2"])
  batch = made.sample(made.data, jax.random.key(0), 4)
  assert batch["cond"].shape == (4, priors.FEATURE_DIMS["mobilenet_v2"])
  # Each sampled condition is the prior of the sampled image.
  rows = [int(np.argmin(np.abs(made.data["priors"] - c).sum(-1))) for c in batch["cond"]]
  np.testing.assert_allclose(batch["images"],
                             sampler_lib.uint8_to_float(made.data["images"][rows]), atol=1e-6)
  again = sampler_lib.make_sampler(config, cache_dir=str(tmp_path / "cache"),
                                   prior_fn=counting_prior_fn)
  np.testing.assert_array_equal(again.data["priors"], made.data["priors"])
  assert calls == [16]  # The second sampler read the cache.

  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  gan = builder.build_gan(config)
  assert gan.cond_dim == priors.FEATURE_DIMS["mobilenet_v2"]
  paths = sample.write_samples(workdir, str(tmp_path / "samples"), num=4,
                               edits=["cutmix", "cutout", "greyscale"], num_invert=2,
                               invert_steps=5)
  assert {"samples", "priors", "interpolation", "kmeans", "gmm", "edit_cutmix",
          "edit_cutout", "edit_greyscale", "inversion"} <= set(paths)
  with pytest.raises(ValueError, match="style-based"):
    sample.write_samples(workdir, str(tmp_path / "mix"), mix=True)


@needs_mobilenet
@needs_inception
@pytest.mark.slow
def test_quick_dip_diffaug_finetune_on_orl_faces_logs_fid(tmp_path):
  config = dip_config("dip_diffaug", eval_every=2, eval_num_images=8)
  workdir = str(tmp_path / "dip_diffaug")
  train.train_and_evaluate(config, workdir)
  evals = [r for r in writers.read_metrics(workdir) if "eval/fid" in r]
  assert len(evals) == 1 and np.isfinite(evals[0]["eval/fid"])


def test_dip_prior_on_synthetic_data_is_a_config_error(tmp_path):
  from gantransfer_jax import validation
  config = dip_config()
  config.data.source = "synth:primitives_ps"
  with pytest.raises(validation.ConfigError, match="real data source"):
    train.train_and_evaluate(config, str(tmp_path / "bad"))


def test_conditional_pretraining_respects_labels_and_transfers_to_new_classes(tmp_path):
  pretrain = ps_pretrain.get_config("cifar,tiny")
  pretrain.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2)
  workdir = str(tmp_path / "cifar_pretrain")
  train.train_and_evaluate(pretrain, workdir)

  # Random labels on synthetic images: uniform one-hot conditions.
  made = sampler_lib.make_sampler(pretrain)
  cond = np.asarray(made.sample_cond(made.data, jax.random.key(0), 2000))
  np.testing.assert_array_equal(cond.sum(-1), 1.0)
  assert np.all(np.abs(cond.mean(0) - 0.1) < 0.03)

  # One z, ten labels: ten different images.
  config, params = checkpoints.restore_params(workdir)
  gan = builder.build_gan(config)
  z = jnp.repeat(jax.random.normal(jax.random.key(1), (1, gan.z_dim)), 10, axis=0)
  images = np.asarray(gan.sample(params["generator_ema"], params["generator_state"], z,
                                 jnp.eye(10), jax.random.key(2)))
  differences = np.abs(images[:, None] - images[None]).max(axis=(2, 3, 4))
  assert differences[~np.eye(10, dtype=bool)].min() > 1e-4

  # Finetune on a labelled set with other classes: ORL's 40 people, a 10% per-class subset.
  finetuned = finetune.get_config("cifar,quick")
  finetuned.update(init_checkpoint=workdir, num_classes=40, total_steps=2, log_every=1,
                   sample_every=2, checkpoint_every=2, batch_size=8)
  finetuned.data.update(source="orl_faces", fraction=0.1)
  finetune_dir = str(tmp_path / "finetune")
  train.train_and_evaluate(finetuned, finetune_dir)
  saved, _ = checkpoints.restore_params(finetune_dir)
  assert saved.num_classes == 40
  # The start point: new condition embeddings, everything else from the pretrained model.
  mesh = parallel.create_mesh(jax.devices()[:1])
  setup = train.build(checkpoints.inherit_model_config(finetuned, workdir), mesh)
  start = jax.device_get(train.load_init_params(setup.state, workdir, setup, mesh))
  assert start.g_params["g_emb"]["kernel"].shape == (40, 8)
  np.testing.assert_array_equal(start.g_params["g_emb"]["kernel"],
                                jax.device_get(setup.state.g_params["g_emb"]["kernel"]))
  np.testing.assert_array_equal(start.g_params["linear"]["dense"]["kernel"],
                                params["generator"]["linear"]["dense"]["kernel"])


@pytest.mark.parametrize("run", sorted(pre_transform_checkpoints.RUNS))
def test_checkpoints_from_before_the_condition_transform_sample_as_they_did(run):
  # Written by 4192753, when the networks held G_emb and D_emb (see write.py): the
  # condition transform finds them where they were, and the samples and D's logits of
  # them are those that code computed.
  folder = os.path.dirname(pre_transform_checkpoints.__file__)
  samples, logits = pre_transform_checkpoints.outputs(os.path.join(folder, run))
  expected = np.load(os.path.join(folder, "expected.npz"))
  np.testing.assert_allclose(samples, expected[f"{run}/samples"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, expected[f"{run}/logits"], rtol=1e-5, atol=1e-5)
