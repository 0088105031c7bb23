"""Device mesh and shardings for data-parallel training.

Training is written as `jax.jit` over a one-axis mesh named 'data': the batch is
sharded along it and the train state is replicated (today's form of pmap-style
data parallelism). The same code runs on one CPU device, several emulated CPU
devices, a GPU, a TPU slice and several hosts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
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


# What a launcher sets on each process outside TPU pods and SLURM / Open MPI clusters
# (where JAX finds these itself). JAX reads only the address from the environment, so
# the project reads all three and passes them explicitly.
COORDINATOR_ADDRESS_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
DISTRIBUTED_ENV = (COORDINATOR_ADDRESS_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)


def _env_int(environ: Mapping[str, str], name: str) -> int:
  value = environ[name]
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer") from None


def distributed_options(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
  """`jax.distributed.initialize` arguments from JAX_COORDINATOR_ADDRESS (host:port of
  process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID; None when none of them is set."""
  environ = os.environ if environ is None else environ
  given = [name for name in DISTRIBUTED_ENV if environ.get(name)]
  if not given:
    return None
  missing = [name for name in DISTRIBUTED_ENV if name not in given]
  if missing:
    raise ValueError(f"a multi-process launch sets all of {', '.join(DISTRIBUTED_ENV)}; "
                     f"{' and '.join(missing)} unset")
  address = environ[COORDINATOR_ADDRESS_ENV]
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"{COORDINATOR_ADDRESS_ENV}={address!r} is not host:port")
  num_processes = _env_int(environ, NUM_PROCESSES_ENV)
  process_id = _env_int(environ, PROCESS_ID_ENV)
  if not 0 <= process_id < num_processes:
    raise ValueError(f"{PROCESS_ID_ENV}={process_id} is not in [0, {NUM_PROCESSES_ENV}="
                     f"{num_processes})")
  return dict(coordinator_address=address, num_processes=num_processes,
              process_id=process_id)


def maybe_initialize_distributed(enabled: bool, environ: Mapping[str, str] | None = None,
                                 **initialize_kwargs) -> bool:
  """Joins a multi-process run (jax.distributed.initialize) before any JAX work.

  The three DISTRIBUTED_ENV variables alone start one (every task, any platform; CPU
  processes talk through gloo, JAX's default CPU collectives). Without them, `enabled`
  (`config.distributed`) lets JAX detect a Cloud TPU pod or a SLURM / Open MPI job.
  Returns whether this process is part of a multi-process run.
  """
  options = distributed_options(environ)
  if options is None and not enabled:
    return False
  if jax.distributed.is_initialized():  # A notebook or test that already joined.
    return True
  try:
    jax.distributed.initialize(**(options or {}), **initialize_kwargs)
  except ValueError as e:
    if options is not None:
      raise
    raise ValueError(
        f"config.distributed=True, but JAX found no TPU pod or SLURM / Open MPI job ({e}); "
        f"elsewhere set {', '.join(DISTRIBUTED_ENV)} on every process") from e
  return True


# Generous: under load one process can compile for many minutes longer than another.
BARRIER_TIMEOUT_S = 3600


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
  """Waits until every process reaches `name` (no-op on one process).

  A barrier of the coordination service, not a collective: XLA's CPU collectives (gloo)
  give a peer only 30 s to join a new communicator, so a process that reaches the first
  collective while another is still compiling fails ("Gloo context initialization
  failed: DEADLINE_EXCEEDED"). Callers compile, meet here, then run.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  (no public barrier)
  distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))


def host_array(x: Any) -> np.ndarray:
  """`x` whole, as numpy, on every process, also when its shards live on several."""
  if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


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
    return np.concatenate([host_array(out).astype(np.float32) for out in outputs]
                          )[:num_images]
