r"""The 2D study of "When, Why, and Which Pretrained GANs Are Useful?" (paper 004, §2).

`python -m gantransfer_jax.main --config=configs/toy2d.py --workdir=/tmp/toy2d`

Stages (NOTES §5 gives the recipe; the authors' playground code fills the gaps):
  1. Pretrain a GAN on Source-I (a wide ring around the target modes) and one on
     Source-II (3 of the 10 target modes), keeping the Source-I state after every
     `checkpoint_interval(config)` G steps: the 100 starting points of the dissection.
  2. Measure each checkpoint's starting point: recall (and precision) of its generator
     and the gradient-field similarity of its discriminator.
  3. Finetune on the target (10 Gaussians on a circle) from Source-I, Source-II and a
     random initialisation (Figure 2, `w1` per initialisation) and from every checkpoint;
     correlate the starting-point measures with the finetuned W1 (Figure 3).

Runs are vmapped (`toy2d_gan`): both pretrainings are one computation, and all 3 + 100
finetunings are another, cut into equal jitted chunks so progress can be logged between
calls. Every random choice comes from `jax.random.fold_in` of `jax.random.key(seed)` by
stage name, then run index, then G step. The networks, losses, BatchNorm and EMA
conventions are in `toy2d_gan`; the metrics in `analysis/toy2d_metrics.py`, the figures
in `analysis/toy2d_figures.py`.

Dissection details from the authors' notebook: the checkpoints come from the Source-I
run only (here after 50, 100, ..., 5000 G steps; theirs after 1, 51, ..., 4951); recall,
precision and the gradient similarity use 1000 generated and 1000 target points; the
golden field points at the nearest of the 10 target centres.

All sampling and evaluation run G in inference mode (the raw generator for W1, recall
and the figures, as the authors do; the EMA generator's final W1 is reported as
`w1_ema`).

W1 is exact (an assignment problem, see `toy2d_metrics.wasserstein1`) between generated
and fresh target points: 2048 vs 2048 for the three initialisations (after the last
finetuning step, also for their EMA generators and the two pretrained generators); for
the dissection `config.dissection.w1_num_points` (1024 by default: 400 assignment
problems of size 2048 took over an hour on 2 busy cores), measured every
`eval_every` finetuning steps. The headline W1 of a dissection run is the one after the
last step ('final'); the authors' notebook correlates the minimum over the evaluations
instead ('min'), which the JSON also reports. Generated and target points go to
`toy2d_samples.npz` before W1 is computed, so W1 can be redone offline.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gantransfer_jax import progress
from gantransfer_jax import writers
from gantransfer_jax.analysis import toy2d_figures as figures
from gantransfer_jax.analysis import toy2d_metrics as metrics
from gantransfer_jax.tasks import toy2d_gan as gan
from gantransfer_jax.tasks.toy2d_gan import Distribution
from gantransfer_jax.tasks.toy2d_gan import GanSpec
from gantransfer_jax.tasks.toy2d_gan import GanState
from gantransfer_jax.tasks.toy2d_gan import Snapshot

INITIALISATIONS = ("source_i", "source_ii", "random")
JSON_NAME = "toy2d.json"
FIGURE2_NAME = "toy2d_fig2.png"
FIGURE3_NAME = "toy2d_fig3.png"
SAMPLES_NAME = "toy2d_samples.npz"
# Paper 004, Fig. 3 caption. The authors' notebook computes the gradient similarity in
# the loss-gradient convention (see toy2d_metrics), so -0.73 belongs to that convention.
PAPER_PEARSONS = {"recall_w1": -0.84, "gradsim_loss_gradient_w1": -0.73}


def _log(message: str, *args: Any) -> None:
  """Progress lines: absl INFO under `app.run`, stdout when called as a library."""
  if flags.FLAGS.is_parsed():
    logging.info(message, *args)
  else:
    print(message % args if args else message, flush=True)


def _counter(what: str, total: int, unit: str = "steps") -> progress.Counter:
  return progress.Counter(what, total, unit=unit, log=functools.partial(_log, "%s"))


def _chunk_size(total: int, chunk: int, *stops: int) -> int:
  """The longest chunk <= `chunk` that divides `total` and every positive stop interval
  (checkpoints, evaluations), so all jitted calls share one static length."""
  return math.gcd(total, chunk, *(stop for stop in stops if stop > 0))


# ---------------------------------------------------------------------- evaluation


def _start_metrics(snapshot: Snapshot, key: jax.Array, *, spec: GanSpec, target: Distribution,
                   num_points: int, k: int) -> dict[str, jax.Array]:
  """Recall/precision of the starting G and gradient-field similarity of the starting D."""
  fake_key, real_key = jax.random.split(key)
  fake = gan.generate(snapshot.g_params, snapshot.g_stats, fake_key, spec=spec,
                      num_points=num_points)
  real = target.sample(real_key, num_points)
  precision, recall = metrics.precision_recall(real, fake, k)
  logit_fn = functools.partial(spec.discriminator.apply, {"params": snapshot.d_params})
  centres = target.centres()
  return {
      "recall": recall,
      "precision": precision,
      "gradsim_descent": metrics.discriminator_gradient_similarity(
          logit_fn, fake, centres, "descent"),
      "gradsim_loss_gradient": metrics.discriminator_gradient_similarity(
          logit_fn, fake, centres, "loss_gradient"),
  }


@functools.partial(jax.jit, static_argnames=("spec", "target", "num_points", "k"))
def start_metrics_many(snapshots: Snapshot, keys: jax.Array, *, spec: GanSpec,
                       target: Distribution, num_points: int, k: int) -> dict[str, jax.Array]:
  """`_start_metrics` of stacked snapshots; lax.map in batches of 10 bounds the memory of
  the [num_points, num_points] distance matrices."""
  fn = functools.partial(_start_metrics, spec=spec, target=target, num_points=num_points, k=k)
  return jax.lax.map(lambda args: fn(*args), (snapshots, keys), batch_size=10)


def evaluation_steps(config: ml_collections.ConfigDict) -> list[int]:
  """Finetuning steps after which W1 is measured: every `eval_every` and the last."""
  total = config.finetune_steps
  if config.eval_every <= 0:
    return [total]
  return sorted(set(range(config.eval_every, total + 1, config.eval_every)) | {total})


def w1_table(fakes: dict[int, np.ndarray], reals: dict[int, np.ndarray], label: str,
             num_threads: int) -> dict[int, np.ndarray]:
  """`metrics.w1_table` with a progress line."""
  num_points = next(iter(fakes.values())).shape[1]
  num_problems = sum(points.shape[0] for points in fakes.values())
  with _counter(f"W1 {label} ({num_points} vs {num_points} points)", num_problems,
                unit="problems") as counter:
    return metrics.w1_table(fakes, reals, num_threads, on_done=lambda _: counter.update())


# -------------------------------------------------------------------------- stages


def checkpoint_interval(config: ml_collections.ConfigDict) -> int:
  """G steps between dissection checkpoints: `dissection.checkpoint_every`, or when that
  is 0, `pretrain_steps` spread evenly over `dissection.num_checkpoints`."""
  dissection = config.dissection
  every = dissection.checkpoint_every or config.pretrain_steps // dissection.num_checkpoints
  if every <= 0 or every * dissection.num_checkpoints > config.pretrain_steps:
    raise ValueError(
        f"{dissection.num_checkpoints} checkpoints every {every} G steps do not fit in "
        f"pretrain_steps={config.pretrain_steps}")
  return every


def pretrain(config: ml_collections.ConfigDict, spec: GanSpec, root: jax.Array,
             sources: dict[str, Distribution],
             snapshot_source: str) -> tuple[dict[str, Snapshot], list[Snapshot]]:
  """Pretrains one GAN per source, all vmapped together.

  Returns the final snapshot per source and the snapshots of `snapshot_source` after
  every `checkpoint_interval(config)` G steps (the first `dissection.num_checkpoints`).
  """
  names, datas = tuple(sources), tuple(sources.values())
  every = checkpoint_interval(config)
  total = config.pretrain_steps
  states = jax.vmap(functools.partial(gan.state_from_snapshot, spec=spec))(gan.stack(
      [gan.init_snapshot(gan.stage_key(root, f"init/{name}"), spec) for name in names]))
  keys = jnp.stack([gan.stage_key(root, f"pretrain/{name}") for name in names])
  data_indices = jnp.arange(len(names))
  chunk = _chunk_size(total, config.chunk_steps, every)
  counter = _counter(f"pretrain {' + '.join(names)} (vmapped)", total)
  _log("pretrain: %s, %d G steps in jitted chunks of %d (the first includes compiling)",
       ", ".join(names), total, chunk)
  snapshots, watched = [], names.index(snapshot_source)
  for done in range(chunk, total + 1, chunk):
    states, chunk_metrics = gan.train_chunk_many(states, keys, data_indices, spec=spec,
                                                 datas=datas, num_steps=chunk)
    if done % every == 0 and len(snapshots) < config.dissection.num_checkpoints:
      snapshots.append(gan.index(states, watched).snapshot())
    counter.update(chunk, " ".join(  # Fetching the losses also times the chunk.
        f"{name}: d_loss {float(chunk_metrics['d_loss'][i]):.3f} "
        f"g_loss {float(chunk_metrics['g_loss'][i]):.3f}" for i, name in enumerate(names)))
  counter.finish()
  return {name: gan.index(states, i).snapshot() for i, name in enumerate(names)}, snapshots


def finetune(config: ml_collections.ConfigDict, spec: GanSpec, starts: Snapshot,
             keys: jax.Array, target: Distribution,
             on_evaluation: Callable[[int, GanState], None]) -> GanState:
  """Finetunes stacked starting snapshots on `target`, all runs as one vmapped scan;
  calls `on_evaluation(step, states)` after each of `evaluation_steps(config)`."""
  num_runs = keys.shape[0]
  total = config.finetune_steps
  states = jax.vmap(functools.partial(gan.state_from_snapshot, spec=spec))(starts)
  data_indices = jnp.zeros((num_runs,), jnp.int32)
  eval_steps = set(evaluation_steps(config))
  chunk = _chunk_size(total, config.chunk_steps, config.eval_every)
  counter = _counter(f"finetune ({num_runs} runs vmapped)", total)
  _log("finetune: %d runs x %d G steps in jitted chunks of %d (the first includes compiling)",
       num_runs, total, chunk)
  for done in range(chunk, total + 1, chunk):
    states, chunk_metrics = gan.train_chunk_many(states, keys, data_indices, spec=spec,
                                                 datas=(target,), num_steps=chunk)
    if done in eval_steps:
      on_evaluation(done, states)
    counter.update(chunk, "mean d_loss %.3f g_loss %.3f" % (
        float(jnp.mean(chunk_metrics["d_loss"])), float(jnp.mean(chunk_metrics["g_loss"]))))
  counter.finish()
  return states


# ------------------------------------------------------------------------------ run


def _floats(values) -> list[float]:
  return [float(v) for v in np.asarray(values)]


def _samples_for_w1(root: jax.Array, label: str, step: int, g_params, g_stats, spec: GanSpec,
                    target: Distribution, num_points: int) -> tuple[np.ndarray, np.ndarray]:
  """Generated and fresh target points [runs, num_points, 2] of stacked generators."""
  num_runs = jax.tree.leaves(g_params)[0].shape[0]
  keys = gan.run_keys(jax.random.fold_in(gan.stage_key(root, f"evaluate/{label}"), step),
                      num_runs)
  fake_keys, real_keys = gan.split_keys(keys)
  fakes = gan.generate_many(g_params, g_stats, fake_keys, spec=spec, num_points=num_points)
  reals = gan.sample_many(real_keys, data=target, num_points=num_points)
  return np.asarray(fakes), np.asarray(reals)


PointsByStep = dict[int, np.ndarray]


def _save_samples(path: str, samples: dict[str, tuple[PointsByStep, PointsByStep]],
                  start: dict[str, np.ndarray]) -> None:
  """Keeps what W1 and the correlations are computed from, so they can be redone offline."""
  arrays = {f"{label}_{kind}_step{step}": points
            for label, (fakes, reals) in samples.items()
            for kind, table in (("generated", fakes), ("target", reals))
            for step, points in table.items()}
  arrays.update({f"dissection_start_{name}": np.asarray(value) for name, value in start.items()})
  np.savez_compressed(path, **arrays)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the whole study; writes toy2d.json and the two figures to `workdir`."""
  dissection = config.dissection
  checkpoint_every = checkpoint_interval(config)
  metrics.reduce_w1({0: np.zeros(1)}, dissection.w1_reduce)  # Fail early on a bad value.
  os.makedirs(workdir, exist_ok=True)
  timings, study_start = {}, time.time()
  spec = gan.gan_spec_from_config(config)
  dists = gan.distributions_from_config(config)
  target = dists["target"]
  root = jax.random.key(config.seed)
  threads = config.num_w1_threads

  # 1. Pretraining; the Source-I run also yields the dissection's checkpoints.
  tick = time.time()
  pretrained, checkpoints = pretrain(
      config, spec, root, {"source_i": dists["source_i"], "source_ii": dists["source_ii"]},
      snapshot_source="source_i")
  initialisations = [pretrained["source_i"], pretrained["source_ii"],
                     gan.init_snapshot(gan.stage_key(root, "init/random"), spec)]
  num_checkpoints = len(checkpoints)
  timings["pretrain"] = time.time() - tick

  # 2. What the dissection's starting points look like (before any finetuning).
  tick = time.time()
  checkpoint_stack = gan.stack(checkpoints)
  start_keys = gan.run_keys(gan.stage_key(root, "dissection/start_metrics"), num_checkpoints)
  start = jax.device_get(start_metrics_many(
      checkpoint_stack, start_keys, spec=spec, target=target,
      num_points=dissection.num_metric_points, k=dissection.k))
  timings["start_metrics"] = time.time() - tick
  _log("dissection starting points (%d checkpoints): recall %.3f..%.3f, gradient similarity "
       "(descent) %.3f..%.3f", num_checkpoints, np.min(start["recall"]),
       np.max(start["recall"]), np.nanmin(start["gradsim_descent"]),
       np.nanmax(start["gradsim_descent"]))

  # 3. Finetune the three initialisations and every checkpoint: one vmapped computation.
  #    W1 samples: the initialisations after the last step only, the dissection after
  #    every evaluation step (for the authors' 'min' as well as the 'final' W1).
  tick = time.time()
  num_inits = len(INITIALISATIONS)
  final_step = config.finetune_steps
  groups = {  # label -> (runs in the batch, points per W1, sample before the last step?)
      "initialisations": (slice(0, num_inits), config.w1_num_points, False),
      "dissection": (slice(num_inits, num_inits + num_checkpoints), dissection.w1_num_points,
                     True),
  }
  samples = {label: ({}, {}) for label in groups}

  def collect(step: int, states: GanState) -> None:
    for label, (runs, num_points, every_evaluation) in groups.items():
      if every_evaluation or step == final_step:
        fakes, reals = _samples_for_w1(root, label, step, gan.index(states.g_params, runs),
                                       gan.index(states.g_stats, runs), spec, target, num_points)
        samples[label][0][step], samples[label][1][step] = fakes, reals

  keys = jnp.concatenate([
      gan.run_keys(gan.stage_key(root, "finetune/initialisations"), num_inits),
      gan.run_keys(gan.stage_key(root, "finetune/dissection"), num_checkpoints)])
  finals = finetune(config, spec, gan.stack(initialisations + checkpoints), keys, target, collect)
  inits_final = gan.index(finals, slice(0, num_inits))
  ema_fakes, ema_reals = _samples_for_w1(root, "initialisations_ema", final_step,
                                         inits_final.ema_params, inits_final.ema_stats, spec,
                                         target, config.w1_num_points)
  pretrained_stack = gan.stack(initialisations[:2])
  pre_fakes, pre_reals = _samples_for_w1(root, "pretrained", 0, pretrained_stack.g_params,
                                         pretrained_stack.g_stats, spec, target,
                                         config.w1_num_points)
  timings["finetune"] = time.time() - tick
  _save_samples(os.path.join(workdir, SAMPLES_NAME), samples, start)

  # 4. Exact W1 on the host.
  tick = time.time()
  init_fakes, init_reals = samples["initialisations"]
  table = w1_table({0: init_fakes[final_step], 1: ema_fakes, 2: pre_fakes},
                   {0: init_reals[final_step], 1: ema_reals, 2: pre_reals},
                   "finetuned, EMA and pretrained generators", threads)
  init_w1, ema_w1, pre_w1 = table[0], table[1], table[2]
  timings["w1_initialisations"] = time.time() - tick
  for i, name in enumerate(INITIALISATIONS):
    _log("W1 after finetuning from %s: %.3f (EMA generator %.3f)", name, init_w1[i], ema_w1[i])
  tick = time.time()
  dissection_w1 = w1_table(*samples["dissection"], "dissection", threads)
  timings["w1_dissection"] = time.time() - tick

  # 5. Correlations, figures, JSON.
  w1_by_reduction = {how: metrics.reduce_w1(dissection_w1, how) for how in ("final", "min")}
  pearsons = {}
  for how, w1 in w1_by_reduction.items():
    suffix = "" if how == dissection.w1_reduce else f"_{how}"
    for name, values in (("recall", start["recall"]), ("precision", start["precision"]),
                         ("gradsim", start["gradsim_descent"]),
                         ("gradsim_loss_gradient", start["gradsim_loss_gradient"])):
      pearsons[f"pearson_{name}_w1{suffix}"] = metrics.pearson(values, w1)

  source_names = {"source_i": "Source-I", "source_ii": "Source-II", "random": "random init"}
  panels = [("sources and target", {
      label: np.asarray(dists[name].sample(gan.stage_key(root, f"plot/{name}"),
                                           config.w1_num_points))
      for label, name in (("target", "target"), ("Source-I", "source_i"),
                          ("Source-II", "source_ii"))})]
  for i, name in enumerate(("source_i", "source_ii")):
    panels.append((f"pretrained on {source_names[name]}\n$W_1$ to target {pre_w1[i]:.2f}",
                   {"target": pre_reals[i], "generated": pre_fakes[i]}))
  init_fakes, init_reals = samples["initialisations"]
  for i, name in enumerate(INITIALISATIONS):
    panels.append((f"finetuned from {source_names[name]}\n$W_1$ {init_w1[i]:.2f}",
                   {"target": init_reals[final_step][i],
                    "generated": init_fakes[final_step][i]}))
  figures.save_figure2(os.path.join(workdir, FIGURE2_NAME), panels,
                       limit=1.6 * config.target.radius)
  figures.save_figure3(os.path.join(workdir, FIGURE3_NAME), np.asarray(start["recall"]),
                       np.asarray(start["gradsim_descent"]),
                       w1_by_reduction[dissection.w1_reduce],
                       r"$\nabla D$ similarity (descent direction)",
                       f"finetuned $W_1$ ({dissection.w1_reduce})")
  timings["total"] = time.time() - study_start

  result = {
      "w1": {name: float(init_w1[i]) for i, name in enumerate(INITIALISATIONS)},
      "w1_ema": {name: float(ema_w1[i]) for i, name in enumerate(INITIALISATIONS)},
      "w1_pretrained_to_target": {"source_i": float(pre_w1[0]), "source_ii": float(pre_w1[1])},
      **pearsons,
      "gradsim_convention": ("pearson_gradsim_*: descent direction, cos(-dL_G/dx, nearest "
                             "centre - x); pearson_gradsim_loss_gradient_*: the authors' "
                             "cos(+dL_G/dx, ...), its negative"),
      "dissection_w1_reduce": dissection.w1_reduce,
      "paper": {f"pearson_{name}": value for name, value in PAPER_PEARSONS.items()},
      "dissection": {
          "checkpoint_steps": [checkpoint_every * (i + 1)
                               for i in range(num_checkpoints)],
          "recall": _floats(start["recall"]),
          "precision": _floats(start["precision"]),
          "gradsim_descent": _floats(start["gradsim_descent"]),
          "gradsim_loss_gradient": _floats(start["gradsim_loss_gradient"]),
          "w1_final": _floats(w1_by_reduction["final"]),
          "w1_min": _floats(w1_by_reduction["min"]),
          "w1_per_evaluation": {str(step): _floats(dissection_w1[step])
                                for step in sorted(dissection_w1)},
      },
      "timings_s": {name: round(seconds, 1) for name, seconds in timings.items()},
      "config": json.loads(config.to_json_best_effort()),
  }
  with open(os.path.join(workdir, JSON_NAME), "w") as f:
    json.dump(writers.json_safe(result), f, indent=2)
  _log("toy2d: W1 %s; Pearson(recall, W1) %+.2f (paper -0.84); Pearson(grad sim, W1) %+.2f "
       "descent / %+.2f loss-gradient (paper -0.73, loss-gradient); %.0fs; wrote %s",
       {name: round(value, 2) for name, value in result["w1"].items()},
       result["pearson_recall_w1"], result["pearson_gradsim_w1"],
       result["pearson_gradsim_loss_gradient_w1"], timings["total"],
       os.path.join(workdir, JSON_NAME))
  return result
