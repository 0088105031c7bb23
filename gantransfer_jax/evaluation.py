"""Sample quality of a generator against a reference set: FID, KID, precision/recall.

Used every `config.eval_every` steps by the training loop and by the `evaluate` task.
The reference set is the real target set when finetuning (all of it, not just the
n-shot training subset, as the papers evaluate) and a fixed synthetic set when
pretraining. Its features are computed on first use and cached on disk. The scores are
those of the registered metrics (gantransfer_jax.metrics.registry).

Deviation: paper 004 computes precision/recall on VGG16 features; VGG16 weights are
not available offline here, so precision/recall use the same Inception pool features
as FID (k = 5 neighbours, Kynkaanniemi et al.).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from gantransfer_jax import metrics
from gantransfer_jax import parallel
from gantransfer_jax import progress
from gantransfer_jax.data import sampler as sampler_lib
from gantransfer_jax.data import sources
from gantransfer_jax.metrics import inception
from gantransfer_jax.metrics import registry

_EVAL_SALT = 3
_REFERENCE_SALT = 4


def eval_keys() -> tuple[str, ...]:
  """The keys of an evaluation in metrics.jsonl: one per registered score."""
  return tuple(f"eval/{name}" for name in registry.score_names())


EVAL_KEYS = eval_keys()  # The built-in metrics' (eval_keys() includes any added later).



def _batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
  for start in range(0, len(images), batch_size):
    yield images[start:start + batch_size]


def reference_set(config: ml_collections.ConfigDict, cache_dir: str | None = None,
                  num_reference: int | None = None) -> tuple[str, int, Callable[[], Iterator]]:
  """(cache key, image count, batch iterator factory) of the evaluation reference set.

  Real data: the whole set unless `num_reference` asks for a (seeded) subset.
  Synthetic data: `num_reference` (default config.eval_num_images) fixed images.
  The key ends in a hash of the images (real: all of them; synthetic: the first batch,
  which changes with the synthesizer's code), so cached statistics follow the contents.
  """
  batch = 64
  if sampler_lib.is_synthetic(config.data.source):
    sampler = sampler_lib.make_sampler(config)
    num = num_reference or config.eval_num_images
    key = jax.random.fold_in(jax.random.key(config.seed), _REFERENCE_SALT)
    options = json.dumps({k: config.data[k] for k in ("n_shapes", "size_policy")})
    name = f"{config.data.source}-{options}-seed{config.seed}"
    synthesize = jax.jit(lambda key: sampler.sample(sampler.data, key, batch)["images"])
    first = np.asarray(synthesize(jax.random.fold_in(key, 0)))

    def synthetic_batches():
      for i in range(0, num, batch):
        yield first if i == 0 else np.asarray(synthesize(jax.random.fold_in(key, i)))

    return f"{name}-{sources.content_digest(first)}", num, synthetic_batches

  full = ml_collections.ConfigDict(config.data.to_dict())
  full.num_images = num_reference or 0  # Default: the whole target set.
  full.fraction = 1.0
  full.subset_seed = full.get("subset_seed", 0)  # Pretraining configs have none.
  images = sources.load_dataset(full, config.resolution, cache_dir=cache_dir)
  subset = f"n{num_reference}s{full.subset_seed}" if num_reference else "all"
  name = f"{sources.describe(config.data.source)}-{subset}-{sources.content_digest(images)}"
  return name, len(images), lambda: _batches(images, batch)


FeatureFn = Callable[[Any], np.ndarray]


def load_feature_fn(network: str, mesh) -> FeatureFn:
  """images -> [N, D] features of a registered metric's feature network."""
  if network == registry.INCEPTION:
    return inception.load(mesh=mesh)
  raise ValueError(f"no feature network {network!r} (registered metrics need "
                   f"{registry.feature_networks()})")


class ReferenceFeatures:
  """The reference set's features per feature network, read from the statistics cache
  or computed on first use (not on construction: a run that never evaluates, or whose
  evaluation is abandoned, never decodes the reference set)."""

  def __init__(self, config: ml_collections.ConfigDict, *, num_reference: int | None = None,
               cache_dir: str | None = None, stats_cache_dir: str | None = None):
    self._config, self._num_reference = config, num_reference
    self._cache_dir, self._stats_cache_dir = cache_dir, stats_cache_dir
    self._stats: dict[str, inception.ReferenceStats] = {}

  def __call__(self, network: str, feature_fn: FeatureFn) -> inception.ReferenceStats:
    if network not in self._stats:
      name, count, batches = reference_set(self._config, self._cache_dir, self._num_reference)
      if network != registry.INCEPTION:  # Inception's keys are those of files cached before.
        name = f"{network}-{name}"
      self._stats[network] = inception.reference_stats(
          name, batches, resolution=self._config.resolution, num_images=count,
          feature_fn=feature_fn, cache_dir=self._stats_cache_dir)
    return self._stats[network]


class GeneratedFeatures:
  """Features of `num_images` images of a generator, drawn from fixed latents (the same
  ones for every call, and for generators of equal z_dim and config seed)."""

  def __init__(self, config: ml_collections.ConfigDict, gan, mesh, *, num_images: int,
               sample_cond: Callable[[jax.Array, int], Any] | None = None):
    """`gan` is a `gantransfer_jax.models.gan.Gan`; a conditional one needs
    `sample_cond(key, n)`, which draws the conditions (e.g. the training priors)."""
    self.num_images = num_images
    batch = min(64, -(-num_images // mesh.size) * mesh.size)
    self._batch = -(-batch // mesh.size) * mesh.size
    key = jax.random.fold_in(jax.random.key(config.seed), _EVAL_SALT)
    k_z, k_cond, self._noise_key = jax.random.split(key, 3)
    num_batches = -(-num_images // self._batch)
    self._latents = jax.random.normal(k_z, (num_batches, self._batch, gan.z_dim))
    if gan.cond_dim and sample_cond is None:
      raise ValueError("a conditional generator needs sample_cond to draw its conditions")
    self._conds = [None if sample_cond is None else
                   sample_cond(jax.random.fold_in(k_cond, i), self._batch)
                   for i in range(num_batches)]

    @functools.partial(jax.jit, out_shardings=parallel.batch_sharded(mesh))
    def generate(params, state, z, cond, key):
      return gan.sample(params, state, z, cond, key)

    self._generate = generate

  def __call__(self, params: Any, state: Any, feature_fns: Mapping[str, FeatureFn],
               should_stop: Callable[[], bool] | None = None) -> dict[str, np.ndarray] | None:
    """{network: features} of the generated images, each image generated once; None
    (abandoned) once `should_stop()` is true between batches: a preempted run must stop
    within its grace period."""
    features = {network: [] for network in feature_fns}
    with progress.Counter("generating and scoring images", self.num_images) as counter:
      for i, (z, cond) in enumerate(zip(self._latents, self._conds)):
        if should_stop is not None and should_stop():
          return None
        images = self._generate(params, state, z, cond,
                                jax.random.fold_in(self._noise_key, i))
        for network, feature_fn in feature_fns.items():
          features[network].append(np.asarray(feature_fn(images)))  # Blocks: honest rates.
        counter.update(min(len(z), self.num_images - counter.done))
    return {network: np.concatenate(chunks)[:self.num_images]
            for network, chunks in features.items()}


class Evaluator:
  """Generates `num_images` with fixed latents and scores them against a reference set
  with every registered metric (gantransfer_jax.metrics.registry)."""

  def __init__(self, config: ml_collections.ConfigDict, gan, mesh, *,
               num_images: int, num_reference: int | None = None, k: int = 5,
               feature_fn: FeatureFn | None = None, cache_dir: str | None = None,
               stats_cache_dir: str | None = None,
               sample_cond: Callable[[jax.Array, int], Any] | None = None):
    """`feature_fn` replaces Inception's features (tests); see GeneratedFeatures for
    `gan` and `sample_cond`."""
    self.num_images = num_images
    self.k = k
    self._mesh = mesh
    self._feature_fns = {} if feature_fn is None else {registry.INCEPTION: feature_fn}
    self._reference = ReferenceFeatures(config, num_reference=num_reference,
                                        cache_dir=cache_dir, stats_cache_dir=stats_cache_dir)
    self._generated = GeneratedFeatures(config, gan, mesh, num_images=num_images,
                                        sample_cond=sample_cond)

  def feature_fns(self, networks: Sequence[str] | None = None) -> dict[str, FeatureFn]:
    """{network: feature_fn} of `networks` (default: those the metrics need), loaded once."""
    networks = registry.feature_networks() if networks is None else networks
    for network in networks:
      if network not in self._feature_fns:
        self._feature_fns[network] = load_feature_fn(network, self._mesh)
    return {network: self._feature_fns[network] for network in networks}

  @property
  def reference(self) -> inception.ReferenceStats:
    """The reference set's Inception features and statistics (computed on first use)."""
    (feature_fn,) = self.feature_fns([registry.INCEPTION]).values()
    return self._reference(registry.INCEPTION, feature_fn)

  def generated_features(self, params: Any, state: Any,
                         should_stop: Callable[[], bool] | None = None) -> np.ndarray | None:
    """Inception features of the generated images; None if abandoned (see __call__)."""
    features = self._generated(params, state, self.feature_fns([registry.INCEPTION]),
                               should_stop)
    return None if features is None else features[registry.INCEPTION]

  def __call__(self, params: Any, state: Any,
               should_stop: Callable[[], bool] | None = None) -> dict[str, float] | None:
    """{'eval/<score>': value} of every registered score; None once `should_stop()` is
    true between batches."""
    feature_fns = self.feature_fns()
    # The reference first (once per run; cached after): the generated batches are the
    # part a stop request can abandon between, so it comes last, as before the registry.
    real = {network: self._reference(network, fn).features
            for network, fn in feature_fns.items()}
    fake = self._generated(params, state, feature_fns, should_stop)
    if fake is None:
      return None
    return {f"eval/{name}": value
            for name, value in registry.compute(real, fake, k=self.k).items()}


def condition_sampler(train_config: ml_collections.ConfigDict, gan,
                      cache_dir: str | None = None) -> Callable[[jax.Array, int], Any] | None:
  """`sample_cond(key, n)` drawing a conditional model's conditions as in training (its
  own training set's priors or labels); None for an unconditional model."""
  if not gan.cond_dim:
    return None
  sampler = sampler_lib.make_sampler(train_config, cache_dir=cache_dir)
  return functools.partial(sampler.sample_cond, jax.device_put(sampler.data))


def scores(reference: inception.ReferenceStats, features: np.ndarray,
           k: int = 5) -> dict[str, float]:
  """Every registered score of Inception `features` vs a reference (metrics on another
  feature network need `registry.compute`)."""
  return registry.compute({registry.INCEPTION: reference.features},
                          {registry.INCEPTION: features}, k=k)


def convergence_from_history(records: list[dict[str, Any]]) -> float | None:
  """kimg at which the primary score (FID) first came within 5% of its best (papers 001, 004)."""
  evals = [(r["perf/kimg"], r[registry.PRIMARY_KEY]) for r in records
           if r.get(registry.PRIMARY_KEY) is not None and r.get("perf/kimg") is not None]
  if not evals:
    return None
  kimg, fids = zip(*evals)
  return metrics.convergence_kimg(kimg, fids)

