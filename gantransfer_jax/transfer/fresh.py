"""Fresh layers as a transform: `fresh_d:b4`, `fresh_g:mapping+synthesis/b4`.

A finetune takes every parameter from its source checkpoint (TransferGAN) except the
layers listed here, which start from the new model's random init instead (in G and
G_ema alike): a new discriminator head, or an ablation of which layers' transfer
helps. The argument is '+'-separated parameter prefixes, each '/'-separated below the
network's top level (`b4` is StyleGAN2's D epilogue, `fc` the ResNet D's output layer).
It changes nothing else: the fresh layers train, and freezing them too is the user's
call (`freeze_d` counts groups from the image side, a head is on the other).

The families' own fresh parts are not this transform: condition embeddings whose shape
differs from the source's (DIP's G_emb / D_emb) and the AdaFM family's style head follow
from the shapes, so the families' `Gan.transfer` keeps them.
"""

from __future__ import annotations

import dataclasses

import jax

from gantransfer_jax import freezing
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.transfer import base

Prefix = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Fresh(base.Identity):
  """Takes every leaf under one of `prefixes` from the fresh init at transfer."""

  network: str
  prefixes: tuple[Prefix, ...]

  def transfer(self, fresh, loaded):
    _, fresh_layers = freezing.split(fresh, self.prefixes)
    return freezing.merge(loaded, fresh_layers)


def _parse_prefixes(arg: str | None, network: str, field: str) -> tuple[Prefix, ...]:
  usage = f"fresh_{network[0]}:NAME[+NAME...], e.g. fresh_{network[0]}:b4"
  if not arg:
    raise ValueError(f"{field} takes the {network} layers to start fresh ({usage}); "
                     "got none")
  prefixes = tuple(tuple(item.split("/")) for item in arg.split("+"))
  if any(not name for prefix in prefixes for name in prefix):
    raise ValueError(f"{field}: {arg!r} has an empty layer name ({usage})")
  return prefixes


def layers(gan: gan_lib.Gan, network: str, arg: str | None, field: str) -> Fresh:
  """Starts `arg`'s layers of `network` fresh.

  Raises:
    ValueError: no `init_checkpoint` to transfer from (every layer would be fresh),
      no argument, an empty name, or a prefix that names no parameter of the family's
      `network` (checked on the shapes of an init: nothing is computed).
  """
  if not gan.config.get("init_checkpoint"):
    raise ValueError(f"{field} starts layers fresh when a finetune transfers the others "
                     "from init_checkpoint, which is not set (without it all are fresh)")
  prefixes = _parse_prefixes(arg, network, field)
  g_vars, d_vars = jax.eval_shape(gan.init, jax.random.key(0))
  params = (g_vars if network == gan_lib.GENERATOR else d_vars)["params"]
  try:
    freezing.check_prefixes(params, prefixes, what=f"{network} layer")
  except ValueError as e:
    raise ValueError(f"{field}: {e}") from None
  return Fresh(network, prefixes)


def build_d(gan: gan_lib.Gan, arg: str | None, field: str) -> Fresh:
  return layers(gan, gan_lib.DISCRIMINATOR, arg, field)


def build_g(gan: gan_lib.Gan, arg: str | None, field: str) -> Fresh:
  return layers(gan, gan_lib.GENERATOR, arg, field)
