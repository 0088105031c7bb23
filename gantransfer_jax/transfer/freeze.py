"""Freezing as a transform: FreezeD (`freeze_d:N`, D) and GmDn's G side (`freeze_g:N`).

The first N of a network's groups of layers, counted from the image side as its family
says (`Gan.discriminator_groups` / `generator_groups`: StyleGAN2's D blocks b256, b128,
... and its synthesis blocks synthesis/b256, ...; the ResNet GANs' `conv_img`,
`resnet_0`, ...), stay as they are: a prefix split
(`gantransfer_jax.freezing`), so they get no gradient and no optimizer state.
"""

from __future__ import annotations

import dataclasses

from gantransfer_jax import freezing
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.transfer import base

Prefix = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Freeze(base.Identity):
  """Fixes every leaf under one of `prefixes`; adds nothing, changes nothing."""

  network: str
  prefixes: tuple[Prefix, ...]

  def init(self, variables, rngs):
    del rngs
    # A prefix naming nothing is a bug.
    freezing.check_prefixes(variables["params"], self.prefixes)
    return {}

  def trainable(self, params):
    return freezing.split(params, self.prefixes)


def first_groups(gan: gan_lib.Gan, network: str, arg: str | None,
                 field: str) -> Freeze | None:
  """Freezes `network`'s first `arg` groups (None for 0: nothing to freeze).

  Raises:
    ValueError: `arg` is not a count in [0, groups - 1] (one group always trains), or
      the family has no groups for `network`. `field` names what set it.
  """
  groups = (gan.generator_groups() if network == gan_lib.GENERATOR
            else gan.discriminator_groups())
  try:
    count = int(arg)
  except (TypeError, ValueError):
    raise ValueError(f"{field} takes a number of {network} groups to freeze, e.g. "
                     f"freeze_{network[0]}:2; got {arg!r}") from None
  if count and not groups:
    raise ValueError(f"{field}: a {gan.config.get('model')!r} model's {network} declares no "
                     f"groups to freeze (Gan.{network}_groups)")
  if not 0 <= count < max(len(groups), 1):
    names = ", ".join("+".join("/".join(prefix) for prefix in group) for group in groups)
    raise ValueError(f"{field} must be in [0, {len(groups) - 1}] at resolution "
                     f"{gan.resolution} (blocks {names}), got {count}")
  if not count:
    return None
  return Freeze(network, freezing.group_prefixes(groups, count))


def build_d(gan: gan_lib.Gan, arg: str | None, field: str) -> Freeze | None:
  return first_groups(gan, gan_lib.DISCRIMINATOR, arg, field)


def build_g(gan: gan_lib.Gan, arg: str | None, field: str) -> Freeze | None:
  return first_groups(gan, gan_lib.GENERATOR, arg, field)
