"""The GAN training loop, one for every model family, sharded over a device mesh.

One train step = one generator update then `config.loss.d_steps` discriminator updates
(StyleGAN2-ADA orders its phases G then D; DIP's Algorithm 1 takes several D steps per
G step, which over a run is the same alternation). Everything inside the step runs on
device: the training batch (and its conditions) is sampled there, synthesized when
pretraining, and so are latents, DiffAugment and the regularisers. The step is jitted
once per (R1, path-length) combination; all randomness is `fold_in(key(seed), step)`,
so a resumed run is bit-identical to an uninterrupted one.

What differs between families (StyleGAN2, the ResNet GANs of AdaFM, SNGAN for DIP) is
behind `gantransfer_jax.models.gan.Gan`: initialisation, the training forward passes
and their state (w_avg, batch norm and spectral-norm statistics), sampling, which
parameters are frozen and how a pretrained checkpoint is transferred.

Deviation from the official StyleGAN2 loop (documented in the README): on lazy-
regularisation steps the regulariser is added to the main loss (scaled by its interval)
and the optimizer makes one update, instead of a separate "reg" phase with its own Adam
update. With one update per step the official learning-rate/beta correction for the
extra phase (mb_ratio) does not apply, so it is not used.
"""

from __future__ import annotations

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
from absl import logging

from gantransfer_jax import augment
from gantransfer_jax import checkpoints
from gantransfer_jax import evaluation
from gantransfer_jax import freezing
from gantransfer_jax import images as image_lib
from gantransfer_jax import losses
from gantransfer_jax import parallel
from gantransfer_jax import progress
from gantransfer_jax import validation
from gantransfer_jax import writers
from gantransfer_jax.data import sampler as sampler_lib
from gantransfer_jax.models import gan as gan_lib

FrozenPrefixes = gan_lib.FrozenPrefixes

# Salts that separate the independent random streams derived from the config seed.
_INIT_SALT = 0
_TRAIN_SALT = 1
_SAMPLE_SALT = 2


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


def frozen_prefixes(config: ml_collections.ConfigDict) -> FrozenPrefixes:
  """What the config freezes (FreezeD, AdaFM's GmDn), per `Gan.frozen_prefixes`."""
  return gan_lib.build_gan(config).frozen_prefixes()


def make_optimizers(config: ml_collections.ConfigDict, gan: gan_lib.Gan | None = None):
  opt = config.optim
  gan = gan or gan_lib.build_gan(config)
  g_tx = gan.generator_optimizer(optax.adam(opt.g_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps))
  d_tx = optax.adam(opt.d_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return g_tx, d_tx


def _trainable(params, prefixes):
  return freezing.split(params, prefixes)[0]


def init_train_state(config, gan: gan_lib.Gan, g_tx, d_tx,
                     frozen: FrozenPrefixes = FrozenPrefixes()) -> TrainState:
  """Fresh parameters and optimizer states (pure; jit it with replicated outputs).

  Optimizer state exists only for the trainable part of each network.
  """
  key = jax.random.fold_in(jax.random.key(config.seed), _INIT_SALT)
  g_vars, d_vars = gan.init(key)
  g_params, g_state = gan_lib.split_variables(g_vars)
  d_params, d_state = gan_lib.split_variables(d_vars)
  freezing.check_prefixes(g_params, frozen.generator)
  freezing.check_prefixes(d_params, frozen.discriminator)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params, g_state=g_state, g_ema_params=g_params,
      d_params=d_params, d_state=d_state,
      g_opt_state=g_tx.init(_trainable(g_params, frozen.generator)),
      d_opt_state=d_tx.init(_trainable(d_params, frozen.discriminator)),
      pl_mean=jnp.zeros((), jnp.float32),
  )


def create_train_state(config, gan, g_tx, d_tx, mesh,
                       frozen: FrozenPrefixes = FrozenPrefixes()) -> TrainState:
  init = functools.partial(init_train_state, config, gan, g_tx, d_tx, frozen)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def make_train_step(config: ml_collections.ConfigDict, gan: gan_lib.Gan,
                    sampler: sampler_lib.Sampler, g_tx, d_tx, mesh,
                    frozen: FrozenPrefixes = FrozenPrefixes()) -> Callable:
  """Returns `step(state, data, do_r1, do_pl) -> (state, metrics)`, jitted, donating state.

  `sampler.sample(data, key, batch)` draws the real batch on device from `data`.
  Gradients are taken only with respect to the trainable part of each network.
  """
  batch = config.batch_size
  loss_cfg = config.loss
  gan_loss = losses.gan_loss(loss_cfg.kind)
  d_steps = loss_cfg.get("d_steps", 1)
  policy = augment.validate_policy(config.augment)
  ema_beta = losses.ema_beta(batch, config.ema_kimg)
  ema_start_step = config.get("ema_start_step", 0)
  base_key = jax.random.fold_in(jax.random.key(config.seed), _TRAIN_SALT)

  def shard(tree):
    return jax.tree.map(lambda x: parallel.shard_batch(x, mesh), tree)

  def latents(key, n):
    return shard(jax.random.normal(key, (n, gan.z_dim)))

  def discriminate(d_params, d_state, images, cond, key):
    if policy:
      images = augment.diff_augment(key, images, policy)
    return gan.discriminate(d_params, d_state, images, cond)

  def g_loss_fn(g_trainable, g_frozen, state, data, key, do_pl):
    g_params = freezing.merge(g_trainable, g_frozen)
    k_cond, k_z, k_gen, k_aug, k_pl = jax.random.split(key, 5)
    cond = shard(sampler.sample_cond(data, k_cond, batch))
    fakes, g_state = gan.generate(g_params, state.g_state, latents(k_z, batch), cond, k_gen)
    logits, _ = discriminate(state.d_params, state.d_state, fakes, cond, k_aug)
    loss_main = gan_loss.generator(logits)
    metrics = {"loss/g": loss_main}
    loss, pl_mean = loss_main, state.pl_mean
    if do_pl:
      k_pl_z, k_pl_cond, k_pl = jax.random.split(k_pl, 3)
      pl_batch = max(batch // loss_cfg.pl_batch_shrink, 1)
      pl_cond = shard(sampler.sample_cond(data, k_pl_cond, pl_batch))
      penalty, pl_mean = gan.path_length_penalty(
          g_params, state.g_state, latents(k_pl_z, pl_batch), pl_cond, k_pl, state.pl_mean)
      loss = loss + penalty * loss_cfg.pl_weight * loss_cfg.pl_interval
      metrics["loss/pl"] = penalty
    return loss, (g_state, pl_mean, metrics)

  def d_loss_fn(d_trainable, d_frozen, d_state, reals, fakes, cond, key, do_r1):
    d_params = freezing.merge(d_trainable, d_frozen)
    k_real, k_fake = jax.random.split(key)

    def discriminate_reals(images):
      return discriminate(d_params, d_state, images, cond, k_real)

    if do_r1:
      # One forward pass on the reals serves both the loss and R1 (taken through
      # DiffAugment, as its authors do): the official "Dreal_Dr1" phase.
      r1, real_logits, d_state = losses.r1_penalty(discriminate_reals, reals,
                                                   return_logits=True, has_aux=True)
    else:
      real_logits, d_state = discriminate_reals(reals)
    fake_logits, d_state = discriminate(d_params, d_state, fakes, cond, k_fake)
    loss = gan_loss.discriminator(real_logits, fake_logits)
    metrics = {"loss/d": loss, "scores/real": real_logits.mean(),
               "scores/fake": fake_logits.mean()}
    if do_r1:
      loss = loss + r1 * (loss_cfg.r1_gamma / 2) * loss_cfg.r1_interval
      metrics["loss/r1"] = r1
    return loss, (d_state, metrics)

  def d_update(g_params, g_state, data, do_r1, carry, key):
    """One discriminator step (Algorithm 1's inner loop): fresh reals, z and fakes."""
    d_params, d_state, d_opt_state = carry
    k_reals, k_z, k_gen, k_d = jax.random.split(key, 4)
    real_batch = shard(sampler.sample(data, k_reals, batch))
    cond = real_batch.get("cond")  # The fakes share the reals' conditions (Algorithm 1).
    fakes, _ = gan.generate(g_params, g_state, latents(k_z, batch), cond, k_gen)
    fakes = jax.lax.stop_gradient(fakes)
    d_trainable, d_frozen = freezing.split(d_params, frozen.discriminator)
    d_grads, (d_state, metrics) = jax.grad(d_loss_fn, has_aux=True)(
        d_trainable, d_frozen, d_state, real_batch["images"], fakes, cond, k_d, do_r1)
    d_updates, d_opt_state = d_tx.update(d_grads, d_opt_state, d_trainable)
    d_params = freezing.merge(optax.apply_updates(d_trainable, d_updates), d_frozen)
    return (d_params, d_state, d_opt_state), metrics

  def train_step(state: TrainState, data, do_r1: bool, do_pl: bool):
    key = jax.random.fold_in(base_key, state.step)
    k_g, k_d = jax.random.split(key)

    g_trainable, g_frozen = freezing.split(state.g_params, frozen.generator)
    g_grads, (g_state, pl_mean, g_metrics) = jax.grad(g_loss_fn, has_aux=True)(
        g_trainable, g_frozen, state, data, k_g, do_pl)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, g_trainable)
    g_params = freezing.merge(optax.apply_updates(g_trainable, g_updates), g_frozen)
    beta = jnp.where(state.step < ema_start_step, 0.0, ema_beta) if ema_start_step else ema_beta
    g_ema_params = losses.ema_update(state.g_ema_params, g_params, beta)

    step_d = functools.partial(d_update, g_params, g_state, data, do_r1)
    carry = (state.d_params, state.d_state, state.d_opt_state)
    if d_steps == 1:
      carry, d_metrics = step_d(carry, k_d)
    else:
      # Unrolled: as a rolled loop XLA's CPU backend ran it 27x slower (sngan,quick with
      # 4 D steps: 1.9 img/s rolled, 51.6 unrolled), and d_steps is small.
      carry, d_metrics = jax.lax.scan(step_d, carry, jax.random.split(k_d, d_steps),
                                      unroll=True)
      d_metrics = jax.tree.map(jnp.mean, d_metrics)
    d_params, d_state, d_opt_state = carry

    new_state = state.replace(
        step=state.step + 1, g_params=g_params, g_state=g_state, g_ema_params=g_ema_params,
        d_params=d_params, d_state=d_state, g_opt_state=g_opt_state,
        d_opt_state=d_opt_state, pl_mean=pl_mean)
    return new_state, {**g_metrics, **d_metrics}

  replicated = parallel.replicated(mesh)
  return jax.jit(train_step, static_argnames=("do_r1", "do_pl"), donate_argnums=0,
                 out_shardings=(replicated, replicated))


class Setup(NamedTuple):
  """Everything a training run (or a benchmark of one) is made of, ready on the mesh."""
  gan: gan_lib.Gan
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  frozen: FrozenPrefixes
  sampler: sampler_lib.Sampler
  state: TrainState        # Fresh (random init), replicated over the mesh.
  data: Any                # The sampler's data pytree, replicated over the mesh.
  train_step: Callable     # step(state, data, do_r1, do_pl) -> (state, metrics)


def build(config: ml_collections.ConfigDict, mesh, data_cache_dir: str | None = None, *,
          prior_fn: Callable | None = None) -> Setup:
  """Models, optimizers, data and the jitted step for a validated config."""
  gan = gan_lib.build_gan(config)
  g_tx, d_tx = make_optimizers(config, gan)
  frozen = gan.frozen_prefixes()
  sampler = sampler_lib.make_sampler(config, cache_dir=data_cache_dir, prior_fn=prior_fn)
  return Setup(
      gan=gan, g_tx=g_tx, d_tx=d_tx, frozen=frozen, sampler=sampler,
      state=create_train_state(config, gan, g_tx, d_tx, mesh, frozen),
      data=jax.device_put(sampler.data, parallel.replicated(mesh)),
      train_step=make_train_step(config, gan, sampler, g_tx, d_tx, mesh, frozen))


def regularizer_schedule(step: int, config: ml_collections.ConfigDict) -> dict[str, bool]:
  """Which lazy regularisers run at (0-based) step."""
  return {
      "do_r1": config.loss.r1_gamma > 0 and step % config.loss.r1_interval == 0,
      "do_pl": config.loss.pl_weight > 0 and step % config.loss.pl_interval == 0,
  }


def make_sample_fn(config, setup: Setup, mesh) -> Callable[[TrainState], jax.Array]:
  """EMA-generator samples from latents (and conditions) fixed for the whole run."""
  key = jax.random.fold_in(jax.random.key(config.seed), _SAMPLE_SALT)
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

  The loop then saves a checkpoint and exits cleanly; a second signal falls back to
  the previous handler (e.g. KeyboardInterrupt) for users who really want out.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.requested:
      previous = self._previous.get(signum)
      if callable(previous):
        previous(signum, None)
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


def _save_samples(workdir: str, step: int, samples: jax.Array) -> str:
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  if jax.process_index() == 0:
    image_lib.save_grid(path, np.asarray(jax.device_get(samples)))
  return path


def _write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
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
    fids = [r["eval/fid"] for r in writers.read_metrics(workdir)
            if r.get("eval/fid") is not None]
    self._best_fid = min(fids, default=float("inf"))  # Survives a resume.
    self._last_step = None

  def __call__(self, step: int, state: TrainState) -> None:
    start = time.perf_counter()
    scores = self._evaluator(state.g_ema_params, state.g_state)
    scores["perf/kimg"] = step * self._config.batch_size / 1000
    scores["perf/eval_seconds"] = time.perf_counter() - start
    self._writer.write_scalars(step, scores)
    logging.info("eval at step %d: FID %.2f, KID %.4f, precision %.3f, recall %.3f", step,
                 scores["eval/fid"], scores["eval/kid"], scores["eval/precision"],
                 scores["eval/recall"])
    if scores["eval/fid"] < self._best_fid:
      self._best_fid = scores["eval/fid"]
      self._best.save(step, state, self._config)
    self._last_step = step

  def finish(self, step: int, state: TrainState) -> None:
    """Evaluates the final state (once) and reports the convergence metric."""
    if self._last_step != step:
      self(step, state)
    self._writer.flush()
    kimg = evaluation.convergence_from_history(writers.read_metrics(self._workdir))
    summary = {"eval/best_fid": self._best_fid, "eval/convergence_kimg": kimg}
    self._writer.write_scalars(step, summary)
    logging.info("best FID %.2f; FID first within 5%% of its best at %.1f kimg",
                 self._best_fid, kimg)
    self._best.close()


def _make_periodic_evaluation(config, setup: Setup, mesh, workdir, writer):
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
  frozen = setup.frozen
  state = state.replace(
      **loaded,
      g_opt_state=setup.g_tx.init(_trainable(loaded["g_params"], frozen.generator)),
      d_opt_state=setup.d_tx.init(_trainable(loaded["d_params"], frozen.discriminator)))
  return jax.device_put(state, parallel.replicated(mesh))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (or resumes) the GAN described by config, writing everything to workdir."""
  workdir = os.path.abspath(workdir)
  if config.get("init_checkpoint"):
    config = checkpoints.inherit_model_config(config, config.init_checkpoint)
  validation.validate_train_config(config, workdir)
  mesh = parallel.create_mesh()
  logging.info("Training on %d device(s) (%s), global batch %d.", mesh.size,
               jax.devices()[0].platform, config.batch_size)

  setup = build(config, mesh, data_cache_dir=os.path.join(workdir, "data_cache"))
  state = setup.state

  checkpointer = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
  restored = checkpointer.restore_latest(state)
  if restored is not None:
    state = restored
    logging.info("Resumed from %s at step %d.", checkpointer.directory, int(state.step))
  elif config.get("init_checkpoint"):
    state = load_init_params(state, config.init_checkpoint, setup, mesh)
    logging.info("Initialised from %s.", config.init_checkpoint)
  _write_config(workdir, config)

  sample = make_sample_fn(config, setup, mesh)
  writer = writers.create_writer(workdir)
  evaluate = _make_periodic_evaluation(config, setup, mesh, workdir, writer)
  step = int(state.step)
  start_step = step
  history: list[dict[str, jax.Array]] = []
  compiles = progress.FirstCalls("the train step")  # Timed apart: not in rates and ETAs.
  interval_start, interval_first_step = time.perf_counter(), step

  with _StopSignal() as stop:
    while step < config.total_steps and not stop.requested:
      state, metrics = compiles.call(setup.train_step, state, setup.data,
                                     **regularizer_schedule(step, config))
      step += 1
      history.append(metrics)

      if step % config.log_every == 0 or step == config.total_steps:
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
        _save_samples(workdir, step, sample(state))
      if evaluate and step % config.eval_every == 0:
        evaluate(step, state)
      if step % config.checkpoint_every == 0:
        checkpointer.save(step, state, config)

    if stop.requested:
      logging.warning("Stopped at step %d; resume by running the same command again.", step)
    if step > start_step or checkpointer.latest_step is None:
      checkpointer.save(step, state, config)
      if step % config.sample_every:
        _save_samples(workdir, step, sample(state))
      logging.info("Saved checkpoint %d in %s.", step, checkpointer.directory)
    if evaluate and not stop.requested:
      evaluate.finish(step, state)
  checkpointer.close()
  writer.close()
  return state
    validation.check_init_checkpoint(config)
