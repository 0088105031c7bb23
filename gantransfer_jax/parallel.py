"""Device mesh and shardings for data-parallel training.

Training is written as `jax.jit` over a one-axis mesh named 'data': the batch is
sharded along it and the train state is replicated (today's form of pmap-style
data parallelism). The same code runs on one CPU device, several emulated CPU
devices, a GPU, a TPU slice and several hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
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


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _pad_batch(chunk: np.ndarray | jax.Array, size: int) -> np.ndarray | jax.Array:
  """Pads the batch axis to `size` by repeating the last image (its features are dropped)."""
  missing = size - chunk.shape[0]
  if missing == 0:
    return chunk
  xp = jnp if isinstance(chunk, jax.Array) else np
  return xp.concatenate([chunk, xp.repeat(chunk[-1:], missing, axis=0)], axis=0)


class ShardedExtractor:
  """Callable: images [N, H, W, C] -> float32 numpy [N, feature_dim].

  Applies a jitted `extract_fn(variables, images)` to chunks of `batch_size` images
  (the last padded, so one shape compiles), each sharded over a 1-D mesh while the
  weights are replicated. Dispatch is asynchronous: the next chunk's transfer overlaps
  the current chunk's compute.
  """

  def __init__(self, extract_fn: Callable[[Any, jax.Array], jax.Array], variables: Any,
               feature_dim: int, *, batch_size: int = 64, mesh: Mesh | None = None):
    self.extract_fn = extract_fn
    self.feature_dim = feature_dim
    self.mesh = create_mesh() if mesh is None else mesh
    self.batch_size = _round_up(batch_size, self.mesh.size)
    self.variables = jax.device_put(variables, replicated(self.mesh))

  def __call__(self, images) -> np.ndarray:
    if not isinstance(images, jax.Array):
      images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"expected [N, H, W, 1 or 3] images, got shape {images.shape}")
    num_images = images.shape[0]
    if num_images == 0:
      return np.zeros((0, self.feature_dim), np.float32)
    chunk_size = min(self.batch_size, _round_up(num_images, self.mesh.size))
    sharding = batch_sharded(self.mesh)
    outputs = [
        self.extract_fn(self.variables,
                        jax.device_put(_pad_batch(images[start:start + chunk_size], chunk_size),
                                       sharding))
        for start in range(0, num_images, chunk_size)
    ]
    return np.concatenate([np.asarray(out, np.float32) for out in outputs])[:num_images]
