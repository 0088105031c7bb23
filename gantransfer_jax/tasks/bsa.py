"""The `bsa` task: batch statistics adaptation of a frozen SNGAN (`gantransfer_jax.bsa`).

  python -m gantransfer_jax.main --config=configs/finetune.py:bsa,quick \\
      --config.init_checkpoint=workdirs/sngan_quick --config.data.source=folder:/my/images

Not a GAN loop: one jitted step draws a batch of training images and their indices on
device, reconstructs them from their latents through the adapted frozen G, and updates
the latents and the scale/shift factors with Adam (separate learning rates); the
Gaussian of the latents is refitted in the same step, so every checkpoint samples from
the latents it holds. Randomness is fold_in(key(seed), step). Checkpoints, resume,
signals, the finite check, metrics, sample grids and FID evaluation are the training
loop's (`gantransfer_jax.train`), and the saved state has the fields the sample command
and the evaluate task read (`checkpoints.restore_params`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from gantransfer_jax import builder
from gantransfer_jax import bsa
from gantransfer_jax import checkpoints
from gantransfer_jax import freezing
from gantransfer_jax import images as image_lib
from gantransfer_jax import parallel
from gantransfer_jax import train
from gantransfer_jax import validation
from gantransfer_jax import writers
from gantransfer_jax.data import sampler as sampler_lib
from gantransfer_jax.models import gan as gan_lib

LATENTS = "latents"
_FROZEN = ((bsa.SOURCE,),)


@flax.struct.dataclass
class BsaState:
  step: jax.Array    # Completed steps (int32 scalar).
  g_params: Any      # {'source': frozen G, 'bsa': scale/shift}.
  g_state: Any       # The source's batch norm / spectral norm state + 'bsa_gaussian'.
  latents: jax.Array  # [N, z_dim], one per training image (in the sampler's order).
  opt_state: Any

  @property
  def g_ema_params(self):
    """What evaluation samples (BSA keeps no moving average)."""
    return self.g_params


class Setup(NamedTuple):
  """What `train._PeriodicEvaluation` reads of a run, and the step."""
  gan: bsa.BsaGan
  sampler: sampler_lib.Sampler
  data: Any
  state: BsaState
  train_step: Callable


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam over {'bsa', 'latents'}: the authors' rates differ by 100x."""
  opt, cfg = config.optim, config.bsa
  adam = lambda lr: optax.adam(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return optax.multi_transform(
      {LATENTS: adam(cfg.latent_lr), bsa.ADAPTATION: adam(cfg.stats_lr)},
      lambda tree: {name: name for name in tree})


def load_source(config: ml_collections.ConfigDict, gan: bsa.BsaGan) -> tuple[Any, Any]:
  """(params, state) of the source checkpoint's sampled (EMA) G, checked against the
  configured SNGAN's shapes."""
  _, pretrained = checkpoints.restore_params(config.init_checkpoint)
  params, state = pretrained["generator_ema"], pretrained["generator_state"]
  fresh_params, fresh_state = gan_lib.split_variables(
      jax.eval_shape(gan.base.init, jax.random.key(0))[0])
  expected = jax.tree.map(lambda x: x.shape, (fresh_params, fresh_state))
  got = jax.tree.map(np.shape, (params, state))
  if expected != got:
    raise checkpoints.CheckpointError(
        f"init_checkpoint {config.init_checkpoint}: its generator does not fit the "
        f"configured SNGAN (checkpoint shapes {got} vs model shapes {expected})")
  return params, state


def init_state(config, gan: bsa.BsaGan, source_params, source_state, num_images: int,
               tx: optax.GradientTransformation) -> BsaState:
  layers = gan.statistics_layers(source_params, source_state)
  g_params = {bsa.SOURCE: source_params, bsa.ADAPTATION: bsa.init_adaptation(layers)}
  latents = jnp.zeros((num_images, gan.z_dim), jnp.float32)  # The authors' zero start.
  trainable = {bsa.ADAPTATION: g_params[bsa.ADAPTATION], LATENTS: latents}
  return BsaState(step=jnp.zeros((), jnp.int32), g_params=g_params,
                  g_state={**source_state, bsa.GAUSSIAN: bsa.fit_gaussian(latents)},
                  latents=latents, opt_state=tx.init(trainable))


def perceptual_features(config: ml_collections.ConfigDict) -> tuple[Any, Callable | None]:
  """(frozen variables, features(variables, images)) of `bsa.perceptual`; ({}, None) off."""
  if not config.bsa.perceptual:
    return {}, None
  from gantransfer_jax.models import mobilenet_v2  # pylint: disable=g-import-not-at-top

  size = config.bsa.perceptual_resolution
  return (mobilenet_v2.load_variables(),
          lambda variables, images: bsa.mobilenet_feature_maps(variables, images, size))


def make_train_step(config, gan: bsa.BsaGan, tx, mesh, num_images: int,
                    features: Callable | None) -> Callable:
  """`step(state, data) -> (state, metrics)`, jitted, donating the state; `data` holds
  the uint8 training images and the perceptual network's variables."""
  cfg, batch = config.bsa, config.batch_size
  base_key = jax.random.fold_in(jax.random.key(config.seed), train.TRAIN_SALT)

  def loss_fn(trainable, frozen, g_state, data, images, index, key):
    k_noise, k_emd = jax.random.split(key)
    g_params = freezing.merge({bsa.ADAPTATION: trainable[bsa.ADAPTATION]}, frozen)
    z = trainable[LATENTS][index]
    noisy = z + cfg.latent_noise * jax.random.normal(k_noise, z.shape)
    fakes = gan.reconstruct(g_params, g_state, parallel.shard_batch(noisy, mesh))
    l1 = bsa.l1_distance(fakes, images)
    # The authors divide L1 by its value: it counts 1, its gradient is scaled by 1/L1.
    loss = cfg.l1_weight * l1 / jax.lax.stop_gradient(jnp.maximum(l1, 1e-8))
    emd = bsa.earth_movers_penalty(z, k_emd)
    loss = loss + cfg.latent_weight * emd
    metrics = {"loss/l1": l1, "loss/latent_emd": emd}
    if features is not None:
      perceptual = bsa.perceptual_distance(
          functools.partial(features, data["perceptual"]), fakes, images)
      loss = loss + cfg.perceptual_weight * perceptual
      metrics["loss/perceptual"] = perceptual
    return loss, {"loss/total": loss, **metrics}

  def step(state: BsaState, data):
    k_data, k_loss = jax.random.split(jax.random.fold_in(base_key, state.step))
    index = jax.random.randint(k_data, (batch,), 0, num_images)
    images = parallel.shard_batch(sampler_lib.uint8_to_float(data["images"][index]), mesh)
    adaptation, frozen = freezing.split(state.g_params, _FROZEN)
    trainable = {**adaptation, LATENTS: state.latents}
    grads, metrics = jax.grad(loss_fn, has_aux=True)(
        trainable, frozen, state.g_state, data, images, index, k_loss)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    latents = trainable.pop(LATENTS)
    g_state = {**state.g_state, bsa.GAUSSIAN: bsa.fit_gaussian(latents)}
    return state.replace(step=state.step + 1, g_params=freezing.merge(trainable, frozen),
                         g_state=g_state, latents=latents, opt_state=opt_state), metrics

  replicated = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated))


def build(config: ml_collections.ConfigDict, mesh, data_cache_dir: str | None = None) -> Setup:
  gan = builder.build_gan(config)
  sampler = sampler_lib.make_sampler(config, cache_dir=data_cache_dir)
  num_images = len(sampler.data["images"])
  feature_vars, features = perceptual_features(config)
  tx = make_optimizer(config)
  source_params, source_state = load_source(config, gan)
  state = jax.device_put(init_state(config, gan, source_params, source_state, num_images, tx),
                         parallel.replicated(mesh))
  data = jax.device_put({**sampler.data, "perceptual": feature_vars},
                        parallel.replicated(mesh))
  return Setup(gan=gan, sampler=sampler, data=data, state=state,
               train_step=make_train_step(config, gan, tx, mesh, num_images, features))


def run(config: ml_collections.ConfigDict, workdir: str) -> BsaState:
  """Trains (or resumes) BSA as configured, writing everything to workdir."""
  workdir = os.path.abspath(workdir)
  validation.check_bsa_source(config)
  validation.check_init_checkpoint(config)
  config = checkpoints.inherit_model_config(config, config.init_checkpoint)
  validation.validate_train_config(config, workdir)
  with checkpoints.WorkdirLock(workdir):
    return _run(config, workdir)


def _save_panels(workdir: str, step: int, setup: Setup, state: BsaState, sample, reals,
                 count: int) -> None:
  """Samples (`samples/step_*.png`; beside training images in real_vs_generated.png) and
  the first training images over their reconstructions (`reconstructions.png`)."""
  train.save_samples(workdir, step, sample(state), reals)
  if jax.process_index() == 0:
    first = sampler_lib.uint8_to_float(jnp.asarray(setup.sampler.data["images"][:count]))
    rebuilt = setup.gan.reconstruct(state.g_params, state.g_state, state.latents[:count])
    image_lib.save_panels(os.path.join(workdir, "samples", "reconstructions.png"),
                          [np.asarray(first), np.asarray(rebuilt)])


def _run(config: ml_collections.ConfigDict, workdir: str) -> BsaState:
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  train.check_same_experiment(config, workdir, checkpointer)
  mesh = parallel.create_mesh()
  setup = build(config, mesh, data_cache_dir=os.path.join(workdir, "data_cache"))
  state = checkpointer.restore_latest(setup.state)
  if state is not None:
    logging.info("Resumed from %s at step %d.", checkpointer.directory, int(state.step))
  else:
    state = setup.state
    logging.info("BSA over the frozen G of %s: %d latents, %d adapted layers.",
                 config.init_checkpoint, len(state.latents),
                 len(jax.tree.leaves(state.g_params[bsa.ADAPTATION])) // 2)
  train.write_config(workdir, config)

  key = jax.random.fold_in(jax.random.key(config.seed), train.SAMPLE_SALT)
  eps = jax.random.normal(key, (config.num_sample_images, setup.gan.z_dim))
  sample = jax.jit(lambda s: setup.gan.sample(s.g_params, s.g_state, eps, None, None))
  reals = train.fixed_training_images(config, setup)
  count = min(config.num_sample_images, len(state.latents))
  writer = writers.create_writer(workdir)
  evaluate = train.make_periodic_evaluation(config, setup, mesh, workdir, writer)
  return train.run_loop(
      config, state, train_step=setup.train_step, data=setup.data, what="the BSA step",
      write_samples=lambda step, state: _save_panels(workdir, step, setup, state, sample,
                                                     reals, count),
      checkpointer=checkpointer, evaluate=evaluate, writer=writer)
