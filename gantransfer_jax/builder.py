"""The `Gan` a config asks for: its family's (`models.families`), behind the wrappers
that change what G's input or statistics are: BSA's adapted statistics
(`config.task == 'bsa'`) and MineGAN's miner (`config.minegan`).

It sits above the families and the wrappers so that neither imports the other back
(`tests/test_imports.py`); everything that builds a model calls `build_gan` here.
"""

import ml_collections

from gantransfer_jax import bsa
from gantransfer_jax import minegan
from gantransfer_jax.models import families
from gantransfer_jax.models import gan as gan_lib


def build_gan(config: ml_collections.ConfigDict) -> gan_lib.Gan:
  family = families.get(config.model)
  gan = family.build(config)
  # Sources without batch statistics: refused by validation.check_bsa_source.
  if config.get("task") == "bsa" and family.has_generator_batch_stats:
    gan = bsa.wrap(gan)
  spec = minegan.spec_from_config(config)
  return gan if spec is None else minegan.MineGan.wrap(gan, spec)
