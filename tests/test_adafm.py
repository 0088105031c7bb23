"""AdaFM / FS modulation of frozen params, its warmup, and the SmallHead generator."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from gantransfer_jax import adafm
from gantransfer_jax.models import resnet_gan
from gantransfer_jax.models import smallhead

RESOLUTION = 16  # Groups at 4, 8, 16: a 1-block head and a general part of 2 groups.
Z_DIM = 6
NF = 4
NUM_GENERAL = 2


def _random_tree(shapes, seed, scale=0.2):
  """Random values for a tree of shapes; small, so that deep nets stay off tanh's plateau."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def general():
  """The general part of a 'pretrained' ResNet G (random weights)."""
  z = jax.ShapeDtypeStruct((1, Z_DIM), jnp.float32)
  shapes = jax.eval_shape(resnet_gan.ResNetGenerator(RESOLUTION, Z_DIM, NF).init,
                          jax.random.key(0), z)["params"]
  return smallhead.general_part(_random_tree(shapes, 0), RESOLUTION, NUM_GENERAL)


def _generator():
  return smallhead.AdaFMGenerator(RESOLUTION, Z_DIM, NF, num_general_groups=NUM_GENERAL,
                                  head_features=8, style_dim=8, mapping_layers=2)


@pytest.fixture(scope="module")
def head():
  z = jax.ShapeDtypeStruct((2, Z_DIM), jnp.float32)
  rngs = {"params": jax.random.key(1), "noise": jax.random.key(2)}
  return _random_tree(jax.eval_shape(_generator().init, rngs, z)["params"]["head"], 1)


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def test_general_part_is_the_groups_nearest_the_image(general):
  assert sorted(general) == ["conv_img", "resnet_1", "resnet_2"]


@pytest.mark.parametrize("kind", ["adafm", "fs"])
def test_init_is_the_identity_and_selects_residual_convs(general, kind):
  modulation = adafm.init(general, adafm.Spec(kind=kind))
  paths = sorted(_flat(modulation))
  assert {p[-2] for p in paths} == {"conv_0", "conv_1"}  # Never conv_s or conv_img.
  assert len(paths) == 2 * 2 * 2 * NUM_GENERAL  # (gamma, beta) x 2 convs x 2 blocks x groups.
  for path, value in _flat(modulation).items():
    kernel = _flat(general)[path[:-1] + ("kernel",)]
    assert value.shape == (kernel.shape[-2:] if kind == "adafm" else kernel.shape[-1:])
    np.testing.assert_array_equal(value, 1.0 if path[-1] == "gamma" else 0.0)
  modulated = adafm.apply(general, modulation)
  assert jax.tree.structure(modulated) == jax.tree.structure(general)
  for a, b in zip(jax.tree.leaves(modulated), jax.tree.leaves(general)):
    np.testing.assert_array_equal(a, b)


def test_apply_formula(general):
  modulation = _random_tree(adafm.init(general), 3, scale=1.0)
  modulated = _flat(adafm.apply(general, modulation))
  for path, value in _flat(general).items():
    if path[-2:] in (("conv_0", "kernel"), ("conv_1", "kernel")):
      factors = _flat(modulation)
      gamma, beta = factors[path[:-1] + ("gamma",)], factors[path[:-1] + ("beta",)]
      # W'[kh, kw, i, o] = gamma[i, o] * W[kh, kw, i, o] + beta[i, o].
      expected = np.einsum("io,hwio->hwio", gamma, value) + beta[None, None]
      np.testing.assert_allclose(modulated[path], expected, rtol=1e-6, atol=1e-6)
    else:
      np.testing.assert_array_equal(modulated[path], value)


def test_filter_selection_is_rank_one_adafm(general):
  fs = _random_tree(adafm.init(general, adafm.Spec(kind="fs")), 4, scale=1.0)
  kernel_shape = _flat(general)[("resnet_1", "0", "conv_0", "kernel")].shape
  g = _flat(fs)[("resnet_1", "0", "conv_0", "gamma")]
  assert g.shape == (kernel_shape[-1],)  # One factor per output filter (C_out).
  full = traverse_util.unflatten_dict({
      path: jnp.broadcast_to(v, _flat(general)[path[:-1] + ("kernel",)].shape[-2:])
      for path, v in _flat(fs).items()})
  gamma = np.asarray(_flat(full)[("resnet_1", "0", "conv_0", "gamma")])
  assert np.linalg.matrix_rank(gamma) == 1
  for a, b in zip(jax.tree.leaves(adafm.apply(general, fs)),
                  jax.tree.leaves(adafm.apply(general, full))):
    np.testing.assert_array_equal(a, b)


def test_errors(general):
  with pytest.raises(ValueError, match="unknown AdaFM kind"):
    adafm.init(general, adafm.Spec(kind="film"))
  with pytest.raises(ValueError, match="to modulate"):
    adafm.init({"conv_img": general["conv_img"]})
  with pytest.raises(ValueError, match="do not hold"):
    adafm.apply({"conv_img": general["conv_img"]}, adafm.init(general))


def test_gradients_reach_only_the_trainable_pytree(general, head):
  generator = _generator()
  z = jax.random.normal(jax.random.key(5), (2, Z_DIM))
  # Near, not at, the identity: no accidental symmetry can zero a gradient.
  identity = adafm.init(general)
  modulation = jax.tree.map(jnp.add, identity, _random_tree(identity, 7, scale=0.02))

  def loss(trainable, frozen):
    params = smallhead.generator_params(trainable["head"], frozen, trainable["modulation"])
    images = generator.apply({"params": params}, z, noise_mode="none")
    return jnp.mean(jnp.square(images - 0.3))

  trainable = {"head": head, "modulation": modulation}
  grads = jax.jit(jax.grad(loss))(trainable, general)
  assert jax.tree.structure(grads) == jax.tree.structure(trainable)
  for path, grad in _flat(grads["modulation"]).items():
    assert float(jnp.max(jnp.abs(grad))) > 0, path

  # The optimizer is built on the trainable pytree only: no state for the frozen weights,
  # and the modulation waits out its warmup while the head trains.
  labels = {"head": jax.tree.map(lambda _: "head", head),
            "modulation": jax.tree.map(lambda _: "modulation", modulation)}
  tx = optax.multi_transform(
      {"head": optax.adam(1e-2),
       "modulation": adafm.frozen_during_warmup(optax.adam(1e-2), warmup_steps=1)}, labels)
  opt_state = tx.init(trainable)
  frozen_size = sum(v.size for v in jax.tree.leaves(general))
  state_sizes = {v.size for v in jax.tree.leaves(opt_state)}
  assert frozen_size not in state_sizes
  for step in range(2):
    updates, opt_state = tx.update(grads, opt_state, trainable)
    moved = {name: any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates[name]))
             for name in ("head", "modulation")}
    assert moved == {"head": True, "modulation": step >= 1}


def test_warmup_keeps_inner_state_untouched():
  tx = adafm.frozen_during_warmup(optax.adam(1.0), warmup_steps=2)
  params = {"gamma": jnp.ones(3)}
  state = tx.init(params)
  grads = {"gamma": jnp.full(3, 2.0)}
  for _ in range(2):
    updates, new_state = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["gamma"], 0.0)
    for a, b in zip(jax.tree.leaves(new_state[1]), jax.tree.leaves(state[1])):
      np.testing.assert_array_equal(a, b)
    state = new_state
  updates, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(updates["gamma"], -1.0, rtol=1e-4)  # Adam's first step: -lr.


def test_mix_styles():
  w, w_mix = jnp.zeros((2, 3)), jnp.ones((2, 3))
  ws = smallhead.mix_styles(w, w_mix, 1, num_layers=4)
  np.testing.assert_array_equal(ws[:, 0, 0], [0, 1, 1, 1])
  np.testing.assert_array_equal(smallhead.mix_styles(w, None, None, 4), jnp.zeros((4, 2, 3)))
  with pytest.raises(ValueError, match="crossover"):
    smallhead.mix_styles(w, w_mix, None, 4)


def test_smallhead_shapes_noise_and_style_mixing():
  head = smallhead.SmallHead(out_features=12, base_features=8, num_blocks=2, style_dim=8,
                             mapping_layers=2)
  z, z_mix = jax.random.normal(jax.random.key(0), (2, 2, 5))
  rngs = {"params": jax.random.key(1), "noise": jax.random.key(2)}
  params = _random_tree(jax.eval_shape(head.init, rngs, z)["params"], 1, scale=0.5)
  assert sorted(params) == ["block_0", "block_1", "fc", "mapping"]
  assert sorted(params["mapping"]) == ["fc0", "fc1"]
  assert sorted(params["block_0"]) == ["adain_0", "adain_1", "conv", "conv_up", "noise_0",
                                       "noise_1", "shortcut"]

  # One compiled function for every case: mixing z with itself is the unmixed generator.
  run = jax.jit(lambda second, crossover, key: head.apply(
      {"params": params}, z, z_mix=second, crossover=crossover, rngs={"noise": key}))
  key = jax.random.key(3)
  plain = run(z, 0, key)
  assert plain.shape == (2, 16, 16, 12)
  np.testing.assert_allclose(run(z_mix, head.num_styles, key), plain, rtol=1e-5, atol=1e-5)
  mixed = [run(z_mix, c, key) for c in (0, 2)]
  assert not np.allclose(mixed[0], plain, atol=1e-4)
  assert not np.allclose(mixed[1], plain, atol=1e-4)
  assert not np.allclose(mixed[0], mixed[1], atol=1e-4)
  assert not np.allclose(run(z, 0, jax.random.key(4)), plain, atol=1e-4)  # Noise is on.


def test_adafm_generator_runs_on_pretrained_general_part(general, head):
  generator = _generator()
  modulation = adafm.init(general, adafm.Spec(kind="fs"))
  params = smallhead.generator_params(head, general, modulation)
  z = jax.random.normal(jax.random.key(6), (2, Z_DIM))
  images = generator.apply({"params": params}, z, noise_mode="none")
  assert images.shape == (2, RESOLUTION, RESOLUTION, 3)
  with pytest.raises(ValueError, match="general part needs"):
    smallhead.first_general_group(RESOLUTION, 3)
