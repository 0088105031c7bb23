"""Data instance priors (DIP, paper 003): features C(x) of a frozen pretrained network.

A small registry names the extractors C a run may condition on:

* 'inception': the FID InceptionV3 pool features (2048-d, `metrics.inception`);
* 'mobilenet_v2': torchvision's ImageNet MobileNetV2 pooled features (1280-d,
  `models.mobilenet_v2`), the "last-layer activations" the paper takes as prior.

Each loads as a callable: images (float in [-1, 1] or uint8, NHWC, any size, 1 or 3
channels) -> float32 numpy [N, D], batched and sharded over all devices. A dataset's
priors are computed once and cached (`dataset_priors`), since C is frozen.

  prior_fn = priors.load_prior('mobilenet_v2')
  train_priors = priors.dataset_priors('mobilenet_v2', images, cache_key='anime100')
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from gantransfer_jax import parallel
from gantransfer_jax.data import sources
from gantransfer_jax.metrics import inception
from gantransfer_jax.models import mobilenet_v2
from gantransfer_jax.pretrained import assets

PriorFn = Callable[[Any], np.ndarray]

FEATURE_DIMS = {
    "inception": inception.FEATURE_DIM,
    "mobilenet_v2": mobilenet_v2.FEATURE_DIM,
}


def load_prior(name: str, *, weights_path: str | os.PathLike | None = None,
               batch_size: int = 64, mesh: Mesh | None = None) -> PriorFn:
  """The prior extractor `name` ('inception' or 'mobilenet_v2') as a callable.

  Args:
    name: a key of `FEATURE_DIMS`.
    weights_path: converted weights (.npz); None reads the asset cache, raising a
      FileNotFoundError that names the command to fetch them.
    batch_size: images per device step, summed over devices.
    mesh: 1-D 'data' mesh to shard batches over (default: all devices).
  """
  if name == "inception":
    return inception.load(weights_path, batch_size=batch_size, mesh=mesh)
  if name == "mobilenet_v2":
    return parallel.ShardedExtractor(mobilenet_v2.extract_features,
                            mobilenet_v2.load_variables(weights_path),
                            mobilenet_v2.FEATURE_DIM, batch_size=batch_size, mesh=mesh)
  raise ValueError(f"unknown prior extractor {name!r}; valid: {sorted(FEATURE_DIMS)}")


def priors_path(name: str, cache_key: str, resolution: int, num_images: int,
                cache_dir: str | os.PathLike | None = None, *, content: str = "") -> str:
  """`<cache>/priors/<extractor>_<key>-<hash>_<res>px_<n>img[-<content>].npz`.

  `content`: `sources.content_digest` of the images (what `dataset_priors` passes).
  """
  safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", cache_key).strip("_") or "dataset"
  # Distinct keys that sanitise alike must not share a file.
  digest = hashlib.sha1(cache_key.encode()).hexdigest()[:8]
  root = assets.cache_dir() if cache_dir is None else cache_dir
  suffix = f"-{content}" if content else ""
  return os.path.join(root, "priors",
                      f"{name}_{safe_key}-{digest}_{resolution}px_{num_images}img{suffix}.npz")


def dataset_priors(name: str, images, cache_key: str, *,
                   cache_dir: str | os.PathLike | None = None,
                   prior_fn: PriorFn | None = None, recompute: bool = False) -> np.ndarray:
  """C(x) of every training image, float32 [N, D], computed once and cached.

  The cache file is keyed by extractor name, `cache_key`, resolution, image count and
  a hash of the images themselves, so new images under an old key get new priors.

  Args:
    name: the extractor (see `load_prior`).
    images: [N, H, W, C] (float in [-1, 1] or uint8).
    cache_key: names the dataset (readably; the contents are hashed anyway).
    cache_dir: default `gantransfer_jax.assets.cache_dir()`.
    prior_fn: the extractor to use on a miss (default `load_prior(name)`).
    recompute: ignore (and overwrite) a cached file.
  """
  if name not in FEATURE_DIMS:
    raise ValueError(f"unknown prior extractor {name!r}; valid: {sorted(FEATURE_DIMS)}")
  num_images, resolution = images.shape[0], images.shape[1]
  path = priors_path(name, cache_key, resolution, num_images, cache_dir,
                     content=sources.content_digest(images))
  if os.path.exists(path) and not recompute:
    with np.load(path) as cached:
      return cached["priors"]

  prior_fn = load_prior(name) if prior_fn is None else prior_fn
  priors = np.asarray(prior_fn(images), np.float32)
  if jax.process_index() > 0:  # Every process of a multi-host run computes the same priors.
    return priors
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f"{path}.tmp{os.getpid()}"
  with open(temporary, "wb") as f:
    np.savez(f, priors=priors)
  os.replace(temporary, path)
  return priors
