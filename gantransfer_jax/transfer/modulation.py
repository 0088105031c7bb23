"""AdaFM and Filter Selection as a transform of G: W' = gamma * W + beta on its family's
conv kernels (`Gan.modulation_site`: the ResNet GANs' residual convs, StyleGAN2's
synthesis convs), with the math of `gantransfer_jax.adafm`.

The modulation is a top-level entry of G's params ('modulation', mirroring the kernels'
paths below the site's scope), so checkpoints, G_ema and resume keep it; the modulated
kernels are fixed (no gradient, no optimizer state) and the modulation trains after
`warmup_steps` steps (AdaFM's recipe keeps it at the identity for the first 10k, NOTES
§3), behind `adafm.frozen_during_warmup`. At init it is the identity: the network
computes exactly what it did before.

Only the kernels are fixed here: `freeze_g:N` (or the adafm family's own config) fixes
the rest of a general part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optax

from gantransfer_jax import adafm
from gantransfer_jax import freezing
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.transfer import base

KEY = "modulation"
KINDS = ("adafm", "fs")
_REST = "rest"


def _get(params, scope):
  for name in scope:
    if name not in params:
      return None
    params = params[name]
  return params


def _set(params, scope, value):
  if not scope:
    return value
  return {**params, scope[0]: _set(params[scope[0]], scope[1:], value)}


@dataclasses.dataclass(frozen=True)
class Modulation(base.Identity):
  """AdaFM ('adafm': [C_in, C_out] factors) or FS ('fs': [C_out]) over `site`'s kernels."""

  site: gan_lib.ModulationSite
  kind: str = "adafm"
  warmup_steps: int = 0
  network: str = gan_lib.GENERATOR
  adds: tuple[str, ...] = (KEY,)

  @property
  def spec(self) -> adafm.Spec:
    return adafm.Spec(kind=self.kind, layers=self.site.layers, kernel=self.site.kernel)

  def init(self, variables, rngs):
    del rngs  # The identity: nothing random.
    scoped = _get(variables["params"], self.site.scope)
    if scoped is None:
      raise ValueError(f"{self.kind}: G's params hold no {'/'.join(self.site.scope)!r}")
    return {"params": {KEY: adafm.init(scoped, self.spec)}}

  def apply(self, params):
    rest = {name: value for name, value in params.items() if name != KEY}
    scope = self.site.scope
    return _set(rest, scope, adafm.apply(_get(rest, scope), params[KEY], self.site.kernel))

  def trainable(self, params):
    # What an earlier transform fixed (a frozen general part) is no longer here.
    scoped = _get(params, self.site.scope) or {}
    kernels = [self.site.scope + path for path in adafm.modulated_paths(scoped, self.spec)]
    return freezing.split(params, kernels)

  def optimizer(self, tx):
    warmup = adafm.frozen_during_warmup(tx, self.warmup_steps)
    labels = lambda params: {name: KEY if name == KEY else _REST for name in params}
    return optax.multi_transform({KEY: warmup, _REST: tx}, labels)


def builder(kind: str) -> Callable[[gan_lib.Gan, str | None, str], Modulation]:
  """The registry's build function of `kind`: its argument is the warm-up (default 0)."""

  def build(gan: gan_lib.Gan, arg: str | None, field: str) -> Modulation:
    site = gan.modulation_site()
    if site is None:
      raise ValueError(f"{field}: a {gan.config.get('model')!r} model declares no kernels "
                       "to modulate (Gan.modulation_site)")
    try:
      warmup = 0 if arg is None else int(arg)
    except ValueError:
      warmup = -1
    if warmup < 0:
      raise ValueError(f"{field}: {kind}'s argument is its warm-up in steps, an integer "
                       f">= 0 (e.g. {kind}:100); got {arg!r}")
    return Modulation(site=site, kind=kind, warmup_steps=warmup)

  return build
