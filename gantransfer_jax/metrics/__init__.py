"""Sample-quality metrics: the FID InceptionV3 and distances between feature sets.

  from gantransfer_jax import metrics
  from gantransfer_jax.metrics import inception

  features_fn = inception.load()  # after `python -m gantransfer_jax.assets inception`
  fid = metrics.fid_from_features(features_fn(real), features_fn(fake))

`inception` (jax, flax) is imported on use; the distances below only need numpy and jax.
"""

from gantransfer_jax.metrics.distances import convergence_kimg
from gantransfer_jax.metrics.distances import feature_statistics
from gantransfer_jax.metrics.distances import fid_from_features
from gantransfer_jax.metrics.distances import frechet_distance
from gantransfer_jax.metrics.distances import kid_from_features
from gantransfer_jax.metrics.distances import precision_recall

__all__ = [
    "convergence_kimg",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "kid_from_features",
    "precision_recall",
]
