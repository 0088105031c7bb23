"""AdaFM finetuning end to end (paper 002): GmDn freezing, modulation warm-up, presets.

A tiny ResNet GAN is pretrained once (ps_pretrain 'resnet,tiny', 16 x 16: three G groups
of widths 16, 8, 4) and every AdaFM-family preset finetunes it on ORL faces.
"""

import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from gantransfer_jax import builder
from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax import freezing
from gantransfer_jax import sample
from gantransfer_jax import train
from gantransfer_jax import writers
from gantransfer_jax.models import resnet_gan
from gantransfer_jax.models import smallhead
from tests.weights_markers import needs_inception


@pytest.fixture(scope="module")
def resnet_pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("resnet_pretrain")
  config = ps_pretrain.get_config("resnet,tiny")
  config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2)
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


def adafm_config(method, pretrained, **overrides):
  config = finetune.get_config(f"{method},quick")
  config.init_checkpoint = pretrained
  config.data.update(source="orl_faces", num_images=16)
  config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2, batch_size=8)
  config.adafm.warmup_steps = 2
  config.update_from_flattened_dict(overrides)
  return config


def num_scalars(tree) -> int:
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


def test_adafm_freezes_the_general_part_and_warms_up_the_modulation(resnet_pretrained,
                                                                      tmp_path):
  workdir = str(tmp_path / "adafm")
  state = jax.device_get(train.train_and_evaluate(adafm_config("adafm", resnet_pretrained),
                                                  workdir))
  _, pretrained = checkpoints.restore_params(resnet_pretrained)
  general = smallhead.general_part(pretrained["generator_ema"], 16, 2)
  assert set(general) == {"resnet_1", "resnet_2", "conv_img"}

  # G's general part: bit-identical to the pretrained EMA G's, in G and in G_ema.
  for params in (state.g_params, state.g_ema_params):
    jax.tree.map(np.testing.assert_array_equal, params["general"], general)
  # Warm-up (2 steps): the modulation is still the identity; the head trained.
  modulation = state.g_params["modulation"]
  for leaf_path, value in traverse_util.flatten_dict(modulation).items():
    np.testing.assert_array_equal(value, 1.0 if leaf_path[-1] == "gamma" else 0.0)
  fresh_head = builder.build_gan(checkpoints.restore_raw_config(workdir)).init(
      jax.random.key(0))[0]["params"]["head"]
  assert jax.tree.structure(fresh_head) == jax.tree.structure(state.g_params["head"])
  # D2: the input conv and resnet_0 frozen, the rest trained.
  d_before = pretrained["discriminator"]
  for name in ("conv_img", "resnet_0"):
    jax.tree.map(np.testing.assert_array_equal, state.d_params[name], d_before[name])
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state.d_params["fc"], d_before["fc"])
  assert max(jax.tree.leaves(moved)) > 0

  # Optimizer state holds Adam's two moments for head + modulation only.
  trainable = num_scalars(state.g_params["head"]) + num_scalars(modulation)
  assert num_scalars(state.g_opt_state) < 2 * trainable + 16
  assert num_scalars(state.g_opt_state) >= 2 * trainable
  d_trainable, _ = freezing.split(state.d_params, [("conv_img",), ("resnet_0",)])
  assert 2 * num_scalars(d_trainable) <= num_scalars(state.d_opt_state) < (
      2 * num_scalars(d_trainable) + 16)

  # After the warm-up the modulation trains (the run resumes from its checkpoint).
  resumed = jax.device_get(train.train_and_evaluate(
      adafm_config("adafm", resnet_pretrained, total_steps=4), workdir))
  assert int(resumed.step) == 4
  changed = jax.tree.map(lambda a, b: np.abs(a - b).max(), resumed.g_params["modulation"],
                         modulation)
  assert min(jax.tree.leaves(changed)) > 0
  jax.tree.map(np.testing.assert_array_equal, resumed.g_params["general"], general)

  # The sample command writes a style-mixing grid for the SmallHead.
  paths = sample.write_samples(workdir, str(tmp_path / "samples"), num=4, mix=True)
  assert set(paths) == {"samples", "mix"}
  assert all(os.path.getsize(path) > 0 for path in paths.values())


def _modulated_convs(resolution, nf, general_g):
  """(C_in, C_out) of every residual conv of G's `general_g` groups nearest the image."""
  widths = resnet_gan.generator_widths(resolution, nf)
  convs = []
  for group in range(len(widths) - general_g, len(widths)):
    c_in, c_out = widths[group - 1], widths[group]
    hidden = min(c_in, c_out)
    convs += [(c_in, hidden), (hidden, c_out), (c_out, c_out), (c_out, c_out)]
  return convs


@pytest.mark.parametrize("method", ["adafm", "fs", "smallhead"])
def test_trainable_parameters_match_the_formula(method, resnet_pretrained):
  config = checkpoints.inherit_model_config(adafm_config(method, resnet_pretrained),
                                            resnet_pretrained)
  gan = builder.build_gan(config)
  params = jax.eval_shape(gan.init, jax.random.key(0))[0]["params"]
  trainable, frozen = gan.trainable("generator", params)
  convs = _modulated_convs(16, 4, general_g=2)
  expected_modulation = {"adafm": sum(2 * c_in * c_out for c_in, c_out in convs),
                         "fs": sum(2 * c_out for _, c_out in convs), "smallhead": 0}[method]
  assert num_scalars(trainable.get("modulation", {})) == expected_modulation
  assert num_scalars(trainable) == num_scalars(params["head"]) + expected_modulation
  assert set(frozen) == {"general"}


def test_gphead_freezes_g_groups_of_the_original_generator(resnet_pretrained, tmp_path):
  config = adafm_config("gphead", resnet_pretrained)
  state = jax.device_get(train.train_and_evaluate(config, str(tmp_path / "gphead")))
  _, pretrained = checkpoints.restore_params(resnet_pretrained)
  for name in ("resnet_1", "resnet_2", "conv_img"):
    jax.tree.map(np.testing.assert_array_equal, state.g_params[name],
                 pretrained["generator"][name])
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state.g_params["fc"],
                       pretrained["generator"]["fc"])
  assert max(jax.tree.leaves(moved)) > 0


def test_adafm_needs_a_resnet_checkpoint_and_valid_kind(resnet_pretrained, tmp_path):
  from gantransfer_jax import validation
  config = finetune.get_config("adafm,quick")
  with pytest.raises(validation.ConfigError, match="init_checkpoint"):
    train.train_and_evaluate(config, str(tmp_path / "no_checkpoint"))
  config = adafm_config("adafm", resnet_pretrained)
  config.adafm.kind = "lowrank"
  with pytest.raises(validation.ConfigError, match="adafm.kind"):
    train.train_and_evaluate(config, str(tmp_path / "bad_kind"))


@needs_inception
@pytest.mark.slow
def test_quick_fs_finetune_on_orl_faces_logs_fid(resnet_pretrained, tmp_path):
  config = adafm_config("fs", resnet_pretrained, eval_every=2, eval_num_images=8)
  workdir = str(tmp_path / "fs")
  train.train_and_evaluate(config, workdir)
  evals = [r for r in writers.read_metrics(workdir) if "eval/fid" in r]
  assert [r["step"] for r in evals] == [2]
  assert np.isfinite(evals[0]["eval/fid"]) and evals[0]["eval/fid"] > 0
