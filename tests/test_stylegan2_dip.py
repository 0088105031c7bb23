"""DIP's StyleGAN2 variant (paper 003, appendix): G_emb MLP into the mapping network,
projection term in D, transfer from an unconditional checkpoint, inference and training.

Tiny 8-16 px StyleGAN2s; the end-to-end test finetunes a Primitives-PS 'tiny'
checkpoint on ORL faces with MobileNetV2 priors.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gantransfer_jax import builder
from configs import finetune
from configs import ps_pretrain
from gantransfer_jax import checkpoints
from gantransfer_jax import dip
from gantransfer_jax import sample
from gantransfer_jax import train
from gantransfer_jax import validation
from gantransfer_jax import writers
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.models import stylegan2
from tests.weights_markers import needs_inception, needs_mobilenet


COND_DIM, EMBEDDING_DIM, BATCH = 6, 8, 4
G, D = gan_lib.GENERATOR, gan_lib.DISCRIMINATOR


def _key(seed):
  return jax.random.key(seed)


class Tiny(NamedTuple):
  gan: gan_lib.Gan   # A conditional 8 x 8 StyleGAN2 behind its G_emb and D_emb.
  params: dict       # G's, G_emb included.
  state: dict
  d_params: dict     # D's, D_emb included.
  z: jax.Array
  cond: jax.Array

  @property
  def variables(self):
    """What G's network sees: its params without G_emb, and its state."""
    return gan_lib.variables(self.gan.network_params(G, self.params), self.state)

  def embed(self, cond):
    return self.gan.embed_condition(G, self.params, self.state, cond)


@pytest.fixture(scope="module")
def tiny():
  gan = builder.build_gan(_tiny_config(num_classes=COND_DIM))
  # Non-partitionable threefry compiles faster on CPU (see test_stylegan2).
  with jax.threefry_partitionable(False):
    g_vars, d_vars = jax.jit(gan.init)(_key(1))
  params, state = gan_lib.split_variables(g_vars)
  z = jax.random.normal(_key(3), (BATCH, gan.z_dim))
  cond = jax.random.uniform(_key(4), (BATCH, COND_DIM))
  return Tiny(gan, params, state, d_vars["params"], z, cond)


def _normalized(x):
  return x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + 1e-8)


def test_g_emb_is_a_two_layer_relu_mlp_feeding_the_mapping(tiny):
  generator, variables, z, cond = tiny.gan.generator, tiny.variables, tiny.z, tiny.cond
  params = tiny.params
  emb = params["g_emb"]
  # Equalized lr: weights scaled by 1/sqrt(fan-in); ReLU with StyleGAN2's sqrt(2) gain.
  hidden = np.sqrt(2) * np.maximum(
      cond @ emb["fc0"]["weight"] / np.sqrt(COND_DIM) + emb["fc0"]["bias"], 0)
  expected = hidden @ emb["fc1"]["weight"] / np.sqrt(EMBEDDING_DIM) + emb["fc1"]["bias"]
  embedding = tiny.embed(cond)
  np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-5)

  # fc0 of the mapping sees [normalised z, normalised G_emb(cond)].
  _, captured = generator.apply(variables, z, embedding, method="map",
                                capture_intermediates=True)
  fc0_out = captured["intermediates"]["mapping"]["fc0"]["__call__"][0]
  fc0 = params["mapping"]["fc0"]
  x = np.concatenate([_normalized(np.asarray(z)), _normalized(expected)], axis=-1)
  lr = generator.mapping_lr_multiplier
  pre = x @ fc0["weight"] * (lr / np.sqrt(x.shape[1])) + fc0["bias"] * lr
  np.testing.assert_allclose(fc0_out, np.sqrt(2) * np.where(pre > 0, pre, 0.2 * pre),
                             rtol=1e-4, atol=1e-4)
  assert fc0["weight"].shape == (generator.z_dim + EMBEDDING_DIM, generator.w_dim)


def test_embedding_inputs_equal_the_condition_and_act_per_w(tiny):
  gan, variables, z, cond = tiny.gan, tiny.variables, tiny.z, tiny.cond
  generator = gan.generator
  embedding = tiny.embed(cond)
  # The condition's samples are its embedding's.
  psi = gan.config.stylegan2.truncation_psi
  np.testing.assert_allclose(
      gan.sample(tiny.params, tiny.state, z, cond, _key(5)),
      generator.apply(variables, z, embedding, truncation_psi=psi, rngs={"noise": _key(5)}),
      rtol=1e-6)
  ws = generator.apply(variables, z, embedding, method="map")
  per_w = jnp.broadcast_to(embedding, (generator.num_blocks,) + embedding.shape)
  np.testing.assert_allclose(generator.apply(variables, z, embedding=per_w, method="map"),
                             ws, rtol=1e-5, atol=1e-6)
  # Another embedding for w 1 only changes w 1.
  other = per_w.at[1].set(tiny.embed(cond[::-1]))
  changed = np.asarray(generator.apply(variables, z, embedding=other, method="map"))
  moved = np.abs(changed - np.asarray(ws)).max(axis=(0, 2))
  assert moved[1] > 1e-3 and np.all(np.delete(moved, 1) < 1e-6), moved
  # The condition changes the images; wrong inputs are errors.
  images = gan.sample(tiny.params, tiny.state, z, cond, _key(5))
  flipped = gan.sample(tiny.params, tiny.state, z, cond[::-1], _key(5))
  assert np.abs(np.asarray(images) - np.asarray(flipped)).max() > 1e-3
  with pytest.raises(ValueError, match="expected cond of shape"):
    gan.sample(tiny.params, tiny.state, z, None, _key(5))
  with pytest.raises(ValueError, match="expected cond of shape"):
    gan.sample(tiny.params, tiny.state, z, cond[:, :3], _key(5))
  with pytest.raises(ValueError, match="takes the embedding"):
    generator.apply(variables, z, noise_mode="none")


def test_projection_discriminator_equals_the_formula(tiny):
  gan, d_params = tiny.gan, tiny.d_params
  images = jax.random.normal(_key(0), (BATCH, 8, 8, 3))
  cond = jax.random.uniform(_key(1), (BATCH, COND_DIM))
  logits, _ = gan.discriminate(d_params, {}, images, cond)
  _, captured = gan.discriminator.apply({"params": gan.network_params(D, d_params)}, images,
                                        gan.embed_condition(D, d_params, {}, cond),
                                        capture_intermediates=True)
  features = np.asarray(captured["intermediates"]["b4"]["fc"]["__call__"][0])
  params = d_params
  assert set(params["d_emb"]) == {"weight"}  # Linear, no bias (paper: a matrix).
  d_emb = cond @ params["d_emb"]["weight"] / np.sqrt(COND_DIM)
  channels = features.shape[1]
  projection = np.sum(d_emb * features, axis=-1) / np.sqrt(channels)
  # D_l(D_f(x)): the same network without the condition.
  unconditional = stylegan2.Discriminator(resolution=8, channel_base=128, channel_max=32,
                                          mbstd_group_size=2)
  rest = {"params": {k: v for k, v in params.items() if k != "d_emb"}}
  np.testing.assert_allclose(logits, unconditional.apply(rest, images) + projection,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="expected cond of shape"):
    gan.discriminate(d_params, {}, images, None)


def _tiny_config(**overrides):
  config = ps_pretrain.get_config("tiny")
  config.resolution = 8
  config.stylegan2.update(z_dim=16, w_dim=16, channel_base=128, channel_max=32,
                          embedding_dim=EMBEDDING_DIM, mbstd_group_size=2)
  config.loss.style_mixing_prob = 0.0
  config.update_from_flattened_dict(overrides)
  return config


def test_transfer_from_an_unconditional_source_starts_as_the_source():
  source = builder.build_gan(_tiny_config())
  target = builder.build_gan(_tiny_config(num_classes=COND_DIM))
  # The family's Gan behind its condition transforms (G_emb, D_emb).
  assert isinstance(target.base, gan_lib.StyleGAN2Gan) and target.cond_dim == COND_DIM
  g_vars, d_vars = jax.device_get(source.init(_key(0)))
  fresh_g, fresh_d = jax.device_get(target.init(_key(1)))
  g_params, g_state = gan_lib.split_variables(g_vars)
  d_params, d_state = gan_lib.split_variables(d_vars)
  pretrained = {"generator": g_params, "generator_ema": g_params, "generator_state": g_state,
                "discriminator": d_params, "discriminator_state": d_state}
  fresh = {"g_params": fresh_g["params"], "g_state": {}, "d_params": fresh_d["params"],
           "d_state": {}}
  loaded = target.transfer(fresh, pretrained)
  assert jax.tree.map(np.shape, loaded["g_params"]) == jax.tree.map(np.shape, fresh_g["params"])
  assert jax.tree.map(np.shape, loaded["d_params"]) == jax.tree.map(np.shape, fresh_d["params"])

  z = jax.random.normal(_key(2), (BATCH, source.z_dim))
  cond = jax.nn.one_hot(jnp.arange(BATCH) % COND_DIM, COND_DIM)
  before = source.sample(g_params, g_state, z, None, _key(3))
  after = target.sample(loaded["g_params"], g_state, z, cond, _key(3))
  np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(target.discriminate(loaded["d_params"], {}, before, cond)[0],
                             source.discriminate(d_params, {}, before, None)[0],
                             rtol=1e-5, atol=1e-5)

  # The new pathways learn from the first step: fc0's embedding rows and D_emb get
  # gradients (G_emb itself from the step after, once those rows are non-zero).
  def score(g, d):
    images, _ = target.generate(g, g_state, z, cond, _key(4))
    return jnp.sum(target.discriminate(d, {}, images, cond)[0])

  g_grads, d_grads = jax.grad(score, argnums=(0, 1))(loaded["g_params"], loaded["d_params"])
  emb_rows = np.asarray(g_grads["mapping"]["fc0"]["weight"][source.z_dim:])
  assert np.abs(emb_rows).max() > 0
  assert np.abs(np.asarray(d_grads["d_emb"]["weight"])).max() > 0

  # A conditional source cannot start an unconditional model.
  conditional = {"generator": fresh_g["params"], "generator_ema": fresh_g["params"],
                 "generator_state": {}, "discriminator": fresh_d["params"],
                 "discriminator_state": {}}
  with pytest.raises(ValueError, match="conditional StyleGAN2"):
    source.transfer({"g_params": g_params, "g_state": g_state, "d_params": d_params,
                     "d_state": d_state}, conditional)


def test_inference_tools_serve_the_stylegan2_generator(tiny, tmp_path):
  generator, variables = tiny.gan.generator, tiny.variables
  embed = dip.embedder(tiny.gan, tiny.params, tiny.state)
  priors = np.asarray(jax.random.uniform(_key(5), (10, COND_DIM)))
  embeddings = dip.embed_priors(embed, priors)
  assert embeddings.shape == (10, EMBEDDING_DIM)
  z = dip.sample_z(_key(6), BATCH, generator)
  # eq. 5's endpoints: lambda = 1 and 0 give the two priors' images.
  p1, p2 = priors[:BATCH], priors[BATCH:2 * BATCH]
  for lam, endpoint in ((1.0, p1), (0.0, p2)):
    mixed = dip.embed_priors(embed, dip.interpolate(p1, p2, lam))
    np.testing.assert_allclose(
        dip.generate(generator, variables, z, mixed),
        dip.generate(generator, variables, z, dip.embed_priors(embed, endpoint)),
        rtol=1e-5, atol=1e-5)

  query = dip.generate(generator, variables, dip.sample_z(_key(7), BATCH, generator),
                       embeddings[:BATCH])
  z_fit, per_w, errors = dip.invert(generator, variables, query, embeddings[:BATCH], _key(8),
                                    steps=40)
  assert per_w.shape == (generator.num_ws, BATCH, EMBEDDING_DIM)
  final = dip.reconstruction_error(generator, variables, z_fit, per_w, query)
  assert float(final.mean()) < 0.5 * float(errors[0]), (errors, final)

  paths = dip.write_sample_grids(generator, variables, embed, priors, str(tmp_path), _key(9),
                                 num=BATCH, interpolation_rows=2, interpolation_steps=2)
  assert set(paths) == set(dip.SAMPLE_MODES)


def test_presets_and_validation(tmp_path):
  config = finetune.get_config("dip_diffaug,stylegan2")
  assert (config.model, config.batch_size, config.total_steps) == ("stylegan2", 16, 20_000)
  assert config.dip.prior == "mobilenet_v2" and config.loss.kind == "nonsaturating"
  freezed = finetune.get_config("dip_freezed,stylegan2")
  assert freezed.model is None and freezed.batch_size == 8 and freezed.freeze_d == 4
  with pytest.raises(ValueError, match="DIP's StyleGAN2 variant"):
    finetune.get_config("transfergan,stylegan2")
  with pytest.raises(ValueError, match="unknown preset"):
    finetune.get_config("dip,stylegan2,stylegan2")
  labelled = ps_pretrain.get_config("tiny")
  labelled.num_classes = 3
  validation.validate_train_config(labelled, str(tmp_path / "ok"), num_devices=1)
  resnet = ps_pretrain.get_config("resnet,tiny")
  resnet.num_classes = 3
  with pytest.raises(validation.ConfigError, match="needs model 'sngan' or 'stylegan2'"):
    validation.validate_train_config(resnet, str(tmp_path / "bad"), num_devices=1)


@needs_mobilenet
@needs_inception
def test_dip_freezed_stylegan2_from_a_ps_checkpoint_on_orl_faces(tmp_path):
  pretrain = ps_pretrain.get_config("tiny")
  pretrain.update(total_steps=2, checkpoint_every=2, sample_every=2, log_every=1)
  source = str(tmp_path / "ps_tiny")
  train.train_and_evaluate(pretrain, source)

  config = finetune.get_config("dip_freezed,stylegan2,quick")
  config.update(init_checkpoint=source, total_steps=2, log_every=1, sample_every=2,
                checkpoint_every=2, eval_every=2, eval_num_images=8)
  config.data.update(source="orl_faces", num_images=16)
  workdir = str(tmp_path / "dip_stylegan2")
  train.train_and_evaluate(config, workdir)
  evals = [r for r in writers.read_metrics(workdir) if "eval/fid" in r]
  assert len(evals) == 1 and np.isfinite(evals[0]["eval/fid"])

  saved, params = checkpoints.restore_params(workdir)
  _, source_params = checkpoints.restore_params(source)
  assert saved.model == "stylegan2" and saved.stylegan2.embedding_dim == 32
  # FreezeD: the two highest-resolution D blocks are the source's.
  for block in stylegan2.discriminator_block_names(16)[:2]:
    jax.tree.map(np.testing.assert_array_equal, params["discriminator"][block],
                 source_params["discriminator"][block])
  assert params["generator"]["g_emb"]["fc0"]["weight"].shape == (1280, 32)

  paths = sample.write_samples(workdir, str(tmp_path / "samples"), num=4, mix=True,
                               edits=["cutmix"], num_invert=2, invert_steps=3)
  assert {"samples", "mix", "priors", "interpolation", "kmeans", "gmm", "edit_cutmix",
          "inversion"} <= set(paths)
