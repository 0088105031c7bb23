"""MineGAN (gantransfer_jax.minegan): a miner before a pretrained G, in two stages.

A tiny StyleGAN2 (ps_pretrain 'tiny', 16 x 16) is pretrained once; the `minegan`
preset finetunes it for a few steps with `minegan.stage1_steps=2`.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from gantransfer_jax import builder
from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax import minegan
from gantransfer_jax import parallel
from gantransfer_jax import sample
from gantransfer_jax import train
from gantransfer_jax import validation

STAGE1_STEPS = 2


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain")
  config = ps_pretrain.get_config("tiny")
  config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2)
  config.loss.update(pl_weight=0.0, style_mixing_prob=0.0)
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope="module")
def target_npz(tmp_path_factory):
  path = tmp_path_factory.mktemp("target") / "faces.npz"
  rng = np.random.default_rng(0)
  np.savez(path, images=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
  return str(path)


def minegan_config(pretrained, target_npz, **overrides):
  config = finetune.get_config("minegan,quick")
  config.init_checkpoint = pretrained
  config.data.update(source=f"npz:{target_npz}", num_images=10)
  config.update(total_steps=3, log_every=1, sample_every=3, checkpoint_every=1, batch_size=8)
  config.loss.update(pl_weight=0.0, r1_interval=1)
  config.minegan.stage1_steps = STAGE1_STEPS
  config.update_from_flattened_dict(overrides)
  return config


def numpy_miner(miner_params, z):
  """M(z) = z + fc1(leaky_relu(fc0(z), 0.2)), written out in numpy."""
  fc0, fc1 = miner_params["fc0"], miner_params["fc1"]
  h = z @ np.asarray(fc0["kernel"]) + np.asarray(fc0["bias"])
  h = np.where(h > 0, h, 0.2 * h)
  return z + h @ np.asarray(fc1["kernel"]) + np.asarray(fc1["bias"])


def max_change(after, before) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                          after, before)))


@pytest.fixture(scope="module")
def runs(pretrained, target_npz, tmp_path_factory):
  """One run stopped after step 1 (in stage 1) and resumed to step 3 (stage 2 from step
  3 on), and the same run uninterrupted."""
  root = tmp_path_factory.mktemp("minegan")
  resumed_dir, straight_dir = str(root / "resumed"), str(root / "straight")
  after_step1 = jax.device_get(train.train_and_evaluate(
      minegan_config(pretrained, target_npz, total_steps=1), resumed_dir))
  resumed = jax.device_get(train.train_and_evaluate(
      minegan_config(pretrained, target_npz), resumed_dir))
  straight = jax.device_get(train.train_and_evaluate(
      minegan_config(pretrained, target_npz), straight_dir))
  return {"after_step1": after_step1, "resumed": resumed, "straight": straight,
          "workdir": straight_dir}


def test_stage1_freezes_g_and_trains_the_miner_and_d(runs, pretrained):
  _, source = checkpoints.restore_params(pretrained)
  state = runs["after_step1"]
  g_own = {k: v for k, v in state.g_params.items() if k != minegan.MINER}
  jax.tree.map(np.testing.assert_array_equal, g_own, source["generator"])
  assert max_change(state.d_params, source["discriminator"]) > 0
  # The miner starts as the identity (last layer zero) and its last layer has moved.
  assert np.abs(state.g_params[minegan.MINER]["fc1"]["kernel"]).max() > 0
  # G's Adam moments have not seen stage 1's gradients.
  adam = [s for s in jax.tree.leaves(state.g_opt_state,
                                     is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  moments = {}
  for s in adam:
    for path, value in traverse_util.flatten_dict(s.mu).items():
      if not isinstance(value, optax.MaskedNode):
        moments[path] = np.asarray(value)
  g_moments = {p: v for p, v in moments.items() if p[0] != minegan.MINER}
  miner_moments = {p: v for p, v in moments.items() if p[0] == minegan.MINER}
  assert g_moments and miner_moments
  assert all(not v.any() for v in g_moments.values())
  assert any(v.any() for v in miner_moments.values())


def test_stage2_trains_miner_and_g(runs, pretrained):
  _, source = checkpoints.restore_params(pretrained)
  state, step1 = runs["straight"], runs["after_step1"]
  assert int(state.step) == 3
  g_own = {k: v for k, v in state.g_params.items() if k != minegan.MINER}
  assert max_change(g_own, source["generator"]) > 0
  assert max_change(state.g_params[minegan.MINER], step1.g_params[minegan.MINER]) > 0


def test_resume_mid_stage1_is_bit_exact(runs):
  jax.tree.map(np.testing.assert_array_equal, runs["resumed"], runs["straight"])


def test_sample_command_goes_through_the_miner(runs, tmp_path):
  workdir = runs["workdir"]
  model = sample.Model(workdir)
  assert isinstance(model.gan, minegan.MineGan)
  config, params = checkpoints.restore_params(workdir)
  miner = params["generator_ema"][minegan.MINER]
  g_own = {k: v for k, v in params["generator_ema"].items() if k != minegan.MINER}
  del config["minegan"]
  base = builder.build_gan(config)
  assert not isinstance(base, minegan.MineGan)

  key = jax.random.key(3)
  z = np.asarray(jax.random.normal(jax.random.key(4), (4, base.z_dim)))
  mined = numpy_miner(miner, z)
  assert np.abs(mined - z).max() > 1e-6  # The trained miner is not the identity.
  got = np.asarray(model.generate(jnp.asarray(z), None, key))
  expected = np.asarray(base.sample(g_own, params["generator_state"], jnp.asarray(mined),
                                    None, key))
  np.testing.assert_allclose(got, expected, atol=1e-5)
  unmined = np.asarray(base.sample(g_own, params["generator_state"], jnp.asarray(z), None, key))
  assert np.abs(got - unmined).max() > 1e-4

  out = str(tmp_path / "grids")
  paths = sample.write_samples(workdir, out, num=4, mix=True)
  assert os.path.exists(paths["samples"]) and os.path.exists(paths["mix"])


def test_transfer_starts_from_the_source_samples(pretrained, target_npz):
  """The fresh miner is the identity: step 0 samples the pretrained G."""
  config = checkpoints.inherit_model_config(minegan_config(pretrained, target_npz),
                                            pretrained)
  mesh = parallel.create_mesh(jax.devices()[:1])
  setup = train.build(config, mesh)
  loaded = jax.device_get(train.load_init_params(setup.state, pretrained, setup, mesh))
  _, source = checkpoints.restore_params(pretrained)
  z = jax.random.normal(jax.random.key(0), (3, setup.gan.z_dim))
  key = jax.random.key(1)
  for field, name in (("g_params", "generator"), ("g_ema_params", "generator_ema")):
    g_own = {k: v for k, v in getattr(loaded, field).items() if k != minegan.MINER}
    jax.tree.map(np.testing.assert_array_equal, g_own, source[name])
  got = setup.gan.sample(loaded.g_ema_params, loaded.g_state, z, None, key)
  expected = setup.gan.base.sample(g_own, loaded.g_state, z, None, key)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("overrides,message", [
    ({"minegan.stage1_steps": -1}, "minegan.stage1_steps must be an integer >= 0"),
    ({"minegan.num_layers": 0}, "minegan.num_layers must be an integer >= 1"),
    ({"loss.style_mixing_prob": 0.9}, "set --config.loss.style_mixing_prob=0"),
])
def test_a_bad_minegan_config_is_a_config_error(pretrained, target_npz, tmp_path,
                                                overrides, message):
  config = checkpoints.inherit_model_config(
      minegan_config(pretrained, target_npz, **overrides), pretrained)
  with pytest.raises(validation.ConfigError) as error:
    validation.validate_train_config(config, str(tmp_path))
  problems = str(error.value).splitlines()[1:]
  assert len(problems) == 1 and message in problems[0]


def test_minegan_refuses_conditional_models(tmp_path):
  config = finetune.get_config("dip,quick")
  config.data.source = "orl_faces"
  config.minegan = finetune.get_config("minegan,quick").minegan
  with pytest.raises(validation.ConfigError, match="MineGAN needs an unconditional model"):
    validation.validate_train_config(config, str(tmp_path))


def test_the_preset():
  config = finetune.get_config("minegan,quick")
  assert config.init == "checkpoint" and config.init_model == "stylegan2"
  assert config.minegan.stage1_steps == config.total_steps // 4 == 250
  assert finetune.get_config("minegan").minegan.stage1_steps == 25_000 // 4
  assert finetune.get_config("minegan").loss.style_mixing_prob == 0.0


def test_evaluation_scores_the_mined_samples(runs, tmp_path):
  """`evaluate` and the periodic evaluation build their model from the checkpoint's
  config: the images they score are G(M(z)), here as the features they would embed."""
  from gantransfer_jax import evaluation  # pylint: disable=g-import-not-at-top

  config, params = checkpoints.restore_params(runs["workdir"])
  mesh = parallel.create_mesh(jax.devices()[:1])
  images_as_features = lambda images: np.asarray(images).reshape(len(images), -1)

  def features(config, g_params):
    evaluator = evaluation.Evaluator(
        config, builder.build_gan(config), mesh, num_images=4,
        feature_fn=images_as_features, cache_dir=str(tmp_path), stats_cache_dir=str(tmp_path))
    return evaluator.generated_features(g_params, params["generator_state"])

  g_ema = params["generator_ema"]
  identity = jax.tree.map(np.zeros_like, g_ema[minegan.MINER])
  mined = features(config, g_ema)
  with_identity = features(config, {**g_ema, minegan.MINER: identity})
  base_config = checkpoints.restore_raw_config(runs["workdir"])
  del base_config["minegan"]
  g_own = {k: v for k, v in g_ema.items() if k != minegan.MINER}
  np.testing.assert_allclose(with_identity, features(base_config, g_own), atol=1e-5)
  assert np.abs(mined - with_identity).max() > 1e-4


def test_resnet_gan_stages_through_the_optimizer():
  """The ResNet GAN behind a miner: G's own params get zero updates for stage1_steps
  optimizer steps, the miner trains from the first."""
  config = ps_pretrain.get_config("resnet,tiny")
  config.minegan = finetune.get_config("minegan,quick").minegan
  config.minegan.stage1_steps = 1
  gan = builder.build_gan(config)
  assert isinstance(gan, minegan.MineGan) and not hasattr(gan, "sample_mixed")
  g_vars, _ = gan.init(jax.random.key(0))
  params = g_vars["params"]
  tx = gan.generator_optimizer(optax.adam(1e-2))
  opt_state = tx.init(params)
  z = jax.random.normal(jax.random.key(1), (4, gan.z_dim))

  @jax.jit
  def update(params, opt_state):
    loss = lambda p: jnp.mean(gan.generate(p, {}, z, None, jax.random.key(2))[0] ** 2)
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  g_own = lambda p: {k: v for k, v in p.items() if k != minegan.MINER}
  step1, opt_state = update(params, opt_state)
  jax.tree.map(np.testing.assert_array_equal, g_own(step1), g_own(params))
  assert max_change(step1[minegan.MINER], params[minegan.MINER]) > 0
  step2, _ = update(step1, opt_state)
  assert max_change(g_own(step2), g_own(step1)) > 0
  # Sampling maps z through the miner: G(M(z)).
  miner = jax.device_get(step2[minegan.MINER])
  np.testing.assert_allclose(
      np.asarray(gan.sample(step2, {}, z, None, jax.random.key(3))),
      np.asarray(gan.base.sample(g_own(step2), {}, jnp.asarray(numpy_miner(miner, np.asarray(z))),
                                 None, jax.random.key(3))), atol=1e-5)


def test_the_sweep_gives_minegan_the_init_checkpoint():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "launch", "sweep.py")
  spec = importlib.util.spec_from_file_location("_minegan_test_sweep", path)
  sweep = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = sweep  # Dataclasses look their module up there.
  spec.loader.exec_module(sweep)
  command = sweep.build_command(sweep.Run("minegan", "orl_faces", 10, 0), "root",
                                ["--config.init_checkpoint=workdirs/ps_quick"], quick=True)
  assert any(a.endswith("finetune.py:minegan,quick") for a in command)
  assert "--config.init_checkpoint=workdirs/ps_quick" in command
