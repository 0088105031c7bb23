"""Training-batch samplers that run inside the jitted train step.

A sampler is `sample(data, key, batch_size) -> {'images': float32 [B, R, R, 3] in
[-1, 1], 'cond': float32 [B, cond_dim]}` ('cond' only for conditional models) plus the
`data` pytree it reads, and `sample_cond(data, key, n)` that draws conditions alone (for
the generator's fakes, sample grids and evaluation). `data` is an argument of the step
rather than a closure constant: a captured device array would be baked into the
compiled program, which for a real dataset means gigabytes of constants and a recompile
per dataset.

`config.data.source` selects the images:
  synth:NAME   an on-device synthesizer from gantransfer_jax.synth (pretraining).
  anything else: a real image set (see gantransfer_jax.data.sources), decoded once,
               held in device memory as uint8, sampled uniformly with replacement.

and the model's conditioning (`gantransfer_jax.models.gan.condition_dim`) the condition:
  dip.prior    DIP: the frozen prior C(x) of each real image, computed once and cached
               (`gantransfer_jax.priors.dataset_priors`); a real set only.
  num_classes  one-hot class labels: a labelled real set's labels, or for synthetic
               images a label drawn uniformly at random (paper 001's conditional
               pretraining assigns labels to synthetic images at random).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gantransfer_jax import errors

SYNTH_PREFIX = "synth:"


Batch = dict[str, jax.Array]


class Sampler(NamedTuple):
  sample: Callable[[Any, jax.Array, int], Batch]
  data: Any  # Pytree of host arrays; the loop places it on the mesh.
  sample_cond: Callable[[Any, jax.Array, int], jax.Array | None]


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
  if not config.data.get("source"):
    raise errors.InputError("config.data.source is not set: give the training images, e.g. "
                            "--config.data.source=folder:/my/images (README, data sources)")
  prior = (config.get("dip") or {}).get("prior")
  if is_synthetic(config.data.source):
    if prior:
      raise errors.InputError("dip.prior conditions on real images' priors; it needs a real "
                       f"data source, not {config.data.source}")
    _synthesizer(config)
  else:
    from gantransfer_jax.data import sources  # pylint: disable=g-import-not-at-top
    labelled = bool(config.get("num_classes")) and not prior
    sources.check_data_config(config.data, labelled=labelled)


def uint8_to_float(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 127.5 - 1.0


def sample_from_array(images: jax.Array, key: jax.Array, batch_size: int, *,
                      hflip: bool) -> jax.Array:
  """Uniform sampling with replacement from a uint8 [N, R, R, 3] array on device."""
  return _draw_images(images, key, batch_size, hflip)[0]


def _draw_images(images: jax.Array, key: jax.Array, batch_size: int,
                 hflip: bool) -> tuple[jax.Array, jax.Array]:
  """(float images in [-1, 1], their indices): the indices also pick their conditions."""
  k_index, k_flip = jax.random.split(key)
  index = jax.random.randint(k_index, (batch_size,), 0, len(images))
  batch = uint8_to_float(images[index])
  if hflip:
    flip = jax.random.bernoulli(k_flip, 0.5, (batch_size, 1, 1, 1))
    batch = jnp.where(flip, batch[:, :, ::-1], batch)
  return batch, index


def _one_hot_cond(num_classes: int):
  return lambda labels: jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def _synthetic_sampler(config: ml_collections.ConfigDict, num_classes: int) -> Sampler:
  synthesize = _synthesizer(config)
  if not num_classes:
    return Sampler(lambda data, key, batch: {"images": synthesize(key, batch)}, {},
                   lambda data, key, n: None)
  one_hot = _one_hot_cond(num_classes)

  def sample_cond(data, key, n):
    return one_hot(jax.random.randint(key, (n,), 0, num_classes))

  def sample(data, key, batch):
    k_images, k_labels = jax.random.split(key)
    return {"images": synthesize(k_images, batch), "cond": sample_cond(data, k_labels, batch)}

  return Sampler(sample, {}, sample_cond)


def _real_data(config: ml_collections.ConfigDict, num_classes: int, cache_dir: str | None,
               prior_fn: Callable | None) -> dict[str, np.ndarray]:
  from gantransfer_jax.data import sources  # pylint: disable=g-import-not-at-top

  prior = (config.get("dip") or {}).get("prior") or ""
  if num_classes and not prior:
    labelled = sources.load_labelled_dataset(config.data, config.resolution,
                                             cache_dir=cache_dir)
    if len(labelled.class_names) != num_classes:
      raise errors.InputError(f"num_classes is {num_classes} but {config.data.source} has "
                       f"{len(labelled.class_names)} classes")
    data = {"images": labelled.images, "labels": np.asarray(labelled.labels, np.int32)}
  else:
    data = {"images": sources.load_dataset(config.data, config.resolution,
                                           cache_dir=cache_dir)}
  sources.check_dataset_size(len(data["images"]), config.batch_size)
  if prior:
    from gantransfer_jax import priors  # pylint: disable=g-import-not-at-top
    # dataset_priors keys its file by the decoded pixels too: any change of source,
    # subset or files gives new priors.
    key = sources.describe(config.data.source)
    data["priors"] = priors.dataset_priors(prior, data["images"], cache_key=key,
                                           cache_dir=cache_dir, prior_fn=prior_fn)
  data["images"] = np.asarray(data["images"], np.uint8)
  return data


def make_sampler(config: ml_collections.ConfigDict, cache_dir: str | None = None, *,
                 prior_fn: Callable | None = None) -> Sampler:
  """Builds the sampler for config.data and the model's conditioning.

  Decodes a real dataset (and computes its DIP priors) once; both are cached on disk.
  `prior_fn` replaces the configured prior extractor on a cache miss (tests).
  """
  from gantransfer_jax.models import gan as gan_lib  # pylint: disable=g-import-not-at-top

  cond_dim = gan_lib.condition_dim(config)
  prior = (config.get("dip") or {}).get("prior") or ""
  check_source(config)
  if is_synthetic(config.data.source):
    return _synthetic_sampler(config, cond_dim)

  data = _real_data(config, 0 if prior else cond_dim, cache_dir, prior_fn)
  hflip = bool(config.data.get("hflip", False))
  one_hot = _one_hot_cond(cond_dim)

  def cond_at(data, index):
    if "priors" in data:
      return data["priors"][index]
    if "labels" in data:
      return one_hot(data["labels"][index])
    return None

  def sample(data, key, batch):
    images, index = _draw_images(data["images"], key, batch, hflip)
    out = {"images": images}
    cond = cond_at(data, index)
    return out if cond is None else {**out, "cond": cond}

  def sample_cond(data, key, n):
    return cond_at(data, jax.random.randint(key, (n,), 0, len(data["images"])))

  return Sampler(sample, data, sample_cond)
