"""Transfer methods as transforms over parameter pytrees (issue #18 item 2): freezing and
AdaFM / FS modulation on any family with convolutions, through `config.transfer`."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import ps_pretrain
from gantransfer_jax import adafm
from gantransfer_jax import builder
from gantransfer_jax import freezing
from gantransfer_jax import parallel
from gantransfer_jax import train
from gantransfer_jax import validation
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.models import smallhead
from gantransfer_jax.models import families
from gantransfer_jax.transfer import base
from gantransfer_jax.transfer import condition
from gantransfer_jax.transfer import registry
from gantransfer_jax.transfer import wrapper

G, D = gan_lib.GENERATOR, gan_lib.DISCRIMINATOR


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def stylegan2_config(transfer):
  config = ps_pretrain.get_config("tiny")  # 16 x 16, channel_max 32.
  config.loss.pl_weight = 0.0  # One step variant to compile.
  config.transfer = transfer
  return config


def resnet_config(transfer):
  config = ps_pretrain.get_config("resnet,tiny")
  config.transfer = transfer
  return config


def adafm_family_config(kind="adafm", warmup_steps=3):
  """What configs/finetune.py:adafm,quick builds once the checkpoint's fields are in."""
  config = resnet_config("")
  config.model = "adafm"
  config.adafm = ml_collections.ConfigDict(dict(
      kind=kind, general_g=2, general_d=2, warmup_steps=warmup_steps, head_features=8,
      style_dim=8, mapping_layers=2))
  return config


def init_params(gan):
  g_vars, d_vars = gan.init(jax.random.key(0))
  return jax.device_get(g_vars["params"]), jax.device_get(d_vars["params"])


def _random_like(tree, seed, scale=0.5):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype),
                      tree)


@pytest.mark.parametrize("config", [stylegan2_config("adafm"), stylegan2_config("fs"),
                                    resnet_config("adafm"), resnet_config("fs")],
                         ids=["stylegan2-adafm", "stylegan2-fs", "resnet-adafm", "resnet-fs"])
def test_a_modulation_is_the_identity_at_init(config):
  gan = builder.build_gan(config)
  assert isinstance(gan, wrapper.TransferGan)
  g_params, _ = init_params(gan)
  family_g_params, _ = init_params(gan.base)
  assert set(g_params) == set(family_g_params) | {"modulation"}
  seen = gan.network_params(G, g_params)
  assert jax.tree.structure(seen) == jax.tree.structure(family_g_params)
  jax.tree.map(np.testing.assert_array_equal, seen, family_g_params)
  # And so are the samples: the pretrained model's, unchanged.
  z = jax.random.normal(jax.random.key(1), (2, gan.z_dim))
  key = jax.random.key(2)
  np.testing.assert_array_equal(gan.sample(g_params, {}, z, None, key),
                                gan.base.sample(family_g_params, {}, z, None, key))


@pytest.mark.parametrize("kind", ["adafm", "fs"])
def test_stylegan2_synthesis_kernels_are_gamma_w_plus_beta(kind):
  gan = builder.build_gan(stylegan2_config(kind))
  g_params, _ = init_params(gan)
  g_params = {**g_params, "modulation": _random_like(g_params["modulation"], 3)}
  seen = _flat(gan.network_params(G, g_params))
  factors = _flat(g_params["modulation"])
  modulated = 0
  for path, value in _flat(g_params).items():
    if path[0] == "modulation":
      continue
    if path[0] == "synthesis" and path[-2:] in (("conv0", "weight"), ("conv1", "weight")):
      gamma = np.asarray(factors[path[1:-1] + ("gamma",)])
      beta = np.asarray(factors[path[1:-1] + ("beta",)])
      assert gamma.shape == (value.shape[-2:] if kind == "adafm" else value.shape[-1:])
      # W'[kh, kw, i, o] = gamma[i, o] * W[kh, kw, i, o] + beta[i, o] (FS: [o] only).
      expected = np.asarray(value) * gamma + beta
      np.testing.assert_allclose(seen[path], expected, rtol=1e-6, atol=1e-6)
      modulated += 1
    else:  # torgb, the mapping, biases and affines are as stored.
      np.testing.assert_array_equal(seen[path], value)
  assert modulated == 5  # b4/conv1, b8/conv0, b8/conv1, b16/conv0, b16/conv1.


def test_gradients_reach_only_the_trainable_leaves_and_so_does_the_optimizer():
  gan = builder.build_gan(resnet_config("freeze_g:1,adafm"))
  g_params, _ = init_params(gan)
  g_params = {**g_params, "modulation": jax.tree.map(
      jnp.add, g_params["modulation"], _random_like(g_params["modulation"], 4, 0.02))}
  trainable, fixed = gan.trainable(G, g_params)
  fixed_paths = set(_flat(fixed))
  # freeze_g:1 is resnet_2 and conv_img; the modulation fixes every other residual kernel.
  assert {p[0] for p in fixed_paths} == {"resnet_2", "conv_img", "resnet_0", "resnet_1"}
  assert all(p[-2] in ("conv_0", "conv_1") for p in fixed_paths if p[0] in ("resnet_0",
                                                                             "resnet_1"))
  assert not fixed_paths & set(_flat(trainable))
  assert set(_flat(freezing.merge(trainable, fixed))) == set(_flat(g_params))

  z = jax.random.normal(jax.random.key(5), (2, gan.z_dim))

  def loss(trainable_part):
    images, _ = gan.generate(freezing.merge(trainable_part, fixed), {}, z, None,
                             jax.random.key(6))
    return jnp.mean(jnp.square(images - 0.3))

  grads = jax.grad(loss)(trainable)
  assert set(_flat(grads)) == set(_flat(trainable))  # No gradient for a fixed kernel.
  for path, grad in _flat(grads["modulation"]).items():
    assert float(jnp.max(jnp.abs(grad))) > 0, path

  # Adam's two moments for the trainable leaves, nothing for the fixed ones.
  g_tx, _ = train.make_optimizers(resnet_config("freeze_g:1,adafm"), gan)
  state_size, trainable_size = _num_scalars(g_tx.init(trainable)), _num_scalars(trainable)
  assert _num_scalars(fixed) > 16
  assert 2 * trainable_size <= state_size < 2 * trainable_size + 16


def _num_scalars(tree):
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("kind", ["adafm", "fs", "none"])
def test_the_adafm_family_keeps_its_param_layout_and_optimizer_state(kind):
  config = adafm_family_config(kind)
  gan = builder.build_gan(config)
  g_params, d_params = init_params(gan)
  # The layout of checkpoints written before the transforms: head, general, modulation.
  general = g_params["general"]
  expected_names = {"head", "general"} | ({"modulation"} if kind != "none" else set())
  assert set(g_params) == expected_names
  assert set(general) == {"resnet_1", "resnet_2", "conv_img"}
  if kind != "none":
    expected = adafm.init(general, adafm.Spec(kind=kind))
    assert jax.tree.structure(g_params["modulation"]) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, g_params["modulation"], expected)
  trainable, fixed = gan.trainable(G, g_params)
  assert set(fixed) == {"general"} and set(trainable) == expected_names - {"general"}
  d_trainable, d_fixed = gan.trainable(D, d_params)
  assert set(d_fixed) == {"conv_img", "resnet_0"}

  # The optimizer AdaFMGan.generator_optimizer built before the transforms.
  tx = optax.adam(1e-3)
  if kind != "none":
    labels = lambda params: {n: "modulation" if n == "modulation" else "rest" for n in params}
    tx = optax.multi_transform({"modulation": adafm.frozen_during_warmup(tx, 3), "rest": tx},
                               labels)
  g_tx, _ = train.make_optimizers(config, gan)
  new_state, old_state = g_tx.init(trainable), tx.init(trainable)
  assert jax.tree.structure(new_state) == jax.tree.structure(old_state)
  jax.tree.map(np.testing.assert_array_equal, new_state, old_state)
  # The head, fed the frozen general part, generates as before.
  z = jax.random.normal(jax.random.key(1), (2, gan.z_dim))
  direct = gan.generator.apply({"params": smallhead.generator_params(
      g_params["head"], general, g_params.get("modulation"))}, z, rngs={"noise": jax.random.key(2)})
  np.testing.assert_array_equal(gan.sample(g_params, {}, z, None, jax.random.key(2)), direct)


def one_train_step(config):
  """(state before, state after, metrics) of one real train step on one device."""
  setup = train.build(config, parallel.create_mesh(jax.devices()[:1]))
  before = jax.device_get(setup.state)
  state, metrics = setup.train_step(setup.state, setup.data, do_r1=True, do_pl=False)
  return before, jax.device_get(state), jax.device_get(metrics)


def _max_change(a, b):
  return jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)


@pytest.mark.parametrize("config", [stylegan2_config("adafm"), resnet_config("fs")],
                         ids=["stylegan2-adafm", "resnet-fs"])
def test_one_train_step_trains_the_modulation_not_the_kernels(config):
  before, after, metrics = one_train_step(config)
  assert np.isfinite(metrics["loss/g"]) and np.isfinite(metrics["loss/d"])
  moved = _max_change(before.g_params["modulation"], after.g_params["modulation"])
  assert min(jax.tree.leaves(moved)) > 0  # Every gamma and beta trained (warm-up 0).
  _, fixed = builder.build_gan(config).trainable(G, before.g_params)
  assert len(_flat(fixed)) >= 5
  for path, value in _flat(fixed).items():
    np.testing.assert_array_equal(_flat(after.g_params)[path], value)
  # What is not fixed trains (e.g. the biases beside the modulated kernels).
  assert max(jax.tree.leaves(_max_change(before.d_params, after.d_params))) > 0


def test_freeze_d_through_config_transfer_is_freeze_d_the_field():
  by_field = stylegan2_config("")
  by_field.freeze_d = 2
  by_transfer = stylegan2_config("freeze_d:2")
  for config in (by_field, by_transfer):
    _, d_params = init_params(builder.build_gan(config))
    _, fixed = builder.build_gan(config).trainable(D, d_params)
    assert set(fixed) == {"b16", "b8"}


def test_freeze_g_fixes_stylegan2s_synthesis_blocks_from_the_image_side():
  config = stylegan2_config("freeze_g:2")
  before, after, metrics = one_train_step(config)
  assert np.isfinite(metrics["loss/g"])
  trainable, fixed = builder.build_gan(config).trainable(G, before.g_params)
  assert set(fixed) == {"synthesis"} and set(fixed["synthesis"]) == {"b16", "b8"}
  assert set(trainable["synthesis"]) == {"b4"} and "mapping" in trainable
  for path, value in _flat(fixed).items():
    np.testing.assert_array_equal(_flat(after.g_params)[path], value)
  moved = _max_change(before.g_params, after.g_params)
  assert max(jax.tree.leaves(moved["synthesis"]["b4"])) > 0
  assert max(jax.tree.leaves(moved["mapping"])) > 0


def test_the_parser():
  assert registry.parse("") == [] and registry.parse(None) == []
  assert registry.parse("freeze_d:4,adafm") == [("freeze_d", "4"), ("adafm", None)]
  assert registry.parse(" fs:100 ") == [("fs", "100")]
  with pytest.raises(ValueError, match=r"unknown transform 'lora'; valid: freeze_d:N, "
                                       r"freeze_g:N, adafm\[:WARMUP_STEPS\], fs"):
    registry.parse("adafm,lora")
  with pytest.raises(ValueError, match="'freeze_d' has an empty argument"):
    registry.parse("freeze_d:")
  with pytest.raises(ValueError, match="'adafm' is listed twice"):
    registry.parse("adafm,adafm")
  with pytest.raises(ValueError, match="transfer must be a string"):
    registry.parse(4)


def test_every_problem_is_reported_by_validation(tmp_path):
  config = stylegan2_config("freeze_d:x,freeze_g:3,adafm:-2,lora")
  with pytest.raises(validation.ConfigError) as error:
    validation.validate_train_config(config, str(tmp_path / "run"))
  assert str(error.value).splitlines()[1:] == [
      "  - transfer 'freeze_d:x,freeze_g:3,adafm:-2,lora': unknown transform 'lora'; "
      "valid: freeze_d:N, freeze_g:N, adafm[:WARMUP_STEPS], fs[:WARMUP_STEPS], "
      "fresh_d:NAME[+NAME...], fresh_g:NAME[+NAME...]",
      "  - transfer entry 'freeze_d' takes a number of discriminator groups to freeze, "
      "e.g. freeze_d:2; got 'x'",
      "  - transfer entry 'freeze_g' must be in [0, 2] at resolution 16 (blocks "
      "synthesis/b16, synthesis/b8, synthesis/b4), got 3",
      "  - transfer entry 'adafm': adafm's argument is its warm-up in steps, an integer "
      ">= 0 (e.g. adafm:100); got '-2'"]

  config = stylegan2_config("freeze_d:4")
  with pytest.raises(validation.ConfigError, match=r"transfer entry 'freeze_d' must be in "
                                                   r"\[0, 2\] at resolution 16 \(blocks "
                                                   r"b16, b8, b4\), got 4"):
    validation.validate_train_config(config, str(tmp_path / "run"))
  config = ps_pretrain.get_config("sngan,tiny")
  config.transfer = "fs"
  with pytest.raises(validation.ConfigError, match="transfer entry 'fs': a 'sngan' model "
                                                   "declares no kernels to modulate"):
    validation.validate_train_config(config, str(tmp_path / "run"))
  config.transfer = "freeze_g:1"
  with pytest.raises(validation.ConfigError, match=r"transfer entry 'freeze_g': a 'sngan' "
                                                   r"model's generator declares no groups "
                                                   r"to freeze \(Gan.generator_groups\)"):
    validation.validate_train_config(config, str(tmp_path / "run"))
  config = adafm_family_config()
  config.transfer = "fs"  # The family's own modulation is already there.
  with pytest.raises(validation.ConfigError, match="more than one transform adds "
                                                   "'modulation' to the generator"):
    validation.validate_train_config(config, str(tmp_path / "run"))
  with pytest.raises(ValueError, match="unknown transform"):
    builder.build_gan(stylegan2_config("lora"))


# ---- Conditioning: G_emb and D_emb as transforms.


def _embedding(prior_dim, value):
  return {"fc0": {"weight": np.full((prior_dim, 4), value, np.float32)},
          "fc1": {"weight": np.full((4, 4), value, np.float32)}}


def test_a_condition_embedding_starts_from_the_source_leaf_by_leaf():
  g_emb = condition.Condition(gan_lib.ConditionSite(G, "g_emb", nn.Dense(4), 5, 4))
  d_emb = condition.Condition(gan_lib.ConditionSite(D, "d_emb", nn.Dense(4), 5, 4,
                                                    zero_when_new=True))
  body = {"kernel": np.full((2, 2), 3.0, np.float32)}
  fresh = {"body": np.zeros((2, 2)), "g_emb": _embedding(5, 1.0), "d_emb": _embedding(5, 1.0)}
  for transform in (g_emb, d_emb):
    name = transform.site.name
    # The same prior: the source's embedding, all of it.
    same = transform.transfer(fresh, {"body": body, name: _embedding(5, 2.0)})
    jax.tree.map(np.testing.assert_array_equal, same, {"body": body, name: _embedding(5, 2.0)})
    # Another prior: its first layer fresh, the deeper one carried over.
    other = transform.transfer(fresh, {"body": body, name: _embedding(3, 2.0)})
    np.testing.assert_array_equal(other[name]["fc0"]["weight"], fresh[name]["fc0"]["weight"])
    np.testing.assert_array_equal(other[name]["fc1"]["weight"], np.full((4, 4), 2.0))
    assert other["body"] is body
  # An unconditional source: G_emb as initialised, D_emb at zero (no projection term yet).
  jax.tree.map(np.testing.assert_array_equal, g_emb.transfer(fresh, {"body": body})["g_emb"],
               fresh["g_emb"])
  jax.tree.map(np.testing.assert_array_equal, d_emb.transfer(fresh, {"body": body})["d_emb"],
               jax.tree.map(np.zeros_like, fresh["d_emb"]))


class _HoldsItsEmbedding(nn.Module):
  """A network holding its condition embedding, as the networks did before the transform."""

  @nn.compact
  def __call__(self, x, cond):
    return nn.Dense(3, name="body")(x) + nn.Dense(4, name="g_emb")(cond).sum()


def test_a_condition_embedding_is_initialised_as_inside_its_network():
  # Checkpoints written when the networks held G_emb load as they are: same place,
  # same values from the same key.
  key = jax.random.key(7)
  held = _HoldsItsEmbedding().init(key, jnp.zeros((1, 2)), jnp.zeros((1, 5)))
  transform = condition.Condition(gan_lib.ConditionSite(G, "g_emb", nn.Dense(4), 5, 4))
  added = transform.init({"params": {"body": held["params"]["body"]}}, {"params": key})
  assert set(added) == {"params"} and set(added["params"]) == {"g_emb"}
  jax.tree.map(np.testing.assert_array_equal, added["params"]["g_emb"],
               held["params"]["g_emb"])
  # It runs in `condition` and leaves what the network sees.
  params = {**held["params"], **added["params"]}
  cond = jnp.ones((2, 5))
  embedding, state = transform.condition(params, {}, cond, 2, train=True)
  np.testing.assert_allclose(embedding, cond @ params["g_emb"]["kernel"]
                             + params["g_emb"]["bias"], rtol=1e-6)
  assert state == {} and set(transform.apply(params)) == {"body"}


def test_conditional_families_get_their_condition_transforms_first():
  def sites(config):
    gan = families.get(config.model).build(config)
    return [(t.network, t.site.name) for t in registry.from_config(config, gan)
            if isinstance(t, condition.Condition)]

  assert not sites(stylegan2_config(""))
  conditional = stylegan2_config("freeze_d:1")
  conditional.num_classes = 3
  gan = families.get("stylegan2").build(conditional)
  transforms = registry.from_config(conditional, gan)
  assert [type(t) for t in transforms][:2] == [condition.Condition] * 2
  assert sites(conditional) == [(G, "g_emb"), (D, "d_emb")]
  # SNGAN embeds a constant condition when unconditional: its embeddings always exist.
  assert sites(ps_pretrain.get_config("sngan,tiny")) == [(G, "g_emb"), (D, "d_emb")]


# ---- The ARCHITECTURE.md recipe, followed: a toy transform registered in the test alone.


@dataclasses.dataclass(frozen=True)
class ToyGain(base.Identity):
  """D's logits scaled by a learned gain: D's params gain a 'toy_gain' (init 1), and
  every D kernel the network sees is that many times the stored one."""

  network: str = D
  adds: tuple[str, ...] = ("toy_gain",)

  def init(self, variables, rngs):
    del variables, rngs
    return {"params": {"toy_gain": jnp.ones(())}}

  def apply(self, params):
    rest = {name: value for name, value in params.items() if name != "toy_gain"}
    return {**rest, "fc": {**rest["fc"], "kernel": rest["fc"]["kernel"] * params["toy_gain"]}}


def _build_toy_gain(gan, arg, field):
  del gan
  if arg is not None:
    raise ValueError(f"{field} takes no argument, got {arg!r}")
  return ToyGain()


@pytest.fixture(name="toy_gain")
def fixture_toy_gain():
  yield registry.register(registry.Entry("toy_gain", _build_toy_gain, "toy_gain"))
  registry.unregister("toy_gain")


def test_a_registered_transform_trains_without_generic_edits(toy_gain, tmp_path):
  del toy_gain
  config = resnet_config("toy_gain")
  validation.validate_train_config(config, str(tmp_path / "run"))
  before, after, metrics = one_train_step(config)
  assert np.isfinite(metrics["loss/d"])
  assert float(before.d_params["toy_gain"]) == 1.0
  assert float(after.d_params["toy_gain"]) != 1.0  # The optimizer saw it.
  config.transfer = "toy_gain:2"
  with pytest.raises(validation.ConfigError, match="toy_gain' takes no argument"):
    validation.validate_train_config(config, str(tmp_path / "run"))


def test_unregistered_transforms_are_unknown_again():
  with pytest.raises(ValueError, match="unknown transform 'toy_gain'"):
    registry.parse("toy_gain")
