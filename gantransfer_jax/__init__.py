"""gantransfer_jax: GAN transfer learning when data is scarce, in JAX/Flax.

Sub-packages:
  synth/     on-device synthetic pretraining data (Primitives-PS, paper 001)
  models/    flax.linen generators and discriminators
  metrics/   FID InceptionV3, FID / KID / precision-recall
  data/      real low-shot image sources
  analysis/  spectrum analysis and other studies
"""

__version__ = "0.1.0"
