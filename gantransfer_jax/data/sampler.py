"""Training-image samplers that run inside the jitted train step.

A sampler is `sample(data, key, batch_size) -> float32 [B, R, R, 3] in [-1, 1]` plus
the `data` pytree it reads. `data` is an argument of the step rather than a closure
constant: a captured device array would be baked into the compiled program, which
for a real dataset means gigabytes of constants and a recompile per dataset.

`config.data.source` selects the sampler:
  synth:NAME   an on-device synthesizer from gantransfer_jax.synth (pretraining; data = {}).
  anything else: a real image set (see gantransfer_jax.data.sources), decoded once,
               held in device memory as uint8, sampled uniformly with replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

SYNTH_PREFIX = "synth:"


class Sampler(NamedTuple):
  sample: Callable[[Any, jax.Array, int], jax.Array]
  data: Any  # Pytree of host arrays; the loop places it on the mesh.


def is_synthetic(source: str) -> bool:
  return source.startswith(SYNTH_PREFIX)


def _synthesizer(config: ml_collections.ConfigDict):
  from gantransfer_jax import synth  # pylint: disable=g-import-not-at-top

  name = config.data.source[len(SYNTH_PREFIX):]
  return synth.make_synthesizer(
      name, config.resolution,
      n_shapes=config.data.n_shapes, size_policy=config.data.size_policy)


def check_source(config: ml_collections.ConfigDict) -> None:
  """Cheap validation of config.data (no decoding); ValueError on bad input."""
  if is_synthetic(config.data.source):
    _synthesizer(config)
  else:
    from gantransfer_jax.data import sources  # pylint: disable=g-import-not-at-top
    sources.parse_source(config.data.source)


def uint8_to_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 127.5 - 1.0


def sample_from_array(images: jax.Array, key: jax.Array, batch_size: int, *,
                      hflip: bool) -> jax.Array:
  """Uniform sampling with replacement from a uint8 [N, R, R, 3] array on device."""
  k_index, k_flip = jax.random.split(key)
  batch = uint8_to_float(images[jax.random.randint(k_index, (batch_size,), 0, len(images))])
  if hflip:
    flip = jax.random.bernoulli(k_flip, 0.5, (batch_size, 1, 1, 1))
    batch = jnp.where(flip, batch[:, :, ::-1], batch)
  return batch


def make_sampler(config: ml_collections.ConfigDict, cache_dir: str | None = None) -> Sampler:
  """Builds the sampler for config.data.source; decodes a real dataset once (cached)."""
  if is_synthetic(config.data.source):
    synthesize = _synthesizer(config)
    return Sampler(lambda data, key, batch: synthesize(key, batch), {})

  from gantransfer_jax.data import sources  # pylint: disable=g-import-not-at-top
  images = sources.load_dataset(config.data, config.resolution, cache_dir=cache_dir)
  sources.check_dataset_size(len(images), config.batch_size)
  hflip = bool(config.data.get("hflip", False))

  def sample(data, key, batch):
    return sample_from_array(data["images"], key, batch, hflip=hflip)

  return Sampler(sample, {"images": np.asarray(images, np.uint8)})
