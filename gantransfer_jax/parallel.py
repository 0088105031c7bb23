"""Device mesh and shardings for data-parallel training.

Training is written as `jax.jit` over a one-axis mesh named 'data': the batch is
sharded along it and the train state is replicated (today's form of pmap-style
data parallelism). The same code runs on one CPU device, several emulated CPU
devices, a GPU, a TPU slice and several hosts.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
  """Inside jit: pins a freshly produced global batch to the data axis."""
  return jax.lax.with_sharding_constraint(x, batch_sharded(mesh))


def maybe_initialize_distributed(enabled: bool) -> None:
  """Multi-host runs call jax.distributed.initialize() once, before any JAX work.

  On Cloud TPU pods and SLURM/Open MPI clusters JAX discovers the coordinator
  itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID.
  """
  if enabled:  # Must run before anything touches a JAX backend.
    jax.distributed.initialize()
