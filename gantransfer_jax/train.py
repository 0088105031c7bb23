"""The GAN training loop, one for every model family, sharded over a device mesh.

One train step = one generator update then `config.loss.d_steps` discriminator updates
(StyleGAN2-ADA orders its phases G then D; DIP's Algorithm 1 takes several D steps per
G step, which over a run is the same alternation). Everything inside the step runs on
device: the training batch (and its conditions) is sampled there, synthesized when
pretraining, and so are latents, DiffAugment and the regularisers. The step is jitted
once per (R1, path-length) combination (with `config.regularizer_dispatch='cond'`
once, the lazy regularisers behind `lax.cond`: CondTrainStep); all randomness is
`fold_in(key(seed), step)`, so a resumed run is bit-identical to an uninterrupted one. With `config.batch_rounds`
> 1 every pass takes the batch in that many rounds, one after another, and averages
their gradients (`accumulate_rounds`; the official code's `--batch-gpu`): what bounds
the memory of the 256 x 256 presets (README, "Memory and throughput").

What differs between families (StyleGAN2, the ResNet GANs of AdaFM, SNGAN for DIP) is
behind `gantransfer_jax.models.gan.Gan`: initialisation, the training forward passes
and their state (w_avg, batch norm and spectral-norm statistics), sampling, and how a
pretrained checkpoint is transferred. The transfer transforms (FreezeD, GmDn, AdaFM;
`gantransfer_jax.transfer`) are behind it too: `gan.trainable` says what the optimizers
see, `gan.generator_optimizer` / `discriminator_optimizer` wrap them.

Deviation from the official StyleGAN2 loop (documented in the README): on lazy-
regularisation steps the regulariser is added to the main loss (scaled by its interval)
and the optimizer makes one update, instead of a separate "reg" phase with its own Adam
update. With one update per step the official learning-rate/beta correction for the
extra phase (mb_ratio) does not apply, so it is not used.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging

from gantransfer_jax import builder
from gantransfer_jax import ada
from gantransfer_jax import augment
from gantransfer_jax import checkpoints
from gantransfer_jax import errors
from gantransfer_jax import evaluation
from gantransfer_jax import freezing
from gantransfer_jax import images as image_lib
from gantransfer_jax import losses
from gantransfer_jax import parallel
from gantransfer_jax import progress
from gantransfer_jax import validation
from gantransfer_jax import writers
from gantransfer_jax.data import sampler as sampler_lib
from gantransfer_jax.metrics import registry
from gantransfer_jax.models import gan as gan_lib

# Salts that separate the independent random streams derived from the config seed.
INIT_SALT = 0
TRAIN_SALT = 1
SAMPLE_SALT = 2


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # Completed steps (int32 scalar).
  g_params: Any
  g_state: Any           # G's other collections (StyleGAN2's w_avg, SNGAN's batch stats).
  g_ema_params: Any
  d_params: Any
  d_state: Any           # D's other collections (spectral-norm statistics).
  g_opt_state: Any
  d_opt_state: Any
  pl_mean: jax.Array     # Running mean of path lengths (path-length regulariser).
  augment_state: ada.AdaState  # ADA's p and its controller's statistics (unused otherwise).


def make_optimizers(config: ml_collections.ConfigDict, gan: gan_lib.Gan | None = None):
  """(G's, D's) optimizers: Adam, wrapped by the model's transfer transforms."""
  opt = config.optim
  gan = gan or builder.build_gan(config)
  g_tx = gan.generator_optimizer(optax.adam(opt.g_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps))
  d_tx = gan.discriminator_optimizer(optax.adam(opt.d_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps))
  return g_tx, d_tx


def _opt_states(gan: gan_lib.Gan, g_tx, d_tx, g_params, d_params):
  """Fresh optimizer states, over the trainable part of each network only."""
  return (g_tx.init(gan.trainable(gan_lib.GENERATOR, g_params)[0]),
          d_tx.init(gan.trainable(gan_lib.DISCRIMINATOR, d_params)[0]))


def init_train_state(config, gan: gan_lib.Gan, g_tx, d_tx) -> TrainState:
  """Fresh parameters and optimizer states (pure; jit it with replicated outputs).

  Optimizer state exists only for the trainable part of each network.
  """
  key = jax.random.fold_in(jax.random.key(config.seed), INIT_SALT)
  g_vars, d_vars = gan.init(key)
  g_params, g_state = gan_lib.split_variables(g_vars)
  d_params, d_state = gan_lib.split_variables(d_vars)
  g_opt_state, d_opt_state = _opt_states(gan, g_tx, d_tx, g_params, d_params)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params, g_state=g_state, g_ema_params=g_params,
      d_params=d_params, d_state=d_state,
      g_opt_state=g_opt_state, d_opt_state=d_opt_state,
      pl_mean=jnp.zeros((), jnp.float32),
      augment_state=ada.init_state(_initial_augment_p(config)),
  )


def _initial_augment_p(config) -> float:
  if not augment.parse(config.augment).is_ada:
    return 0.0
  return augment.ada_controller(config)[1]


def create_train_state(config, gan, g_tx, d_tx, mesh) -> TrainState:
  init = functools.partial(init_train_state, config, gan, g_tx, d_tx)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _saved_state_fields(directory: str, step: int) -> set[str]:
  """The top-level fields of the train state saved at `step` (from Orbax's metadata)."""
  with ocp.CheckpointManager(
      directory, item_handlers={"state": ocp.StandardCheckpointHandler()}) as manager:
    return set(manager.item_metadata(step)["state"].tree)


def restore_for_resume(checkpointer: checkpoints.Checkpointer,
                       state: TrainState) -> TrainState | None:
  """`checkpointer.restore_latest(state)`, also for checkpoints from before ADA.

  Those have no `augment_state`: the rest restores and p starts at its initial value
  (what such a run used: DiffAugment, or nothing).
  """
  step = checkpointer.latest_intact_step()  # A damaged newest step's metadata may not parse.
  if step is None or "augment_state" in _saved_state_fields(checkpointer.directory, step):
    return checkpointer.restore_latest(state)
  fields = {name: getattr(state, name) for name in state.__dataclass_fields__
            if name != "augment_state"}
  restored = checkpointer.restore_latest(fields)
  if restored is None:
    return None
  logging.info("Checkpoint %d predates ADA's state: p starts at %.3f.", step,
               float(state.augment_state.p))
  return state.replace(**restored)


def make_train_step(config: ml_collections.ConfigDict, gan: gan_lib.Gan,
                    sampler: sampler_lib.Sampler, g_tx, d_tx, mesh) -> Callable:
  """Returns `step(state, data, do_r1, do_pl) -> (state, metrics)`, jitted, donating state.

  The flags are Python bools. `config.regularizer_dispatch` says how they are compiled:
  'static' (jit's static arguments: one program per combination a run meets, up to four)
  or 'cond' (one program, the lazy regularisers behind `lax.cond`; a CondTrainStep).

  `sampler.sample(data, key, batch)` draws the real batch on device from `data`.
  Gradients are taken only with respect to the trainable part of each network
  (`gan.trainable`: what its transfer transforms leave trainable).
  """
  batch = config.batch_size
  rounds = config.get("batch_rounds", 1)
  round_batch = batch // rounds
  loss_cfg = config.loss
  gan_loss = losses.gan_loss(loss_cfg.kind)
  d_steps = loss_cfg.get("d_steps", 1)
  spec = augment.parse(config.augment)
  ada_controller = augment.ada_controller(config)[0] if spec.is_ada else None
  bcr_weight = loss_cfg.get("bcr_weight", 0.0)
  # bCR's T: a fresh draw of the configured augmentation, or Zhao et al.'s translation.
  bcr_spec = spec if spec.active else augment.parse("translation")
  ema_beta = losses.ema_beta(batch, config.ema_kimg)
  ema_start_step = config.get("ema_start_step", 0)
  base_key = jax.random.fold_in(jax.random.key(config.seed), TRAIN_SALT)

  def shard(tree):
    return jax.tree.map(lambda x: parallel.shard_batch(x, mesh), tree)

  def latents(key, n):
    return shard(jax.random.normal(key, (n, gan.z_dim)))

  def discriminate(d_params, d_state, images, cond, key, p):
    images = augment.apply(spec, key, images, p)
    return gan.discriminate(d_params, d_state, images, cond)

  def bcr_penalty(d_params, d_state, images, logits, cond, key, p):
    """Consistency of D between what the loss saw and a fresh draw T (Zhao et al.)."""
    t_logits, d_state = gan.discriminate(
        d_params, d_state, augment.apply(bcr_spec, key, images, p), cond)
    return losses.consistency_penalty(logits, t_logits), d_state

  def g_loss_fn(g_trainable, g_frozen, g_state, state, data, key):
    g_params = freezing.merge(g_trainable, g_frozen)
    k_cond, k_z, k_gen, k_aug, _ = jax.random.split(key, 5)  # The last: path length's.
    cond = shard(sampler.sample_cond(data, k_cond, round_batch))
    fakes, g_state = gan.generate(g_params, g_state, latents(k_z, round_batch), cond, k_gen)
    logits, _ = discriminate(state.d_params, state.d_state, fakes, cond, k_aug,
                             state.augment_state.p)
    loss_main = gan_loss.generator(logits)
    return loss_main, (g_state, {"loss/g": loss_main})

  def pl_loss_fn(g_trainable, g_frozen, pl_mean, state, data, key):
    """The lazy path-length term (its own backward pass: see g_phase)."""
    g_params = freezing.merge(g_trainable, g_frozen)
    k_pl_z, k_pl_cond, k_pl = jax.random.split(jax.random.split(key, 5)[4], 3)
    pl_batch = max(round_batch // loss_cfg.pl_batch_shrink, 1)
    pl_cond = shard(sampler.sample_cond(data, k_pl_cond, pl_batch))
    penalty, pl_mean = gan.path_length_penalty(
        g_params, state.g_state, latents(k_pl_z, pl_batch), pl_cond, k_pl, pl_mean)
    loss = penalty * loss_cfg.pl_weight * loss_cfg.pl_interval
    return loss, (pl_mean, {"loss/pl": penalty})

  def d_loss_keys(key):
    """(reals', fakes', bCR reals', bCR fakes') augmentation keys: r1_loss_fn must
    augment the reals exactly as d_loss_fn does."""
    return jax.random.split(key, 4)

  def d_loss_fn(d_trainable, d_frozen, d_state, reals, fakes, cond, key, do_r1, p):
    d_params = freezing.merge(d_trainable, d_frozen)
    k_real, k_fake, k_bcr_real, k_bcr_fake = d_loss_keys(key)

    def discriminate_reals(images):
      return discriminate(d_params, d_state, images, cond, k_real, p)

    if do_r1:
      # One forward pass on the reals serves both the loss and R1 (taken through
      # DiffAugment, as its authors do): the official "Dreal_Dr1" phase.
      r1, real_logits, d_state = losses.r1_penalty(discriminate_reals, reals,
                                                   return_logits=True, has_aux=True)
    else:
      real_logits, d_state = discriminate_reals(reals)
    fake_logits, d_state = discriminate(d_params, d_state, fakes, cond, k_fake, p)
    loss = gan_loss.discriminator(real_logits, fake_logits)
    metrics = {"loss/d": loss, "scores/real": real_logits.mean(),
               "scores/fake": fake_logits.mean(),
               # ADA's overfitting heuristic r_t averages this over its interval.
               "scores/real_sign": jnp.mean(jnp.sign(real_logits))}
    if bcr_weight:
      bcr_real, d_state = bcr_penalty(d_params, d_state, reals, real_logits, cond,
                                      k_bcr_real, p)
      bcr_fake, d_state = bcr_penalty(d_params, d_state, fakes, fake_logits, cond,
                                      k_bcr_fake, p)
      loss = loss + bcr_weight * (bcr_real + bcr_fake)
      metrics.update({"loss/bcr_real": bcr_real, "loss/bcr_fake": bcr_fake})
    if do_r1:
      loss = loss + weighted_r1(r1)
      metrics["loss/r1"] = r1
    return loss, (d_state, metrics)

  def weighted_r1(r1):
    return r1 * (loss_cfg.r1_gamma / 2) * loss_cfg.r1_interval

  def r1_loss_fn(d_trainable, d_frozen, d_state, reals, cond, key, p):
    """R1 alone, on d_loss_fn's augmentation of the reals (its own pass: see d_grads_fn)."""
    d_params = freezing.merge(d_trainable, d_frozen)
    k_real = d_loss_keys(key)[0]
    r1, _ = losses.r1_penalty(
        lambda images: discriminate(d_params, d_state, images, cond, k_real, p), reals,
        has_aux=True)
    return weighted_r1(r1), r1

  def d_grads_fn(d_trainable, d_frozen, g_params, g_state, data, do_r1, p, d_state, key):
    """D's gradients on one round: fresh reals, z and fakes."""
    k_reals, k_z, k_gen, k_d = jax.random.split(key, 4)
    real_batch = shard(sampler.sample(data, k_reals, round_batch))
    cond = real_batch.get("cond")  # The fakes share the reals' conditions (Algorithm 1).
    fakes, _ = gan.generate(g_params, g_state, latents(k_z, round_batch), cond, k_gen)
    fakes = jax.lax.stop_gradient(fakes)

    reals = real_batch["images"]
    if isinstance(do_r1, bool):
      return jax.grad(d_loss_fn, has_aux=True)(
          d_trainable, d_frozen, d_state, reals, fakes, cond, k_d, do_r1, p)
    # Traced (regularizer_dispatch='cond'): the loss's gradients outside any branch, and
    # R1's in a pass of its own behind lax.cond. Branching the whole D gradient instead
    # put the pass every step runs inside an XLA conditional, which ran at half speed on
    # the CPU (quick: 16.7-17.0 img/s against the static steps' 33.3-34.5; this: 41.7).
    # The price: on R1 steps the reals go through D twice, not once. The R1 pass's D
    # state is dropped: the same forward pass on the same reals as the loss's gave it.
    grads, (new_d_state, metrics) = jax.grad(d_loss_fn, has_aux=True)(
        d_trainable, d_frozen, d_state, reals, fakes, cond, k_d, False, p)

    def add_r1(grads):
      r1_grads, r1 = jax.grad(r1_loss_fn, has_aux=True)(
          d_trainable, d_frozen, d_state, reals, cond, k_d, p)
      return jax.tree.map(jnp.add, grads, r1_grads), {"loss/r1": r1}

    grads, r1_metrics = jax.lax.cond(
        do_r1, add_r1, lambda grads: (grads, _placeholders(R1_METRICS)), grads)
    return grads, (new_d_state, {**metrics, **r1_metrics})

  def d_update(g_params, g_state, data, do_r1, p, carry, key):
    """One discriminator step (Algorithm 1's inner loop)."""
    d_params, d_state, d_opt_state = carry
    d_trainable, d_frozen = gan.trainable(gan_lib.DISCRIMINATOR, d_params)
    d_grads, d_state, metrics = accumulate_rounds(
        functools.partial(d_grads_fn, d_trainable, d_frozen, g_params, g_state, data,
                          do_r1, p), d_trainable, d_state, key, rounds)
    d_updates, d_opt_state = d_tx.update(d_grads, d_opt_state, d_trainable)
    d_params = freezing.merge(optax.apply_updates(d_trainable, d_updates), d_frozen)
    return (d_params, d_state, d_opt_state), metrics

  def phase_keys(step):
    """(G's key, D's key) of a step: both phases read the step before it advances."""
    return jax.random.split(jax.random.fold_in(base_key, step))

  def g_phase(state: TrainState, data, do_pl: bool):
    """The generator update (with path length if `do_pl`) and its EMA."""
    k_g, _ = phase_keys(state.step)
    g_trainable, g_frozen = gan.trainable(gan_lib.GENERATOR, state.g_params)
    g_grads, g_state, g_metrics = accumulate_rounds(
        lambda g_state, key: jax.grad(g_loss_fn, has_aux=True)(
            g_trainable, g_frozen, g_state, state, data, key),
        g_trainable, state.g_state, k_g, rounds)

    def add_path_length(g_grads, pl_mean):
      # Differentiated apart and ordered after the main pass (the barrier holds its
      # inputs until the main gradients exist), so that the activations of the two
      # passes need not be held at once (README, "Memory and throughput").
      g_grads, g_trainable_pl = jax.lax.optimization_barrier((g_grads, g_trainable))
      pl_grads, pl_mean, pl_metrics = accumulate_rounds(
          lambda pl_mean, key: jax.grad(pl_loss_fn, has_aux=True)(
              g_trainable_pl, g_frozen, pl_mean, state, data, key),
          g_trainable_pl, pl_mean, k_g, rounds)
      return jax.tree.map(jnp.add, g_grads, pl_grads), pl_mean, pl_metrics

    pl_mean = state.pl_mean
    if isinstance(do_pl, bool):
      if do_pl:
        g_grads, pl_mean, pl_metrics = add_path_length(g_grads, pl_mean)
        g_metrics = {**g_metrics, **pl_metrics}
    else:  # Traced (regularizer_dispatch='cond'): without it pl_mean passes unchanged.
      g_grads, pl_mean, pl_metrics = jax.lax.cond(
          do_pl, add_path_length,
          lambda g_grads, pl_mean: (g_grads, pl_mean, _placeholders(PL_METRICS)),
          g_grads, pl_mean)
      g_metrics = {**g_metrics, **pl_metrics}
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, g_trainable)
    g_params = freezing.merge(optax.apply_updates(g_trainable, g_updates), g_frozen)
    beta = jnp.where(state.step < ema_start_step, 0.0, ema_beta) if ema_start_step else ema_beta
    g_ema_params = losses.ema_update(state.g_ema_params, g_params, beta)
    return state.replace(g_params=g_params, g_state=g_state, g_ema_params=g_ema_params,
                         g_opt_state=g_opt_state, pl_mean=pl_mean), g_metrics

  def d_phase(state: TrainState, data, do_r1: bool):
    """`d_steps` discriminator updates against the updated G, ADA's p; ends the step."""
    _, k_d = phase_keys(state.step)
    carry = (state.d_params, state.d_state, state.d_opt_state)
    # D's passes on the reals (R1's double backward) need nothing from the G update:
    # unordered, XLA interleaves them with the G passes and holds both sets of
    # activations at once. The barrier releases D's inputs only once G is updated.
    g_params, g_state, carry = jax.lax.optimization_barrier(
        (state.g_params, state.g_state, carry))
    step_d = functools.partial(d_update, g_params, g_state, data, do_r1,
                               state.augment_state.p)
    if d_steps == 1:
      carry, d_metrics = step_d(carry, k_d)
    else:
      # Unrolled: as a rolled loop XLA's CPU backend ran it 27x slower (sngan,quick with
      # 4 D steps: 1.9 img/s rolled, 51.6 unrolled), and d_steps is small.
      carry, d_metrics = jax.lax.scan(step_d, carry, jax.random.split(k_d, d_steps),
                                      unroll=True)
    d_params, d_state, d_opt_state = carry
    augment_state = state.augment_state
    if ada_controller is not None:
      # r_t's statistics stay on device; p moves every `interval` D steps (NOTES §10).
      augment_state = ada.adjust(
          ada.accumulate(augment_state, d_metrics["scores/real_sign"]), ada_controller)
      d_metrics = {**d_metrics, "augment/p": augment_state.p, "augment/rt": augment_state.rt}
    d_metrics = jax.tree.map(jnp.mean, d_metrics)
    return state.replace(step=state.step + 1, d_params=d_params, d_state=d_state,
                         d_opt_state=d_opt_state, augment_state=augment_state), d_metrics

  def train_step(state: TrainState, data, do_r1: bool | jax.Array, do_pl: bool | jax.Array):
    state, g_metrics = g_phase(state, data, do_pl)
    state, d_metrics = d_phase(state, data, do_r1)
    return state, {**g_metrics, **d_metrics}

  out_shardings = (parallel.replicated(mesh),) * 2
  dispatch = config.get("regularizer_dispatch", "static")
  if dispatch == "static":
    return jax.jit(train_step, static_argnames=("do_r1", "do_pl"), donate_argnums=0,
                   out_shardings=out_shardings)
  if dispatch != "cond":
    raise ValueError(f"regularizer_dispatch must be 'static' or 'cond', got {dispatch!r}")
  fixed = constant_regularizers(config)

  def cond_step(state: TrainState, data, do_r1: jax.Array, do_pl: jax.Array):
    # A regulariser the schedule runs on every step or on none is compiled in or out:
    # a branch would only add its other side to the program.
    return train_step(state, data, fixed.get("do_r1", do_r1), fixed.get("do_pl", do_pl))

  return CondTrainStep(jax.jit(cond_step, donate_argnums=0, out_shardings=out_shardings),
                       fixed, parallel.replicated(mesh))


# The metrics only a regulariser's steps have; a 'cond' step computes placeholders for
# them on the other steps, which CondTrainStep drops before anyone sees them.
R1_METRICS = ("loss/r1",)
PL_METRICS = ("loss/pl",)
_METRICS_OF_FLAG = {"do_r1": R1_METRICS, "do_pl": PL_METRICS}


def _placeholders(names) -> dict[str, jax.Array]:
  # The penalties are float32 scalars (losses stay float32 under mixed precision);
  # lax.cond checks that both branches agree.
  return {name: jnp.zeros((), jnp.float32) for name in names}


def constant_regularizers(config: ml_collections.ConfigDict) -> dict[str, bool]:
  """The regulariser flags `regularizer_schedule` gives the same value at every step:
  off (weight 0) or on every step (interval 1). A lazy flag is on at step 0 and off at
  step 1, so those two steps tell."""
  first, second = regularizer_schedule(0, config), regularizer_schedule(1, config)
  return {flag: value for flag, value in first.items() if second[flag] == value}


class CondTrainStep:
  """The train step of `regularizer_dispatch='cond'`: one program for every step of a
  run, the lazy regularisers behind `lax.cond` on traced flags.

  Called, lowered and compiled as the static step is, with Python-bool flags:
  `step(state, data, do_r1=, do_pl=)`; `step.lower(state, data).compile()` gives one
  executable that is called the same way. The metrics of a regulariser that did not run
  are dropped here, on the host, from the flags: the loop averages each metric over the
  steps that have it and takes a non-finite one for divergence.
  `runtime_keywords` tells `progress.FirstCalls` that the flags pick no program.
  """

  runtime_keywords = ("do_r1", "do_pl")

  def __init__(self, program, fixed: dict[str, bool], sharding):
    self.program = program  # program(state, data, do_r1, do_pl), the flags as bool arrays.
    self._fixed = fixed     # Flags compiled in (constant_regularizers).
    self._sharding = sharding
    # Made once, replicated over the mesh as the state is (every process holds them).
    self._flag_values = {value: jax.device_put(np.bool_(value), sharding)
                         for value in (False, True)}

  def __call__(self, state, data, *, do_r1: bool, do_pl: bool):
    flags = {"do_r1": bool(do_r1), "do_pl": bool(do_pl)}
    for flag, value in flags.items():
      if self._fixed.get(flag, value) != value:
        raise ValueError(
            f"this step compiles {flag}={self._fixed[flag]} into every step (the "
            f"config's schedule never changes it): {flag}={value} needs "
            "regularizer_dispatch='static'")
    state, metrics = self.program(state, data, self._flag_values[flags["do_r1"]],
                                  self._flag_values[flags["do_pl"]])
    dropped = {name for flag, value in flags.items() if not value
               for name in _METRICS_OF_FLAG[flag]}
    return state, {k: v for k, v in metrics.items() if k not in dropped}

  def lower(self, state, data) -> "_CondLowered":
    flag = self._flag_values[True]
    return _CondLowered(self.program.lower(state, data, flag, flag), self._fixed,
                        self._sharding)

  def __getattr__(self, name):  # The program's own (_cache_size, eval_shape, ...).
    if name == "program":
      raise AttributeError(name)
    return getattr(self.program, name)


class _CondLowered:
  """`jax.stages.Lowered` of a CondTrainStep; `compile()` keeps the Python-bool calls."""

  def __init__(self, lowered, fixed, sharding):
    self._lowered, self._fixed, self._sharding = lowered, fixed, sharding

  def compile(self) -> CondTrainStep:
    return CondTrainStep(self._lowered.compile(), self._fixed, self._sharding)

  def __getattr__(self, name):  # as_text, compiler_ir, cost_analysis, ...
    if name == "_lowered":
      raise AttributeError(name)
    return getattr(self._lowered, name)


def accumulate_rounds(grad_fn: Callable, params, carry, key: jax.Array, rounds: int):
  """`grad_fn(carry, key) -> (grads, (carry, metrics))` over `rounds` rounds of the batch.

  Each round is a `1/rounds` part of the batch, drawn with its own key
  (`fold_in(key, round)`); the gradients of the rounds' mean losses are averaged (the
  gradient of the batch's mean loss, up to which images share a minibatch-stddev
  group), metrics averaged, and `carry` (model state: w_avg, spectral-norm statistics,
  the path-length mean) threaded through them in order, as the official code's
  `batch_gpu` rounds do. The rounds run one after another (`lax.scan`), so only one
  round's activations are held. One round is the plain gradient, with the unsplit key.
  """
  if rounds == 1:
    grads, (carry, metrics) = grad_fn(carry, key)
    return grads, carry, metrics

  def one_round(accumulated, index):
    grads_sum, carry = accumulated
    grads, (carry, metrics) = grad_fn(carry, jax.random.fold_in(key, index))
    return (jax.tree.map(jnp.add, grads_sum, grads), carry), metrics

  zeros = jax.tree.map(jnp.zeros_like, params)
  (grads_sum, carry), metrics = jax.lax.scan(one_round, (zeros, carry), jnp.arange(rounds))
  grads = jax.tree.map(lambda g: g / rounds, grads_sum)
  return grads, carry, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)


class Setup(NamedTuple):
  """Everything a training run (or a benchmark of one) is made of, ready on the mesh."""
  gan: gan_lib.Gan
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  sampler: sampler_lib.Sampler
  state: TrainState        # Fresh (random init), replicated over the mesh.
  data: Any                # The sampler's data pytree, replicated over the mesh.
  train_step: Callable     # step(state, data, do_r1, do_pl) -> (state, metrics)


def build(config: ml_collections.ConfigDict, mesh, data_cache_dir: str | None = None, *,
          prior_fn: Callable | None = None) -> Setup:
  """Models, optimizers, data and the jitted step for a validated config."""
  gan = builder.build_gan(config)
  g_tx, d_tx = make_optimizers(config, gan)
  sampler = sampler_lib.make_sampler(config, cache_dir=data_cache_dir, prior_fn=prior_fn)
  return Setup(
      gan=gan, g_tx=g_tx, d_tx=d_tx, sampler=sampler,
      state=create_train_state(config, gan, g_tx, d_tx, mesh),
      data=jax.device_put(sampler.data, parallel.replicated(mesh)),
      train_step=make_train_step(config, gan, sampler, g_tx, d_tx, mesh))


def regularizer_schedule(step: int, config: ml_collections.ConfigDict) -> dict[str, bool]:
  """Which lazy regularisers run at (0-based) step."""
  return {
      "do_r1": config.loss.r1_gamma > 0 and step % config.loss.r1_interval == 0,
      "do_pl": config.loss.pl_weight > 0 and step % config.loss.pl_interval == 0,
  }


def make_sample_fn(config, setup: Setup, mesh) -> Callable[[TrainState], jax.Array]:
  """EMA-generator samples from latents (and conditions) fixed for the whole run."""
  key = jax.random.fold_in(jax.random.key(config.seed), SAMPLE_SALT)
  k_z, k_cond, k_noise = jax.random.split(key, 3)
  z = jax.random.normal(k_z, (config.num_sample_images, setup.gan.z_dim))
  cond = jax.jit(setup.sampler.sample_cond, static_argnums=2)(
      setup.data, k_cond, config.num_sample_images)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def sample(state: TrainState) -> jax.Array:
    return setup.gan.sample(state.g_ema_params, state.g_state, z, cond, k_noise)

  return sample


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag the loop checks between steps.

  The loop then saves a checkpoint and exits cleanly (an evaluation in progress is
  abandoned between its batches). A second signal is for users and supervisors who
  really want out: it goes to the previous Python handler (SIGINT's KeyboardInterrupt)
  or, where that is a disposition (SIG_DFL, SIG_IGN), ends the process as SIG_DFL does.
  Inside `uninterrupted()` (a checkpoint save) the second signal waits for its end.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}
    self._held = 0          # Depth of `uninterrupted` blocks.
    self._deferred = None   # (signum, frame) of a second signal held back.

  def _escalate(self, signum, frame):
    previous = self._previous.get(signum)
    if callable(previous):
      previous(signum, frame)
    else:
      signal.signal(signum, signal.SIG_DFL)
      signal.raise_signal(signum)

  @contextlib.contextmanager
  def uninterrupted(self):
    """Holds a second signal back until the block ends. A KeyboardInterrupt raised inside
    Orbax's (blocking part of) save leaves its writer threads waiting, up to 300 s, for
    signals that never come, and the interpreter waits for them before it exits."""
    self._held += 1
    try:
      yield
    finally:
      self._held -= 1
      if not self._held and self._deferred is not None:
        deferred, self._deferred = self._deferred, None
        self._escalate(*deferred)

  def _handle(self, signum, frame):
    if self.requested:
      if self._held:
        self._deferred = (signum, frame)
      else:
        self._escalate(signum, frame)
      return
    self.requested = True
    logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)

  def __enter__(self):
    for signum in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # Not the main thread (e.g. a notebook worker): no handler.
        pass
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


class DivergenceError(errors.UserError, RuntimeError):
  """Training produced a non-finite loss or parameter; nothing non-finite was saved."""


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  """Whether every floating-point value of `tree` is finite: one reduction on device."""
  checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(checks).all() if checks else jnp.array(True)


def _first_non_finite_leaf(tree: Any) -> str:
  """The path of the first non-finite array of `tree` (host side: only after a failed
  `_all_finite`, to name it)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jnp.issubdtype(leaf.dtype, jnp.inexact) and not np.isfinite(jax.device_get(leaf)).all():
      return jax.tree_util.keystr(path)
  return "a value"


def _first_non_finite_metric(history: list[dict[str, jax.Array]],
                             first_step: int) -> tuple[int, str] | None:
  """(step, name) of the earliest non-finite metric; history[i] is step first_step + i + 1."""
  for i, metrics in enumerate(jax.device_get(history)):
    for name in sorted(metrics):
      if not np.isfinite(metrics[name]).all():
        return first_step + i + 1, name
  return None


class _FiniteCheck:
  """Ends the run with DivergenceError before non-finite values are logged, evaluated
  or saved: checked at log, evaluation and save steps only (one device reduction over
  the state and a fetch of the pending metrics), never per step."""

  def __init__(self, checkpointer: checkpoints.Checkpointer):
    self._checkpointer = checkpointer
    self._checked_step = None

  def __call__(self, step: int, state: TrainState,
               history: list[dict[str, jax.Array]], history_first_step: int) -> None:
    if step == self._checked_step:
      return
    bad = _first_non_finite_metric(history, history_first_step)
    if bad is not None:
      self._fail(bad[0], f"{bad[1]} is not finite")
    if not bool(_all_finite(state)):
      self._fail(step, f"{_first_non_finite_leaf(state)} is not finite")
    self._checked_step = step

  def _fail(self, step: int, what: str) -> None:
    latest = self._checkpointer.latest_step
    kept = (f"the newest checkpoint is step {latest} in {self._checkpointer.directory}"
            if latest is not None else "no checkpoint was written yet")
    raise DivergenceError(
        f"training diverged at step {step}: {what}; nothing non-finite was saved and "
        f"{kept}. Lower optim.g_lr / optim.d_lr and run again with "
        "--config.resume_with_changed_config=True, or use a new --workdir")


def _mean_metrics(history: list[dict[str, jax.Array]]) -> dict[str, float]:
  """Averages each metric over the steps that produced it (lazy regularisers skip some)."""
  fetched = jax.device_get(history)
  keys = sorted({k for m in fetched for k in m})
  return {k: float(np.mean([m[k] for m in fetched if k in m])) for k in keys}


def _format_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def fixed_training_images(config, setup: Setup) -> np.ndarray:
  """`num_sample_images` training images drawn once (the sample salt): what the
  samples are compared with in `samples/real_vs_generated.png`."""
  key = jax.random.fold_in(jax.random.key(config.seed), SAMPLE_SALT)
  draw = jax.jit(setup.sampler.sample, static_argnums=2)
  return np.asarray(jax.device_get(draw(setup.data, key, config.num_sample_images)["images"]))


def save_samples(workdir: str, step: int, samples: jax.Array,
                 reals: np.ndarray | None = None) -> str:
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  if jax.process_index() == 0:
    samples = np.asarray(jax.device_get(samples))
    image_lib.save_grid(path, samples)
    if reals is not None:
      # Training images beside the latest samples, so that a fit can be judged at a glance.
      image_lib.save_panels(os.path.join(workdir, "samples", "real_vs_generated.png"),
                            [reals, samples])
  return path


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)


class _PeriodicEvaluation:
  """FID/KID/PR of the EMA generator every eval_every steps; keeps the best-FID checkpoint."""

  def __init__(self, config, setup: Setup, mesh, workdir, writer):
    self._config, self._writer, self._workdir = config, writer, workdir
    self._evaluator = evaluation.Evaluator(
        config, setup.gan, mesh, num_images=config.eval_num_images,
        sample_cond=functools.partial(setup.sampler.sample_cond, setup.data),
        cache_dir=os.path.join(workdir, "data_cache"))
    self._best = checkpoints.Checkpointer(os.path.join(workdir, "best"), keep=1)
    fids = [r[registry.PRIMARY_KEY] for r in writers.read_metrics(workdir)
            if r.get(registry.PRIMARY_KEY) is not None]
    self._best_fid = min(fids, default=float("inf"))  # Survives a resume.
    self._last_step = None

  def __call__(self, step: int, state: TrainState, stop: _StopSignal | None = None) -> None:
    start = time.perf_counter()
    should_stop = (lambda: stop.requested) if stop is not None else None
    scores = self._evaluator(state.g_ema_params, state.g_state, should_stop=should_stop)
    if scores is None:
      logging.warning("Evaluation at step %d abandoned: a stop was requested.", step)
      return
    scores["perf/kimg"] = step * self._config.batch_size / 1000
    scores["perf/eval_seconds"] = time.perf_counter() - start
    self._writer.write_scalars(step, scores)
    logging.info("eval at step %d: %s", step, ", ".join(
        f"{score.display} {scores[f'eval/{score.name}']:{score.log_format}}"
        for score in registry.headline_scores()))
    if scores[registry.PRIMARY_KEY] < self._best_fid:
      self._best_fid = scores[registry.PRIMARY_KEY]
      with stop.uninterrupted() if stop is not None else contextlib.nullcontext():
        self._best.save(step, state, self._config)
    self._last_step = step

  def finish(self, step: int, state: TrainState, stop: _StopSignal | None = None) -> None:
    """Evaluates the final state (once) and reports the convergence metric."""
    if self._last_step != step:
      self(step, state, stop)
    self._writer.flush()
    kimg = evaluation.convergence_from_history(writers.read_metrics(self._workdir))
    summary = {"eval/best_fid": self._best_fid, "eval/convergence_kimg": kimg}
    self._writer.write_scalars(step, summary)
    logging.info("best FID %.2f; FID first within 5%% of its best at %.1f kimg",
                 self._best_fid, kimg)
    self._best.close()

  def close(self) -> None:
    self._best.close()


def make_periodic_evaluation(config, setup: Setup, mesh, workdir, writer):
  if not config.get("eval_every"):
    return None
  return _PeriodicEvaluation(config, setup, mesh, workdir, writer)


def load_init_params(state: TrainState, path: str, setup: Setup, mesh) -> TrainState:
  """Starts from a pretrained checkpoint (as `Gan.transfer` maps it); fresh optimizers."""
  _, pretrained = checkpoints.restore_params(path)
  fresh = jax.device_get({"g_params": state.g_params, "g_state": state.g_state,
                          "d_params": state.d_params, "d_state": state.d_state})
  # Host copies: a transfer may put one array in two fields (AdaFM's frozen part is in
  # G and G_ema), and the step donates its input, which needs distinct buffers.
  loaded = jax.device_get(setup.gan.transfer(fresh, pretrained))
  for name, tree in loaded.items():
    expected = jax.tree.map(lambda x: x.shape, getattr(state, name))
    got = jax.tree.map(np.shape, tree)
    if expected != got:
      raise ValueError(
          f"init_checkpoint {path}: {name} does not fit the configured model "
          f"(checkpoint shapes {got} vs model shapes {expected})")
  g_opt_state, d_opt_state = _opt_states(setup.gan, setup.g_tx, setup.d_tx,
                                         loaded["g_params"], loaded["d_params"])
  state = state.replace(**loaded, g_opt_state=g_opt_state, d_opt_state=d_opt_state)
  return jax.device_put(state, parallel.replicated(mesh))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (or resumes) the GAN described by config, writing everything to workdir."""
  workdir = os.path.abspath(workdir)
  if config.get("init_checkpoint"):
    validation.check_init_checkpoint(config)
    config = checkpoints.inherit_model_config(config, config.init_checkpoint)
  validation.validate_train_config(config, workdir)
  with checkpoints.WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir)


def check_same_experiment(config: ml_collections.ConfigDict, workdir: str,
                          checkpointer: checkpoints.Checkpointer) -> None:
  """A workdir holds one experiment: resuming it with a config that differs in more than
  run length and logging is refused, unless `config.resume_with_changed_config`."""
  saved, source = checkpointer.latest_config(), "its newest checkpoint"
  config_path = os.path.join(workdir, "config.json")
  if saved is None and os.path.exists(config_path):  # A run stopped before its first save.
    with open(config_path, encoding="utf-8") as f:
      saved, source = json.load(f), config_path
  if saved is None:
    return
  differences, one_sided = validation.resume_differences(saved, config)
  if one_sided:  # The code changed, not the experiment: defaults keep the old behaviour.
    logging.warning("Config fields added or removed since %s was written: %s", source,
                    "; ".join(one_sided))
  if not differences:
    return
  if config.get("resume_with_changed_config"):
    logging.warning("Resuming %s with a changed config (resume_with_changed_config=True): "
                    "%s", workdir, "; ".join(differences))
    return
  raise validation.ConfigError(
      f"workdir {workdir} holds another experiment ({source} differs in "
      f"{'; '.join(differences)}): pick a new --workdir, or resume it with these changes "
      "by passing --config.resume_with_changed_config=True")


@contextlib.contextmanager
def _closing(*closables):
  """Closes each (None skipped) however the run ends: a divergence must still let the
  pending (finite) checkpoint finish writing."""
  try:
    yield
  finally:
    for closable in closables:
      if closable is not None:
        closable.close()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """train_and_evaluate once the config is valid and the workdir is this run's."""
  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  check_same_experiment(config, workdir, checkpointer)  # Before anything compiles.
  mesh = parallel.create_mesh()
  logging.info("Training on %d device(s) (%s), global batch %d.", mesh.size,
               jax.devices()[0].platform, config.batch_size)

  setup = build(config, mesh, data_cache_dir=os.path.join(workdir, "data_cache"))
  state = setup.state

  restored = restore_for_resume(checkpointer, state)
  if restored is not None:
    state = restored
    logging.info("Resumed from %s at step %d.", checkpointer.directory, int(state.step))
  elif config.get("init_checkpoint"):
    state = load_init_params(state, config.init_checkpoint, setup, mesh)
    logging.info("Initialised from %s.", config.init_checkpoint)
  write_config(workdir, config)

  sample = make_sample_fn(config, setup, mesh)
  reals = fixed_training_images(config, setup)
  writer = writers.create_writer(workdir)
  evaluate = make_periodic_evaluation(config, setup, mesh, workdir, writer)
  return run_loop(
      config, state, train_step=setup.train_step, data=setup.data,
      schedule=lambda step: regularizer_schedule(step, config),
      write_samples=lambda step, state: save_samples(workdir, step, sample(state), reals),
      checkpointer=checkpointer, evaluate=evaluate, writer=writer)


def run_loop(config: ml_collections.ConfigDict, state: Any, *,
             train_step: Callable[..., tuple[Any, dict[str, jax.Array]]], data: Any,
             write_samples: Callable[[int, Any], None],
             checkpointer: checkpoints.Checkpointer, evaluate: "_PeriodicEvaluation | None",
             writer: Any, schedule: Callable[[int], dict[str, bool]] = lambda step: {},
             what: str = "the train step") -> Any:
  """The loop every training task shares, from `state.step` to `config.total_steps`.

  `train_step(state, data, **schedule(step))` is jitted (each static variant is compiled
  on first use and left out of rates and ETAs); `state.step` counts steps. A run that
  starts at step 0 first writes samples of where it starts (random init or the
  checkpoint). Every `log_every` steps: losses, img/s, ms/step and ETA to the log and `writer`; samples every
  `sample_every`, evaluations every `eval_every`, checkpoints every `checkpoint_every`.
  A non-finite state is never saved (DivergenceError names the first bad leaf). SIGINT or
  SIGTERM stops at the next step boundary with a checkpoint, so rerunning resumes; the
  checkpointer, evaluation and writer are closed however the loop ends.
  """
  step = int(state.step)
  start_step = step
  if step == 0:
    write_samples(0, state)
  history: list[dict[str, jax.Array]] = []
  interval_start, interval_first_step = time.perf_counter(), step
  compiles = progress.FirstCalls(what)  # Timed apart: not in rates and ETAs.
  check_finite = _FiniteCheck(checkpointer)

  with _StopSignal() as stop, _closing(checkpointer, evaluate, writer):
    while step < config.total_steps and not stop.requested:
      state, metrics = compiles.call(train_step, state, data, **schedule(step))
      step += 1
      history.append(metrics)

      if step % config.log_every == 0 or step == config.total_steps:
        check_finite(step, state, history, interval_first_step)
        scalars = _mean_metrics(history)  # Blocks on the device: the interval is timed.
        elapsed = max(time.perf_counter() - interval_start - compiles.take_seconds(), 1e-6)
        steps_done = step - interval_first_step
        scalars["perf/step_time_ms"] = 1000 * elapsed / steps_done
        scalars["perf/img_per_sec"] = config.batch_size * steps_done / elapsed
        scalars["perf/kimg"] = step * config.batch_size / 1000
        writer.write_scalars(step, scalars)
        eta = (config.total_steps - step) * elapsed / steps_done
        losses_text = " ".join(f"{k[len('loss/'):]} {v:.3f}" for k, v in scalars.items()
                               if k.startswith("loss/"))
        logging.info("step %d/%d | %s | %.1f img/s | %.0f ms/step | ETA %s", step,
                     config.total_steps, losses_text, scalars["perf/img_per_sec"],
                     scalars["perf/step_time_ms"], _format_eta(eta))
        history = []
        interval_start, interval_first_step = time.perf_counter(), step

      if step % config.sample_every == 0:
        write_samples(step, state)
      if evaluate and step % config.eval_every == 0:
        check_finite(step, state, history, interval_first_step)  # best/ may save it.
        evaluate(step, state, stop)
      if step % config.checkpoint_every == 0:
        check_finite(step, state, history, interval_first_step)
        with stop.uninterrupted():
          checkpointer.save(step, state, config)

    if stop.requested:
      logging.warning("Stopped at step %d; resume by running the same command again.", step)
    if step > start_step or checkpointer.latest_step is None:
      check_finite(step, state, history, interval_first_step)
      with stop.uninterrupted():
        checkpointer.save(step, state, config)
      if step % config.sample_every:
        write_samples(step, state)
      logging.info("Saved checkpoint %d in %s.", step, checkpointer.directory)
    if evaluate and not stop.requested:
      evaluate.finish(step, state, stop)
  return state
