"""The 2D study's GANs (paper 004, §2): distributions, MLP GANs and their vmapped training.

Runs are vmapped: `train_chunk_many` is `jax.vmap` over runs of a `jax.lax.scan` over G
steps, jitted once. Every random choice comes from `jax.random.fold_in` of the seed's key
by stage name (`stage_key`), then run index (`run_keys`), then G step, so results do not
depend on how runs are batched or steps chunked.

D and G steps: each G step follows `d_steps` D steps (the authors interleave the same
4:1 ratio starting with a single D step; the difference is one D step in 20,000), with
the non-saturating losses of `gantransfer_jax.losses`.

Generator, BatchNorm and EMA (as the authors' PyTorch code does it):
  * training uses batch statistics; the running averages (momentum 0.1) are updated by
    every generator forward pass, including the ones that make fakes for D steps;
  * the EMA generator averages both the parameters and the BatchNorm running statistics
    (decay `ema_decay` per G step, `losses.ema_update`), like blending a PyTorch
    state_dict with its buffers;
  * all sampling runs G in inference mode, i.e. with running statistics (`generate`).

Finetuning starts from a checkpoint's raw G (with its BN statistics) and D, fresh Adam
states, and an EMA generator equal to G (`state_from_snapshot`).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gantransfer_jax import losses
from gantransfer_jax.models.mlp2d import Discriminator2D
from gantransfer_jax.models.mlp2d import Generator2D

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
  return losses.d_logistic_loss(d(real), d(fake))


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
    return losses.g_nonsaturating_loss(logits), new_stats

  (g_loss, g_stats), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(state.g_params)
  updates, g_opt_state = tx.update(grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)

  state = state.replace(
      step=state.step + 1, g_params=g_params, g_stats=g_stats, d_params=d_params,
      ema_params=losses.ema_update(state.ema_params, g_params, spec.ema_decay),
      ema_stats=losses.ema_update(state.ema_stats, g_stats, spec.ema_decay),
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


def generate(g_params, g_stats, key: jax.Array, *, spec: GanSpec, num_points: int) -> jax.Array:
  """Inference-mode samples (BatchNorm running statistics)."""
  z = jax.random.normal(key, (num_points, spec.z_dim))
  return spec.generator.apply({"params": g_params, "batch_stats": g_stats}, z, train=False)


@functools.partial(jax.jit, static_argnames=("spec", "num_points"))
def generate_many(g_params, g_stats, keys: jax.Array, *, spec: GanSpec,
                  num_points: int) -> jax.Array:
  """[runs, num_points, 2] inference-mode samples of stacked generators."""
  return jax.vmap(functools.partial(generate, spec=spec, num_points=num_points))(
      g_params, g_stats, keys)


@functools.partial(jax.jit, static_argnames=("data", "num_points"))
def sample_many(keys: jax.Array, *, data: Distribution, num_points: int) -> jax.Array:
  return jax.vmap(lambda key: data.sample(key, num_points))(keys)


def index(tree: Any, i: int | slice) -> Any:
  return jax.tree.map(lambda x: x[i], tree)


def stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def split_keys(keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Splits each of a batch of keys in two: (first halves, second halves)."""
  pairs = jax.vmap(jax.random.split)(keys)
  return pairs[:, 0], pairs[:, 1]
