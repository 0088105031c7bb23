"""Finetuning: init from a pretraining checkpoint, FreezeD, model-config inheritance."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import builder
from gantransfer_jax import checkpoints
from gantransfer_jax import freezing
from gantransfer_jax import parallel
from gantransfer_jax import train


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain")
  config = ps_pretrain.get_config("tiny")
  config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2)
  config.loss.pl_weight = 0.0  # One step variant to compile; path length is tested elsewhere.
  train.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture(scope="module")
def target_npz(tmp_path_factory):
  path = tmp_path_factory.mktemp("target") / "faces.npz"
  rng = np.random.default_rng(0)
  np.savez(path, images=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
  return path


def finetune_config(method, pretrained, target_npz, **overrides):
  config = finetune.get_config(method)
  config.init_checkpoint = str(pretrained)
  config.data.source = f"npz:{target_npz}"
  config.data.num_images = 10
  config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2, batch_size=8)
  config.loss.pl_weight = 0.0
  config.loss.r1_interval = 1
  config.update_from_flattened_dict(overrides)
  return config


def test_model_config_is_inherited_from_the_checkpoint(pretrained, target_npz):
  config = finetune_config("transfergan", pretrained, target_npz)
  assert config.resolution is None
  resolved = checkpoints.inherit_model_config(config, str(pretrained))
  saved = ps_pretrain.get_config("tiny")
  assert resolved.resolution == saved.resolution == 16
  assert resolved.stylegan2.channel_max == saved.stylegan2.channel_max


def test_mismatched_model_fails_naming_both_values(pretrained, target_npz):
  config = finetune_config("transfergan", pretrained, target_npz, resolution=32)
  with pytest.raises(ValueError, match="resolution: config has 32, checkpoint has 16"):
    checkpoints.inherit_model_config(config, str(pretrained))


def test_memory_and_precision_fields_may_differ_from_the_checkpoint(pretrained, target_npz):
  """They fix no parameter: a run pretrained in float32 may finetune in bfloat16 with remat."""
  overrides = {"stylegan2.mixed_precision": "bfloat16", "stylegan2.num_fp16_res": 1,
               "stylegan2.remat": "synthesis"}
  config = finetune_config("transfergan", pretrained, target_npz, **overrides)
  resolved = checkpoints.inherit_model_config(config, str(pretrained))
  for key, value in overrides.items():
    assert resolved[key.split(".")[0]][key.split(".")[1]] == value
  assert resolved.stylegan2.channel_max == ps_pretrain.get_config("tiny").stylegan2.channel_max


def test_init_checkpoint_really_loads_the_weights(pretrained, target_npz):
  config = checkpoints.inherit_model_config(
      finetune_config("transfergan", pretrained, target_npz), str(pretrained))
  mesh = parallel.create_mesh(jax.devices()[:1])
  setup = train.build(config, mesh)
  generator, fresh = setup.gan.generator, setup.state
  loaded = train.load_init_params(fresh, str(pretrained), setup, mesh)

  _, params = checkpoints.restore_params(str(pretrained))
  z = jax.random.normal(jax.random.key(1), (4, generator.z_dim))

  def ema_images(g_params, g_state):
    g_vars = jax.device_get({"params": g_params, **g_state})
    return np.asarray(generator.apply(g_vars, z, noise_mode="none"))

  expected = ema_images(params["generator_ema"], params["generator_state"])
  np.testing.assert_array_equal(ema_images(loaded.g_ema_params, loaded.g_state), expected)
  assert np.abs(ema_images(fresh.g_ema_params, fresh.g_state) - expected).max() > 1e-3
  assert int(loaded.step) == 0  # Finetuning counts its own steps.


def test_checkpoint_in_the_layout_before_model_states_still_transfers(
    pretrained, target_npz, tmp_path):
  """Checkpoints once kept only StyleGAN2's w_avg ('g_stats'), no noise maps, no D state."""
  saved_config, state, _ = checkpoints.restore_raw(str(pretrained))
  old = {name: value for name, value in state.items() if name not in ("g_state", "d_state")}
  old["g_stats"] = state["g_state"]["stats"]
  old_workdir = str(tmp_path / "old_layout")
  checkpoints.save_new_workdir(old_workdir, old, saved_config)

  config = checkpoints.inherit_model_config(
      finetune_config("transfergan", old_workdir, target_npz), old_workdir)
  mesh = parallel.create_mesh(jax.devices()[:1])
  setup = train.build(config, mesh)
  loaded = jax.device_get(train.load_init_params(setup.state, old_workdir, setup, mesh))
  np.testing.assert_array_equal(loaded.g_state["stats"]["w_avg"],
                                state["g_state"]["stats"]["w_avg"])
  # The constant noise maps the old layout lacks are the fresh model's.
  jax.tree.map(np.testing.assert_array_equal, loaded.g_state["noise_consts"],
               jax.device_get(setup.state.g_state["noise_consts"]))


def test_freezed_keeps_frozen_blocks_bit_identical_without_optimizer_state(
    pretrained, target_npz, tmp_path):
  config = finetune_config("freezed", pretrained, target_npz, freeze_d=1)
  state = train.train_and_evaluate(config, str(tmp_path / "freezed"))
  assert int(state.step) == 2

  _, before = checkpoints.restore_params(str(pretrained))
  after = jax.device_get(state.d_params)
  # FreezeD froze the highest-resolution block (b16 at 16 x 16) and trained the rest.
  jax.tree.map(np.testing.assert_array_equal, after["b16"], before["discriminator"]["b16"])
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), after["b4"],
                       before["discriminator"]["b4"])
  assert max(jax.tree.leaves(moved)) > 0

  # Adam moments exist for the trainable leaves only.
  trainable, frozen = freezing.split(after, [("b16",)])
  mu = next(s.mu for s in state.d_opt_state if isinstance(s, optax.ScaleByAdamState))
  assert set(traverse_util.flatten_dict(mu)) == set(traverse_util.flatten_dict(trainable))
  assert traverse_util.flatten_dict(frozen)


def test_fresh_layers_start_from_the_new_init_and_the_rest_from_the_checkpoint(
    pretrained, target_npz):
  config = checkpoints.inherit_model_config(
      finetune_config("transfergan", pretrained, target_npz,
                      transfer="fresh_d:b4,fresh_g:mapping+synthesis/b4"), str(pretrained))
  mesh = parallel.create_mesh(jax.devices()[:1])
  setup = train.build(config, mesh)
  fresh = jax.device_get(setup.state)
  loaded = jax.device_get(train.load_init_params(setup.state, str(pretrained), setup, mesh))
  _, source = checkpoints.restore_params(str(pretrained))

  def is_fresh(path):
    return path[:1] in (("b4",), ("mapping",)) or path[:2] == ("synthesis", "b4")

  cases = ((loaded.d_params, fresh.d_params, source["discriminator"]),
           (loaded.g_params, fresh.g_params, source["generator"]),
           (loaded.g_ema_params, fresh.g_params, source["generator_ema"]))
  for started, new, old in cases:
    new, old = traverse_util.flatten_dict(new), traverse_util.flatten_dict(old)
    for path, value in traverse_util.flatten_dict(started).items():
      np.testing.assert_array_equal(value, (new if is_fresh(path) else old)[path])
  # Fresh and pretrained differ there, so the test tells them apart.
  assert np.abs(fresh.d_params["b4"]["out"]["weight"]
                - source["discriminator"]["b4"]["out"]["weight"]).max() > 1e-3
  assert {path[0] for path in traverse_util.flatten_dict(loaded.d_params)} > {"b4"}


def test_fresh_layers_need_a_checkpoint_and_real_layer_names(pretrained, target_npz):
  config = checkpoints.inherit_model_config(
      finetune_config("transfergan", pretrained, target_npz, transfer="fresh_d:b4+b5"),
      str(pretrained))
  with pytest.raises(ValueError, match="transfer entry 'fresh_d': discriminator layer 'b5' "
                                       "matches no parameter; top-level names: b16, b4, b8"):
    builder.build_gan(config)
  config.transfer = "fresh_g:synthesis//b4"
  with pytest.raises(ValueError, match="'synthesis//b4' has an empty layer name"):
    builder.build_gan(config)
  config.transfer, config.init_checkpoint = "fresh_d:b4", None
  with pytest.raises(ValueError, match="init_checkpoint, which is not set"):
    builder.build_gan(config)


def test_freeze_d_out_of_range_is_a_config_error(pretrained, target_npz):
  config = checkpoints.inherit_model_config(
      finetune_config("freezed", pretrained, target_npz, freeze_d=3), str(pretrained))
  with pytest.raises(ValueError, match=r"freeze_d must be in \[0, 2\]"):
    builder.build_gan(config)


def test_transfergan_without_checkpoint_is_a_config_error(tmp_path):
  from gantransfer_jax import validation
  config = finetune.get_config("transfergan")
  with pytest.raises(validation.ConfigError, match="init_checkpoint"):
    validation.validate_train_config(config, str(tmp_path))


def test_scratch_preset_needs_no_checkpoint():
  config = finetune.get_config("scratch,quick")
  assert config.init_checkpoint is None and config.resolution == 32
  with pytest.raises(ValueError, match="unknown preset"):
    finetune.get_config("transfergan,slow")


def test_freezing_split_and_merge_round_trip():
  params = {"b16": {"conv0": {"w": jnp.ones(2)}}, "b8": {"w": jnp.zeros(3)}}
  trainable, frozen = freezing.split(params, [("b16",)])
  assert list(trainable) == ["b8"] and list(frozen) == ["b16"]
  jax.tree.map(np.testing.assert_array_equal, freezing.merge(trainable, frozen), params)
  with pytest.raises(ValueError, match="matches no parameter"):
    freezing.check_prefixes(params, [("b32",)])
