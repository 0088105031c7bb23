"""The `Gan` a config asks for: its family's (`models.families`), behind the wrappers
that change what the networks see: the transfer transforms (`transfer.wrapper`; the
family's own and `config.transfer`'s), BSA's adapted statistics (`config.task == 'bsa'`)
and MineGAN's miner (`config.minegan`).

It sits above the families and the wrappers so that neither imports the other back
(`tests/test_imports.py`); everything that builds a model calls `build_gan` here.
"""

import ml_collections

from gantransfer_jax import bsa
from gantransfer_jax import minegan
from gantransfer_jax.models import families
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.transfer import registry as transfer_registry
from gantransfer_jax.transfer import wrapper as transfer_wrapper


def build_gan(config: ml_collections.ConfigDict) -> gan_lib.Gan:
  """Raises ValueError for transforms that cannot apply (`transfer.registry.problems`)."""
  family = families.get(config.model)
  gan = family.build(config)
  transforms = transfer_registry.from_config(config, gan)
  if transforms:  # Without any, the family's `Gan` as it is.
    gan = transfer_wrapper.TransferGan.wrap(gan, transforms)
  # Sources without batch statistics: refused by validation.check_bsa_source.
  if config.get("task") == "bsa" and family.has_generator_batch_stats:
    gan = bsa.wrap(gan)
  spec = minegan.spec_from_config(config)
  return gan if spec is None else minegan.MineGan.wrap(gan, spec)
