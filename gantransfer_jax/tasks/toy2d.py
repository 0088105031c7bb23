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

Runs are vmapped: both pretrainings are one computation, and all 3 + 100 finetunings are
another: `jax.vmap` over runs of a `jax.lax.scan` over G steps, jitted once (the steps
are cut into equal chunks, so progress can be logged between calls). Every random choice
comes from `jax.random.fold_in` of the seed's key by stage name, then run index, then G
step, so results do not depend on how runs are batched or steps chunked.

Dissection details from the authors' notebook: the checkpoints come from the Source-I
run only (here after 50, 100, ..., 5000 G steps; theirs after 1, 51, ..., 4951); recall,
precision and the gradient similarity use 1000 generated and 1000 target points; the
golden field points at the nearest of the 10 target centres.

D and G steps: each G step follows `d_steps` D steps (the authors interleave the same
4:1 ratio starting with a single D step; the difference is one D step in 20,000).

Generator, BatchNorm and EMA (as the authors' PyTorch code does it):
  * training uses batch statistics; the running averages (momentum 0.1) are updated by
    every generator forward pass, including the ones that make fakes for D steps;
  * the EMA generator averages both the parameters and the BatchNorm running statistics
    (decay `ema_decay` per G step), like blending a PyTorch state_dict with its buffers;
  * all sampling and evaluation run G in inference mode, i.e. with running statistics
    (the raw generator for W1, recall and the figures, as the authors do; the EMA
    generator's final W1 is reported as `w1_ema`).

Finetuning starts from a checkpoint's raw G (with its BN statistics) and D, fresh Adam
states, and an EMA generator equal to G.

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

import dataclasses
import functools
import json
import math
import os
import time
import zlib
from typing import Any, Callable, Sequence

from absl import flags
from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gantransfer_jax import progress
from gantransfer_jax.analysis import toy2d_metrics as metrics
from gantransfer_jax.models.mlp2d import Discriminator2D
from gantransfer_jax.models.mlp2d import Generator2D

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


# ------------------------------------------------------------------------ randomness


def stage_key(root: jax.Array, name: str) -> jax.Array:
  """A key per named stage: fold_in of a stable hash of the name (not Python's hash())."""
  return jax.random.fold_in(root, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def run_keys(key: jax.Array, num_runs: int) -> jax.Array:
  """[num_runs] keys, fold_in(key, run_index): run i gets the same key alone or batched."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_runs))


# --------------------------------------------------------------------- distributions


@dataclasses.dataclass(frozen=True)
class Distribution:
  """A 2D distribution of the study; hashable, so it is a static argument of jit.

  kind='mixture': Gaussians (std `sigma`) at the `modes` of `num_modes` centres evenly
    spaced on a circle of `radius` (all of them when `modes` is empty), equally likely.
  kind='ring': a uniform angle and a radius `radius + sigma * N(0, 1)` (the authors'
    FatCircle: the noise is radial only).
  """

  kind: str
  radius: float
  sigma: float
  num_modes: int = 10
  modes: tuple[int, ...] = ()

  def centres(self) -> jax.Array:
    """All `num_modes` centres of the circle, [num_modes, 2] (also the ring's golden field)."""
    angles = 2 * jnp.pi * jnp.arange(self.num_modes) / self.num_modes
    return self.radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)

  def sample(self, key: jax.Array, num_points: int) -> jax.Array:
    choice_key, noise_key = jax.random.split(key)
    if self.kind == "ring":
      angles = jax.random.uniform(choice_key, (num_points,), maxval=2 * jnp.pi)
      radii = self.radius + self.sigma * jax.random.normal(noise_key, (num_points,))
      return radii[:, None] * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    if self.kind == "mixture":
      modes = jnp.asarray(self.modes or range(self.num_modes))
      which = jax.random.randint(choice_key, (num_points,), 0, len(modes))
      noise = self.sigma * jax.random.normal(noise_key, (num_points, 2))
      return self.centres()[modes[which]] + noise
    raise ValueError(f"unknown distribution kind {self.kind!r}")


def distributions_from_config(config: ml_collections.ConfigDict) -> dict[str, Distribution]:
  target = Distribution("mixture", config.target.radius, config.target.sigma,
                        config.target.num_modes)
  return {
      "target": target,
      "source_i": Distribution("ring", config.source_i.radius, config.source_i.sigma),
      "source_ii": Distribution("mixture", config.target.radius, config.source_ii.sigma,
                                config.target.num_modes, tuple(config.source_ii.modes)),
  }


# ------------------------------------------------------------------ models and state


@dataclasses.dataclass(frozen=True)
class GanSpec:
  """Everything that shapes the computation; hashable, so it is a static argument of jit."""

  z_dim: int = 64
  g_hidden: tuple[int, ...] = (64, 128, 128, 128, 64)
  d_hidden: tuple[int, ...] = (64, 128, 128, 64)
  torch_init: bool = True
  batch_size: int = 64
  d_steps: int = 4
  lr: float = 2e-4
  b1: float = 0.5
  b2: float = 0.999
  ema_decay: float = 0.99

  @property
  def generator(self) -> Generator2D:
    return Generator2D(z_dim=self.z_dim, hidden=self.g_hidden, torch_init=self.torch_init)

  @property
  def discriminator(self) -> Discriminator2D:
    return Discriminator2D(hidden=self.d_hidden, torch_init=self.torch_init)

  @property
  def optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.lr, b1=self.b1, b2=self.b2, eps=1e-8)


def gan_spec_from_config(config: ml_collections.ConfigDict) -> GanSpec:
  return GanSpec(
      z_dim=config.z_dim, g_hidden=tuple(config.g_hidden), d_hidden=tuple(config.d_hidden),
      torch_init=config.torch_init, batch_size=config.batch_size, d_steps=config.d_steps,
      lr=config.lr, b1=config.b1, b2=config.b2, ema_decay=config.ema_decay)


@flax.struct.dataclass
class Snapshot:
  """A checkpoint of the study: the raw generator (parameters, BN statistics) and D."""

  g_params: Any
  g_stats: Any
  d_params: Any


@flax.struct.dataclass
class GanState:
  step: jax.Array  # G steps taken.
  g_params: Any
  g_stats: Any
  d_params: Any
  ema_params: Any
  ema_stats: Any
  g_opt_state: Any
  d_opt_state: Any

  def snapshot(self) -> Snapshot:
    return Snapshot(self.g_params, self.g_stats, self.d_params)


def init_snapshot(key: jax.Array, spec: GanSpec) -> Snapshot:
  """A randomly initialised G (with fresh BN statistics) and D."""
  g_key, d_key = jax.random.split(key)
  g_vars = spec.generator.init(g_key, jnp.zeros((2, spec.z_dim)), train=False)
  d_vars = spec.discriminator.init(d_key, jnp.zeros((2, 2)))
  return Snapshot(g_vars["params"], g_vars["batch_stats"], d_vars["params"])


def state_from_snapshot(snapshot: Snapshot, spec: GanSpec) -> GanState:
  """Training state starting at `snapshot`: fresh Adam states, EMA generator = G."""
  tx = spec.optimizer
  return GanState(
      step=jnp.zeros((), jnp.int32), g_params=snapshot.g_params, g_stats=snapshot.g_stats,
      d_params=snapshot.d_params, ema_params=snapshot.g_params, ema_stats=snapshot.g_stats,
      g_opt_state=tx.init(snapshot.g_params), d_opt_state=tx.init(snapshot.d_params))


# ----------------------------------------------------------------------- training


def _generate_train(spec: GanSpec, g_params, g_stats, z: jax.Array):
  """G with batch statistics; returns (points, updated running statistics)."""
  points, updates = spec.generator.apply(
      {"params": g_params, "batch_stats": g_stats}, z, train=True, mutable=["batch_stats"])
  return points, updates["batch_stats"]


def _discriminator_loss(spec: GanSpec, d_params, real: jax.Array, fake: jax.Array) -> jax.Array:
  d = functools.partial(spec.discriminator.apply, {"params": d_params})
  return jnp.mean(jax.nn.softplus(-d(real))) + jnp.mean(jax.nn.softplus(d(fake)))


def _sample_data(datas: tuple[Distribution, ...], data_index: jax.Array, key: jax.Array,
                 num_points: int) -> jax.Array:
  """Samples `datas[data_index]`; the index may differ between vmapped runs."""
  if len(datas) == 1:
    return datas[0].sample(key, num_points)
  branches = [functools.partial(data.sample, num_points=num_points) for data in datas]
  return jax.lax.switch(data_index, branches, key)


def _gan_step(state: GanState, key: jax.Array, data_index: jax.Array, spec: GanSpec,
              datas: tuple[Distribution, ...]) -> tuple[GanState, dict[str, jax.Array]]:
  """`spec.d_steps` discriminator steps, then one non-saturating generator step."""
  tx = spec.optimizer
  d_key, g_key = jax.random.split(key)

  def d_step(carry, key):
    g_stats, d_params, d_opt_state = carry
    real_key, z_key = jax.random.split(key)
    real = _sample_data(datas, data_index, real_key, spec.batch_size)
    z = jax.random.normal(z_key, (spec.batch_size, spec.z_dim))
    # Train-mode G, as the authors' loop: its BN running statistics move here too.
    fake, g_stats = _generate_train(spec, state.g_params, g_stats, z)
    loss, grads = jax.value_and_grad(functools.partial(_discriminator_loss, spec))(
        d_params, real, fake)
    updates, d_opt_state = tx.update(grads, d_opt_state, d_params)
    return (g_stats, optax.apply_updates(d_params, updates), d_opt_state), loss

  (g_stats, d_params, d_opt_state), d_losses = jax.lax.scan(
      d_step, (state.g_stats, state.d_params, state.d_opt_state),
      jax.random.split(d_key, spec.d_steps))

  z = jax.random.normal(g_key, (spec.batch_size, spec.z_dim))

  def g_loss_fn(g_params):
    fake, new_stats = _generate_train(spec, g_params, g_stats, z)
    logits = spec.discriminator.apply({"params": d_params}, fake)
    return jnp.mean(jax.nn.softplus(-logits)), new_stats

  (g_loss, g_stats), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
  updates, g_opt_state = tx.update(grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)

  def ema(average, value):
    return spec.ema_decay * average + (1.0 - spec.ema_decay) * value

  state = state.replace(
      step=state.step + 1, g_params=g_params, g_stats=g_stats, d_params=d_params,
      ema_params=jax.tree.map(ema, state.ema_params, g_params),
      ema_stats=jax.tree.map(ema, state.ema_stats, g_stats),
      g_opt_state=g_opt_state, d_opt_state=d_opt_state)
  return state, {"d_loss": jnp.mean(d_losses), "g_loss": g_loss}


def _train_chunk(state: GanState, run_key: jax.Array, data_index: jax.Array, *, spec: GanSpec,
                 datas: tuple[Distribution, ...],
                 num_steps: int) -> tuple[GanState, dict[str, jax.Array]]:
  def body(state, _):
    return _gan_step(state, jax.random.fold_in(run_key, state.step), data_index, spec, datas)

  state, step_metrics = jax.lax.scan(body, state, None, length=num_steps)
  return state, jax.tree.map(jnp.mean, step_metrics)


train_chunk = jax.jit(_train_chunk, static_argnames=("spec", "datas", "num_steps"))
"""`num_steps` G steps of one run on `datas[data_index]`; step s uses fold_in(run_key, s)."""


@functools.partial(jax.jit, static_argnames=("spec", "datas", "num_steps"))
def train_chunk_many(states: GanState, keys: jax.Array, data_indices: jax.Array, *,
                     spec: GanSpec, datas: tuple[Distribution, ...],
                     num_steps: int) -> tuple[GanState, dict[str, jax.Array]]:
  """`train_chunk` of a batch of runs (the leading axis of every argument), vmapped."""
  chunk = functools.partial(_train_chunk, spec=spec, datas=datas, num_steps=num_steps)
  return jax.vmap(chunk)(states, keys, data_indices)


def _generate(g_params, g_stats, key: jax.Array, *, spec: GanSpec, num_points: int) -> jax.Array:
  """Inference-mode samples (BatchNorm running statistics)."""
  z = jax.random.normal(key, (num_points, spec.z_dim))
  return spec.generator.apply({"params": g_params, "batch_stats": g_stats}, z, train=False)


@functools.partial(jax.jit, static_argnames=("spec", "num_points"))
def generate_many(g_params, g_stats, keys: jax.Array, *, spec: GanSpec,
                  num_points: int) -> jax.Array:
  """[runs, num_points, 2] inference-mode samples of stacked generators."""
  return jax.vmap(functools.partial(_generate, spec=spec, num_points=num_points))(
      g_params, g_stats, keys)


@functools.partial(jax.jit, static_argnames=("data", "num_points"))
def sample_many(keys: jax.Array, *, data: Distribution, num_points: int) -> jax.Array:
  return jax.vmap(lambda key: data.sample(key, num_points))(keys)


def _chunk_size(total: int, chunk: int, *stops: int) -> int:
  """The longest chunk <= `chunk` that divides `total` and every positive stop interval
  (checkpoints, evaluations), so all jitted calls share one static length."""
  return math.gcd(total, chunk, *(stop for stop in stops if stop > 0))


def _index(tree: Any, i: int | slice) -> Any:
  return jax.tree.map(lambda x: x[i], tree)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _split_keys(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Splits each of a batch of keys in two: (first halves, second halves)."""
  pairs = jax.vmap(jax.random.split)(keys)
  return pairs[:, 0], pairs[:, 1]


# ---------------------------------------------------------------------- evaluation


def _start_metrics(snapshot: Snapshot, key: jax.Array, *, spec: GanSpec, target: Distribution,
                   num_points: int, k: int) -> dict[str, jax.Array]:
  """Recall/precision of the starting G and gradient-field similarity of the starting D."""
  fake_key, real_key = jax.random.split(key)
  fake = _generate(snapshot.g_params, snapshot.g_stats, fake_key, spec=spec,
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
  """Exact W1 per evaluation step and run: {step: [runs]}."""
  pairs = [(step, run) for step in sorted(fakes) for run in range(fakes[step].shape[0])]
  num_points = fakes[pairs[0][0]].shape[1]
  with _counter(f"W1 {label} ({num_points} vs {num_points} points)", len(pairs),
                unit="problems") as counter:
    values = metrics.wasserstein1_many(
        ((fakes[step][run], reals[step][run]) for step, run in pairs), num_threads,
        on_done=lambda _: counter.update())
  table = {step: np.zeros(fakes[step].shape[0]) for step in fakes}
  for (step, run), value in zip(pairs, values):
    table[step][run] = value
  return table


def reduce_w1(table: dict[int, np.ndarray], how: str) -> np.ndarray:
  """Per-run W1 from a `w1_table`: after the last evaluation, or the minimum over them."""
  if how == "final":
    return table[max(table)]
  if how == "min":
    return np.min(np.stack([table[step] for step in sorted(table)]), axis=0)
  raise ValueError(f"w1_reduce must be 'final' or 'min', got {how!r}")


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
  states = jax.vmap(functools.partial(state_from_snapshot, spec=spec))(
      _stack([init_snapshot(stage_key(root, f"init/{name}"), spec) for name in names]))
  keys = jnp.stack([stage_key(root, f"pretrain/{name}") for name in names])
  data_indices = jnp.arange(len(names))
  chunk = _chunk_size(total, config.chunk_steps, every)
  counter = _counter(f"pretrain {' + '.join(names)} (vmapped)", total)
  _log("pretrain: %s, %d G steps in jitted chunks of %d (the first includes compiling)",
       ", ".join(names), total, chunk)
  snapshots, watched = [], names.index(snapshot_source)
  for done in range(chunk, total + 1, chunk):
    states, chunk_metrics = train_chunk_many(states, keys, data_indices, spec=spec,
                                             datas=datas, num_steps=chunk)
    if done % every == 0 and len(snapshots) < config.dissection.num_checkpoints:
      snapshots.append(_index(states, watched).snapshot())
    counter.update(chunk, " ".join(  # Fetching the losses also times the chunk.
        f"{name}: d_loss {float(chunk_metrics['d_loss'][i]):.3f} "
        f"g_loss {float(chunk_metrics['g_loss'][i]):.3f}" for i, name in enumerate(names)))
  counter.finish()
  return {name: _index(states, i).snapshot() for i, name in enumerate(names)}, snapshots


def finetune(config: ml_collections.ConfigDict, spec: GanSpec, starts: Snapshot,
             keys: jax.Array, target: Distribution,
             on_evaluation: Callable[[int, GanState], None]) -> GanState:
  """Finetunes stacked starting snapshots on `target`, all runs as one vmapped scan;
  calls `on_evaluation(step, states)` after each of `evaluation_steps(config)`."""
  num_runs = keys.shape[0]
  total = config.finetune_steps
  states = jax.vmap(functools.partial(state_from_snapshot, spec=spec))(starts)
  data_indices = jnp.zeros((num_runs,), jnp.int32)
  eval_steps = set(evaluation_steps(config))
  chunk = _chunk_size(total, config.chunk_steps, config.eval_every)
  counter = _counter(f"finetune ({num_runs} runs vmapped)", total)
  _log("finetune: %d runs x %d G steps in jitted chunks of %d (the first includes compiling)",
       num_runs, total, chunk)
  for done in range(chunk, total + 1, chunk):
    states, chunk_metrics = train_chunk_many(states, keys, data_indices, spec=spec,
                                             datas=(target,), num_steps=chunk)
    if done in eval_steps:
      on_evaluation(done, states)
    counter.update(chunk, "mean d_loss %.3f g_loss %.3f" % (
        float(jnp.mean(chunk_metrics["d_loss"])), float(jnp.mean(chunk_metrics["g_loss"]))))
  counter.finish()
  return states


# --------------------------------------------------------------------------- figures


def _plot_points(ax, points: np.ndarray, color: str, label: str | None = None,
                 alpha: float = 0.25) -> None:
  ax.scatter(points[:, 0], points[:, 1], s=3, alpha=alpha, color=color, label=label,
             rasterized=True)


def save_figure2(path: str, panels: Sequence[tuple[str, dict[str, np.ndarray]]],
                 limit: float) -> None:
  """Paper Fig. 2: one scatter panel per (title, {label: points}), target in grey."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  colors = {"target": "tab:gray", "Source-I": "tab:blue", "Source-II": "tab:green",
            "generated": "tab:red"}
  fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.6))
  for ax, (title, sets) in zip(axes, panels):
    for label, points in sets.items():
      _plot_points(ax, points, colors.get(label, "tab:orange"), label)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
  axes[0].legend(loc="upper right", fontsize=7, markerscale=3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def save_figure3(path: str, recall: np.ndarray, gradsim: np.ndarray, w1: np.ndarray,
                 gradsim_label: str, w1_label: str = "finetuned $W_1$") -> None:
  """Paper Fig. 3: recall vs gradient similarity, each vs finetuned W1, coloured by W1."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 4, figsize=(15, 3.6),
                           gridspec_kw={"width_ratios": [20, 20, 20, 1]})
  norm = matplotlib.colors.Normalize(vmin=float(np.min(w1)), vmax=float(np.max(w1)))
  cmap = matplotlib.colormaps["jet_r"]
  style = dict(c=w1, cmap=cmap, norm=norm, s=27)
  axes[0].scatter(gradsim, recall, **style)
  axes[0].set(xlabel=gradsim_label, ylabel="recall of the starting G")
  axes[1].scatter(gradsim, w1, **style)
  axes[1].set(xlabel=gradsim_label, ylabel=w1_label,
              title=f"Pearson {metrics.pearson(gradsim, w1):+.2f}")
  axes[2].scatter(recall, w1, **style)
  axes[2].set(xlabel="recall of the starting G", ylabel=w1_label,
              title=f"Pearson {metrics.pearson(recall, w1):+.2f}")
  for ax in axes[:3]:
    ax.grid(alpha=0.3)
  fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=axes[3],
               label=w1_label)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ------------------------------------------------------------------------------ run


def _floats(values) -> list[float]:
  return [float(v) for v in np.asarray(values)]


def _json_safe(value: Any) -> Any:
  """NaN/inf (e.g. a Pearson of a constant series) -> null: strict JSON has no NaN."""
  if isinstance(value, dict):
    return {key: _json_safe(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(item) for item in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _samples_for_w1(root: jax.Array, label: str, step: int, g_params, g_stats, spec: GanSpec,
                    target: Distribution, num_points: int) -> tuple[np.ndarray, np.ndarray]:
  """Generated and fresh target points [runs, num_points, 2] of stacked generators."""
  num_runs = jax.tree.leaves(g_params)[0].shape[0]
  keys = run_keys(jax.random.fold_in(stage_key(root, f"evaluate/{label}"), step), num_runs)
  fake_keys, real_keys = _split_keys(keys)
  fakes = generate_many(g_params, g_stats, fake_keys, spec=spec, num_points=num_points)
  reals = sample_many(real_keys, data=target, num_points=num_points)
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
  reduce_w1({0: np.zeros(1)}, dissection.w1_reduce)  # Fail early on a bad value.
  os.makedirs(workdir, exist_ok=True)
  timings, study_start = {}, time.time()
  spec = gan_spec_from_config(config)
  dists = distributions_from_config(config)
  target = dists["target"]
  root = jax.random.PRNGKey(config.seed)
  threads = config.num_w1_threads

  # 1. Pretraining; the Source-I run also yields the dissection's checkpoints.
  tick = time.time()
  pretrained, checkpoints = pretrain(
      config, spec, root, {"source_i": dists["source_i"], "source_ii": dists["source_ii"]},
      snapshot_source="source_i")
  initialisations = [pretrained["source_i"], pretrained["source_ii"],
                     init_snapshot(stage_key(root, "init/random"), spec)]
  num_checkpoints = len(checkpoints)
  timings["pretrain"] = time.time() - tick

  # 2. What the dissection's starting points look like (before any finetuning).
  tick = time.time()
  checkpoint_stack = _stack(checkpoints)
  start = jax.device_get(start_metrics_many(
      checkpoint_stack, run_keys(stage_key(root, "dissection/start_metrics"), num_checkpoints),
      spec=spec, target=target, num_points=dissection.num_metric_points, k=dissection.k))
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
        fakes, reals = _samples_for_w1(root, label, step, _index(states.g_params, runs),
                                       _index(states.g_stats, runs), spec, target, num_points)
        samples[label][0][step], samples[label][1][step] = fakes, reals

  keys = jnp.concatenate([
      run_keys(stage_key(root, "finetune/initialisations"), num_inits),
      run_keys(stage_key(root, "finetune/dissection"), num_checkpoints)])
  finals = finetune(config, spec, _stack(initialisations + checkpoints), keys, target, collect)
  inits_final = _index(finals, slice(0, num_inits))
  ema_fakes, ema_reals = _samples_for_w1(root, "initialisations_ema", final_step,
                                         inits_final.ema_params, inits_final.ema_stats, spec,
                                         target, config.w1_num_points)
  pretrained_stack = _stack(initialisations[:2])
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
  w1_by_reduction = {how: reduce_w1(dissection_w1, how) for how in ("final", "min")}
  pearsons = {}
  for how, w1 in w1_by_reduction.items():
    suffix = "" if how == dissection.w1_reduce else f"_{how}"
    for name, values in (("recall", start["recall"]), ("precision", start["precision"]),
                         ("gradsim", start["gradsim_descent"]),
                         ("gradsim_loss_gradient", start["gradsim_loss_gradient"])):
      pearsons[f"pearson_{name}_w1{suffix}"] = metrics.pearson(values, w1)

  source_names = {"source_i": "Source-I", "source_ii": "Source-II", "random": "random init"}
  panels = [("sources and target", {
      "target": np.asarray(target.sample(stage_key(root, "plot/target"), config.w1_num_points)),
      "Source-I": np.asarray(dists["source_i"].sample(stage_key(root, "plot/source_i"),
                                                      config.w1_num_points)),
      "Source-II": np.asarray(dists["source_ii"].sample(stage_key(root, "plot/source_ii"),
                                                        config.w1_num_points)),
  })]
  for i, name in enumerate(("source_i", "source_ii")):
    panels.append((f"pretrained on {source_names[name]}\n$W_1$ to target {pre_w1[i]:.2f}",
                   {"target": pre_reals[i], "generated": pre_fakes[i]}))
  init_fakes, init_reals = samples["initialisations"]
  for i, name in enumerate(INITIALISATIONS):
    panels.append((f"finetuned from {source_names[name]}\n$W_1$ {init_w1[i]:.2f}",
                   {"target": init_reals[final_step][i],
                    "generated": init_fakes[final_step][i]}))
  save_figure2(os.path.join(workdir, FIGURE2_NAME), panels, limit=1.6 * config.target.radius)
  save_figure3(os.path.join(workdir, FIGURE3_NAME), np.asarray(start["recall"]),
               np.asarray(start["gradsim_descent"]), w1_by_reduction[dissection.w1_reduce],
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
    json.dump(_json_safe(result), f, indent=2)
  _log("toy2d: W1 %s; Pearson(recall, W1) %+.2f (paper -0.84); Pearson(grad sim, W1) %+.2f "
       "descent / %+.2f loss-gradient (paper -0.73, loss-gradient); %.0fs; wrote %s",
       {name: round(value, 2) for name, value in result["w1"].items()},
       result["pearson_recall_w1"], result["pearson_gradsim_w1"],
       result["pearson_gradsim_loss_gradient_w1"], timings["total"],
       os.path.join(workdir, JSON_NAME))
  return result
