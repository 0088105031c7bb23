"""The GAN training loop: StyleGAN2 with on-device data, sharded over a device mesh.

One train step = one generator update then one discriminator update, as the
official StyleGAN2-ADA loop orders its phases. Everything inside the step runs on
device: the training images are sampled there (synthesized for pretraining), and
so are latents, DiffAugment and the regularisers. The step is jitted once per
(R1, path-length) combination; all randomness is `fold_in(key(seed), step)`, so a
resumed run is bit-identical to an uninterrupted one.

Deviation from the official loop (documented in the README): on lazy-regularisation
steps the regulariser is added to the main loss (scaled by its interval) and the
optimizer makes one update, instead of a separate "reg" phase with its own Adam
update. With one update per step the official learning-rate/beta correction for
the extra phase (mb_ratio) does not apply, so it is not used.
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
from gantransfer_jax import validation
from gantransfer_jax import writers
from gantransfer_jax.data import sampler as sampler_lib
from gantransfer_jax.models import build_models
from gantransfer_jax.models import stylegan2

# Salts that separate the independent random streams derived from the config seed.
_INIT_SALT = 0
_TRAIN_SALT = 1
_SAMPLE_SALT = 2


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # Completed steps (int32 scalar).
  g_params: Any
  g_stats: Any           # {'w_avg': [w_dim]}: the running mean of W used for truncation.
  g_ema_params: Any
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  pl_mean: jax.Array     # Running mean of path lengths (path-length regulariser).


class FrozenPrefixes(NamedTuple):
  """Parameter-path prefixes that stay fixed (see gantransfer_jax.freezing)."""
  generator: tuple[tuple[str, ...], ...] = ()
  discriminator: tuple[tuple[str, ...], ...] = ()


def frozen_prefixes(config: ml_collections.ConfigDict) -> FrozenPrefixes:
  """FreezeD: the `config.freeze_d` highest-resolution discriminator blocks (NOTES §6)."""
  num_frozen = config.get("freeze_d", 0)
  blocks = stylegan2.discriminator_block_names(config.resolution)
  if not 0 <= num_frozen < len(blocks):
    raise ValueError(f"freeze_d must be in [0, {len(blocks) - 1}] at resolution "
                     f"{config.resolution} (blocks {', '.join(blocks)}), got {num_frozen}")
  return FrozenPrefixes(discriminator=tuple((name,) for name in blocks[:num_frozen]))


def make_optimizers(config: ml_collections.ConfigDict):
  opt = config.optim
  g_tx = optax.adam(opt.g_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  d_tx = optax.adam(opt.d_lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return g_tx, d_tx


def init_train_state(config, generator, discriminator, g_tx, d_tx,
                     frozen: FrozenPrefixes = FrozenPrefixes()) -> TrainState:
  """Fresh parameters and optimizer states (pure; jit it with replicated outputs).

  Optimizer state exists only for the trainable part of each network.
  """
  key = jax.random.fold_in(jax.random.key(config.seed), _INIT_SALT)
  k_g, k_noise, k_d = jax.random.split(key, 3)
  z = jnp.zeros((1, generator.z_dim), jnp.float32)
  g_vars = generator.init({"params": k_g, "noise": k_noise}, z)
  images = jnp.zeros((1, config.resolution, config.resolution, 3), jnp.float32)
  d_vars = discriminator.init(k_d, images)
  freezing.check_prefixes(g_vars["params"], frozen.generator)
  freezing.check_prefixes(d_vars["params"], frozen.discriminator)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_vars["params"],
      g_stats=g_vars["stats"],
      g_ema_params=g_vars["params"],
      d_params=d_vars["params"],
      g_opt_state=g_tx.init(freezing.split(g_vars["params"], frozen.generator)[0]),
      d_opt_state=d_tx.init(freezing.split(d_vars["params"], frozen.discriminator)[0]),
      pl_mean=jnp.zeros((), jnp.float32),
  )


def create_train_state(config, generator, discriminator, g_tx, d_tx, mesh,
                       frozen: FrozenPrefixes = FrozenPrefixes()) -> TrainState:
  init = functools.partial(init_train_state, config, generator, discriminator, g_tx, d_tx,
                           frozen)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def make_train_step(config: ml_collections.ConfigDict, generator, discriminator,
                    sample_reals: Callable, g_tx, d_tx, mesh,
                    frozen: FrozenPrefixes = FrozenPrefixes()) -> Callable:
  """Returns `step(state, data, do_r1, do_pl) -> (state, metrics)`, jitted, donating state.

  `sample_reals(data, key, batch)` draws the real batch on device from `data`.
  Gradients are taken only with respect to the trainable part of each network.
  """
  batch = config.batch_size
  loss_cfg = config.loss
  policy = augment.validate_policy(config.augment)
  ema_beta = losses.ema_beta(batch, config.ema_kimg)
  base_key = jax.random.fold_in(jax.random.key(config.seed), _TRAIN_SALT)

  def latents(key, n):
    return parallel.shard_batch(jax.random.normal(key, (n, generator.z_dim)), mesh)

  def discriminate(d_params, images, key):
    if policy:
      images = augment.diff_augment(key, images, policy)
    return discriminator.apply({"params": d_params}, images)

  def map_latents(g_vars, key, n, update_w_avg):
    """z -> ws with style mixing, as the official loss does for every generated batch."""
    k_z, k_z2, k_mix = jax.random.split(key, 3)
    (ws, mutated) = generator.apply(
        g_vars, latents(k_z, n), update_w_avg=update_w_avg,
        method=generator.map, mutable=["stats"])
    if loss_cfg.style_mixing_prob > 0:
      ws_other = generator.apply(g_vars, latents(k_z2, n), method=generator.map)
      ws = stylegan2.style_mix(k_mix, ws, ws_other, loss_cfg.style_mixing_prob)
    return ws, mutated["stats"]

  def synthesize(g_vars, ws, key):
    return generator.apply(g_vars, ws, method=generator.synthesize, rngs={"noise": key})

  def g_loss_fn(g_trainable, g_frozen, state, key, do_pl):
    g_params = freezing.merge(g_trainable, g_frozen)
    k_map, k_noise, k_aug, k_pl = jax.random.split(key, 4)
    g_vars = {"params": g_params, "stats": state.g_stats}
    ws, g_stats = map_latents(g_vars, k_map, batch, update_w_avg=True)
    fakes = synthesize(g_vars, ws, k_noise)
    loss_main = losses.g_nonsaturating_loss(discriminate(state.d_params, fakes, k_aug))
    metrics = {"loss/g": loss_main}
    loss, pl_mean = loss_main, state.pl_mean
    if do_pl:
      k_pl_map, k_pl_noise, k_pl_dir = jax.random.split(k_pl, 3)
      pl_batch = max(batch // loss_cfg.pl_batch_shrink, 1)
      pl_ws, _ = map_latents(g_vars, k_pl_map, pl_batch, update_w_avg=False)
      penalty, pl_mean = losses.path_length_penalty(
          lambda w: synthesize(g_vars, w, k_pl_noise), pl_ws, k_pl_dir, state.pl_mean,
          decay=loss_cfg.pl_decay)
      loss = loss + penalty * loss_cfg.pl_weight * loss_cfg.pl_interval
      metrics["loss/pl"] = penalty
    return loss, (g_stats, pl_mean, metrics)

  def d_loss_fn(d_trainable, d_frozen, reals, fakes, key, do_r1):
    d_params = freezing.merge(d_trainable, d_frozen)
    k_real, k_fake = jax.random.split(key)
    discriminate_reals = functools.partial(discriminate, d_params, key=k_real)
    if do_r1:
      # One forward pass on the reals serves both the loss and R1 (taken through
      # DiffAugment, as its authors do): the official "Dreal_Dr1" phase.
      r1, real_logits = losses.r1_penalty(discriminate_reals, reals, return_logits=True)
    else:
      real_logits = discriminate_reals(reals)
    fake_logits = discriminate(d_params, fakes, k_fake)
    loss = losses.d_logistic_loss(real_logits, fake_logits)
    metrics = {"loss/d": loss, "scores/real": real_logits.mean(),
               "scores/fake": fake_logits.mean()}
    if do_r1:
      loss = loss + r1 * (loss_cfg.r1_gamma / 2) * loss_cfg.r1_interval
      metrics["loss/r1"] = r1
    return loss, metrics

  def train_step(state: TrainState, data, do_r1: bool, do_pl: bool):
    key = jax.random.fold_in(base_key, state.step)
    k_g, k_reals, k_fake_map, k_fake_noise, k_d = jax.random.split(key, 5)

    g_trainable, g_frozen = freezing.split(state.g_params, frozen.generator)
    g_grads, (g_stats, pl_mean, g_metrics) = jax.grad(g_loss_fn, has_aux=True)(
        g_trainable, g_frozen, state, k_g, do_pl)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, g_trainable)
    g_params = freezing.merge(optax.apply_updates(g_trainable, g_updates), g_frozen)
    g_ema_params = losses.ema_update(state.g_ema_params, g_params, ema_beta)

    g_vars = {"params": g_params, "stats": g_stats}
    ws, _ = map_latents(g_vars, k_fake_map, batch, update_w_avg=False)
    fakes = jax.lax.stop_gradient(synthesize(g_vars, ws, k_fake_noise))
    reals = parallel.shard_batch(sample_reals(data, k_reals, batch), mesh)
    d_trainable, d_frozen = freezing.split(state.d_params, frozen.discriminator)
    d_grads, d_metrics = jax.grad(d_loss_fn, has_aux=True)(
        d_trainable, d_frozen, reals, fakes, k_d, do_r1)
    d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, d_trainable)
    d_params = freezing.merge(optax.apply_updates(d_trainable, d_updates), d_frozen)

    new_state = state.replace(
        step=state.step + 1, g_params=g_params, g_stats=g_stats, g_ema_params=g_ema_params,
        d_params=d_params, g_opt_state=g_opt_state, d_opt_state=d_opt_state, pl_mean=pl_mean)
    return new_state, {**g_metrics, **d_metrics}

  replicated = parallel.replicated(mesh)
  return jax.jit(train_step, static_argnames=("do_r1", "do_pl"), donate_argnums=0,
                 out_shardings=(replicated, replicated))


class Setup(NamedTuple):
  """Everything a training run (or a benchmark of one) is made of, ready on the mesh."""
  generator: Any
  discriminator: Any
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  frozen: FrozenPrefixes
  state: TrainState        # Fresh (random init), replicated over the mesh.
  data: Any                # The sampler's data pytree, replicated over the mesh.
  train_step: Callable     # step(state, data, do_r1, do_pl) -> (state, metrics)


def build(config: ml_collections.ConfigDict, mesh, data_cache_dir: str | None = None) -> Setup:
  """Models, optimizers, data and the jitted step for a validated config."""
  generator, discriminator = build_models(config)
  g_tx, d_tx = make_optimizers(config)
  frozen = frozen_prefixes(config)
  sampler = sampler_lib.make_sampler(config, cache_dir=data_cache_dir)
  return Setup(
      generator=generator, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx, frozen=frozen,
      state=create_train_state(config, generator, discriminator, g_tx, d_tx, mesh, frozen),
      data=jax.device_put(sampler.data, parallel.replicated(mesh)),
      train_step=make_train_step(config, generator, discriminator, sampler.sample, g_tx,
                                 d_tx, mesh, frozen))


def regularizer_schedule(step: int, config: ml_collections.ConfigDict) -> dict[str, bool]:
  """Which lazy regularisers run at (0-based) step."""
  return {
      "do_r1": config.loss.r1_gamma > 0 and step % config.loss.r1_interval == 0,
      "do_pl": config.loss.pl_weight > 0 and step % config.loss.pl_interval == 0,
  }


def make_sample_fn(config, generator, mesh) -> Callable[[TrainState], jax.Array]:
  """EMA-generator samples from latents fixed for the whole run (and its resumptions)."""
  key = jax.random.fold_in(jax.random.key(config.seed), _SAMPLE_SALT)
  k_z, k_noise = jax.random.split(key)
  z = jax.random.normal(k_z, (config.num_sample_images, generator.z_dim))
  psi = config.stylegan2.truncation_psi

  @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
  def sample(state: TrainState) -> jax.Array:
    g_vars = {"params": state.g_ema_params, "stats": state.g_stats}
    return generator.apply(g_vars, z, truncation_psi=psi, rngs={"noise": k_noise})

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

  def __init__(self, config, generator, mesh, workdir, writer):
    self._config, self._writer, self._workdir = config, writer, workdir
    self._evaluator = evaluation.Evaluator(
        config, generator, mesh, num_images=config.eval_num_images,
        cache_dir=os.path.join(workdir, "data_cache"))
    self._best = checkpoints.Checkpointer(os.path.join(workdir, "best"), keep=1)
    fids = [r["eval/fid"] for r in writers.read_metrics(workdir)
            if r.get("eval/fid") is not None]
    self._best_fid = min(fids, default=float("inf"))  # Survives a resume.
    self._last_step = None

  def __call__(self, step: int, state: TrainState) -> None:
    start = time.perf_counter()
    scores = self._evaluator(state.g_ema_params, state.g_stats)
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


def _make_periodic_evaluation(config, generator, mesh, workdir, writer):
  if not config.get("eval_every"):
    return None
  return _PeriodicEvaluation(config, generator, mesh, workdir, writer)


def load_init_params(state: TrainState, path: str, frozen: FrozenPrefixes, g_tx, d_tx,
                     mesh) -> TrainState:
  """Starts from a pretrained checkpoint's G, G_ema, D (and w_avg); fresh optimizers."""
  _, params = checkpoints.restore_params(path)
  loaded = {"g_params": params["generator"], "g_ema_params": params["generator_ema"],
            "g_stats": params["generator_stats"], "d_params": params["discriminator"]}
  for name, tree in loaded.items():
    expected = jax.tree.map(lambda x: x.shape, getattr(state, name))
    got = jax.tree.map(lambda x: np.shape(x), tree)
    if expected != got:
      raise ValueError(
          f"init_checkpoint {path}: {name} does not fit the configured model "
          f"(checkpoint shapes {got} vs model shapes {expected})")
  state = state.replace(
      **loaded,
      g_opt_state=g_tx.init(freezing.split(loaded["g_params"], frozen.generator)[0]),
      d_opt_state=d_tx.init(freezing.split(loaded["d_params"], frozen.discriminator)[0]))
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
    state = load_init_params(state, config.init_checkpoint, setup.frozen, setup.g_tx,
                             setup.d_tx, mesh)
    logging.info("Initialised from %s.", config.init_checkpoint)
  _write_config(workdir, config)

  sample = make_sample_fn(config, setup.generator, mesh)
  writer = writers.create_writer(workdir)
  evaluate = _make_periodic_evaluation(config, setup.generator, mesh, workdir, writer)
  step = int(state.step)
  start_step = step
  history: list[dict[str, jax.Array]] = []
  interval_start, interval_first_step = time.perf_counter(), step

  with _StopSignal() as stop:
    while step < config.total_steps and not stop.requested:
      state, metrics = setup.train_step(state, setup.data, **regularizer_schedule(step, config))
      step += 1
      history.append(metrics)

      if step % config.log_every == 0 or step == config.total_steps:
        scalars = _mean_metrics(history)  # Blocks on the device: the interval is timed.
        elapsed = time.perf_counter() - interval_start
        steps_done = step - interval_first_step
        scalars["perf/step_time_ms"] = 1000 * elapsed / steps_done
        scalars["perf/img_per_sec"] = config.batch_size * steps_done / elapsed
        scalars["perf/kimg"] = step * config.batch_size / 1000
        writer.write_scalars(step, scalars)
        eta = (config.total_steps - step) * elapsed / steps_done
        logging.info("step %d/%d | %.1f img/s | %.0f ms/step | ETA %s", step,
                     config.total_steps, scalars["perf/img_per_sec"],
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
