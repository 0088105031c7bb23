"""Memory levers of the StyleGAN2 step (issue 20): mixed precision where the official
code puts it, and rematerialised blocks; neither may move the numbers beyond a stated
tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gantransfer_jax import builder
from configs import ps_pretrain
from gantransfer_jax import losses
from gantransfer_jax import parallel
from gantransfer_jax import train
from gantransfer_jax.data import sampler as sampler_lib
from gantransfer_jax.models import stylegan2

# Resolution 16 has float32 blocks (G's b4) and reduced-precision ones (b8, b16 with
# num_fp16_res=4, as official: max(2 ** (4 + 1 - 4), 8) = 8).
SMALL = dict(resolution=16, channel_base=256, channel_max=32)


@pytest.mark.parametrize("resolution, num_fp16_res, expected", [
    # The official networks' fp16_resolution = max(2 ** (log2(res) + 1 - n), 8).
    (256, 4, [32, 64, 128, 256]),
    (1024, 4, [128, 256, 512, 1024]),
    (16, 4, [8, 16]),
    (256, 0, []),
    (256, None, [4, 8, 16, 32, 64, 128, 256]),  # None: every block.
])
def test_reduced_precision_blocks_are_the_official_ones(resolution, num_fp16_res, expected):
  blocks = [2 ** i for i in range(2, int(np.log2(resolution)) + 1)]
  low = [res for res in blocks
         if stylegan2.block_dtype(res, resolution, jnp.bfloat16, num_fp16_res) == jnp.bfloat16]
  assert low == expected
  assert stylegan2.block_dtype(resolution, resolution, None, num_fp16_res) is None


def _block_dtypes(module, variables, *args, path=(), **kwargs):
  """{block name: dtype of its activations output}, from shapes alone (no compute)."""
  def run(v):
    return module.apply(v, *args, capture_intermediates=True, mutable=["intermediates"],
                        **kwargs)[1]["intermediates"]
  blocks = jax.eval_shape(run, variables)
  for name in path:
    blocks = blocks[name]
  return {name: jax.tree.leaves(out["__call__"])[0].dtype for name, out in blocks.items()
          if name.startswith("b")}


def test_mixed_precision_runs_only_in_the_top_resolutions():
  gen = stylegan2.Generator(z_dim=8, w_dim=8, mapping_layers=1, dtype=jnp.bfloat16,
                            num_fp16_res=2, **SMALL)
  disc = stylegan2.Discriminator(dtype=jnp.bfloat16, num_fp16_res=1, **SMALL)
  z, images = jnp.zeros((2, 8)), jnp.zeros((2, 16, 16, 3))
  g_vars = jax.eval_shape(gen.init, jax.random.key(0), z)
  d_vars = jax.eval_shape(disc.init, jax.random.key(0), images)
  bf16, f32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
  assert _block_dtypes(gen, g_vars, z, noise_mode="none", path=("synthesis",)) == {
      "b4": f32, "b8": bf16, "b16": bf16}
  assert _block_dtypes(disc, d_vars, images) == {"b16": bf16, "b8": f32, "b4": f32}
  images_out = jax.eval_shape(lambda v: gen.apply(v, z, noise_mode="none"), g_vars)
  logits = jax.eval_shape(disc.apply, d_vars, images)
  assert images_out.dtype == logits.dtype == f32


def test_mixed_precision_names_resolve_per_backend():
  assert stylegan2.mixed_precision_dtype("auto", "tpu") == jnp.bfloat16
  assert stylegan2.mixed_precision_dtype("auto", "gpu") == jnp.float16
  assert stylegan2.mixed_precision_dtype("auto", "cpu") is None
  assert stylegan2.mixed_precision_dtype("bfloat16", "cpu") == jnp.bfloat16
  assert stylegan2.mixed_precision_dtype(None) is None
  with pytest.raises(ValueError, match="mixed_precision must be one of"):
    stylegan2.mixed_precision_dtype("fp16")
  with pytest.raises(ValueError, match="stylegan2.remat takes"):
    stylegan2.remat_networks("synthesis,mapping")


def _gradient_recorder() -> optax.GradientTransformation:
  """An 'optimizer' that stores the gradients as its state and leaves the params alone,
  so one train step returns exactly the gradients it computed."""
  return optax.GradientTransformation(
      init=lambda params: jax.tree.map(jnp.zeros_like, params),
      update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def _step_gradients(config):
  """Losses and (G, D) gradients of one step with R1 and path length, from a fixed init
  and fixed data (everything is folded from config.seed)."""
  mesh = parallel.create_mesh(jax.devices()[:1])
  gan = builder.build_gan(config)
  record = _gradient_recorder()
  sampler = sampler_lib.make_sampler(config)
  data = jax.device_put(sampler.data, parallel.replicated(mesh))
  state = train.create_train_state(config, gan, record, record, mesh)
  step = train.make_train_step(config, gan, sampler, record, record, mesh)
  lowered = step.lower(state, data, do_r1=True, do_pl=True)
  state, metrics = lowered.compile()(state, data)
  return jax.device_get((metrics, state.g_opt_state, state.d_opt_state)), lowered.as_text()


def _relative_error(a, b):
  a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (a, b))
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_bfloat16_step_matches_the_float32_step_within_tolerance():
  config = ps_pretrain.get_config("tiny")
  config.stylegan2.update(channel_base=256, channel_max=32, mixed_precision="float32")
  config.loss.pl_weight = 2.0
  reference, reference_hlo = _step_gradients(config)
  config.stylegan2.mixed_precision = "bfloat16"
  result, result_hlo = _step_gradients(config)
  # The config reaches the networks: reduced-precision ops exist only when asked for.
  assert "bf16" in result_hlo and "bf16" not in reference_hlo
  (ref_metrics, ref_g, ref_d), (metrics, g_grads, d_grads) = reference, result
  assert set(metrics) == set(ref_metrics) >= {"loss/g", "loss/d", "loss/r1", "loss/pl"}
  for name, value in metrics.items():
    assert value.dtype == np.float32, name  # Losses stay float32.
    np.testing.assert_allclose(value, ref_metrics[name], rtol=0.03, atol=0.01, err_msg=name)
  # bfloat16 keeps 8 mantissa bits (relative rounding 2 ** -9): through a few layers
  # and a double backward the gradients stay within 10% of float32 in norm.
  assert _relative_error(g_grads, ref_g) < 0.1
  assert _relative_error(d_grads, ref_d) < 0.1


def test_remat_gives_the_same_numbers_as_storing_activations():
  kwargs = dict(z_dim=8, w_dim=8, mapping_layers=1, **SMALL)
  gen, gen_remat = (stylegan2.Generator(**kwargs, remat=r) for r in (False, True))
  disc, disc_remat = (stylegan2.Discriminator(**SMALL, remat=r) for r in (False, True))
  z = jax.random.normal(jax.random.key(0), (4, 8))
  reals = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  g_vars = gen.init({"params": jax.random.key(2), "noise": jax.random.key(3)}, z)
  d_vars = disc.init(jax.random.key(4), reals)
  assert (jax.tree.structure(g_vars) == jax.tree.structure(
      gen_remat.init({"params": jax.random.key(2), "noise": jax.random.key(3)}, z)))
  assert jax.tree.structure(d_vars) == jax.tree.structure(disc_remat.init(jax.random.key(4), reals))

  def objective(g, d, g_params, d_params):
    """G's loss with path length, D's with R1 (a double backward): their gradients."""
    g_all = {**g_vars, "params": g_params}
    d_fn = lambda images: d.apply({"params": d_params}, images)
    fakes = g.apply(g_all, z, rngs={"noise": jax.random.key(5)})
    ws = g.apply(g_all, z, method=g.map)
    synth = lambda w: g.apply(g_all, w, method=g.synthesize, rngs={"noise": jax.random.key(6)})
    pl, _ = losses.path_length_penalty(synth, ws, jax.random.key(7), jnp.zeros(()))
    r1 = losses.r1_penalty(d_fn, reals)
    return losses.d_logistic_loss(d_fn(reals), d_fn(fakes)) + r1 + pl

  grad = lambda g, d: jax.jit(jax.value_and_grad(
      lambda gp, dp: objective(g, d, gp, dp), argnums=(0, 1)))(g_vars["params"],
                                                              d_vars["params"])
  expected, result = grad(gen, disc), grad(gen_remat, disc_remat)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               result, expected)
  jaxpr = str(jax.make_jaxpr(lambda gp, dp: objective(gen_remat, disc_remat, gp, dp))(
      g_vars["params"], d_vars["params"]))
  assert "checkpoint" in jaxpr or "remat" in jaxpr
