"""Adaptive filter modulation (AdaFM, Zhao et al. 2020) as a pure transform of frozen params.

AdaFM adapts a frozen, transferred conv kernel W with a learned scale and shift per
(input, output) channel pair, shared over the kernel's spatial taps (paper eq. 2):

  W'[:, :, i, o] = gamma[i, o] * W[:, :, i, o] + beta[i, o]      (HWIO kernels)

The paper writes gamma, beta as C_out x C_in; here they are [C_in, C_out], the last two
axes of our HWIO kernels, so they broadcast without a transpose. They modulate the
residual convs (`conv_0`, `conv_1`) of G's frozen general part only: not the 1x1
shortcuts `conv_s`, not the output conv `conv_img`, not D; biases stay as they are.

Filter Selection (FS, Noguchi & Harada 2019) is the rank-one case gamma = g 1^T,
beta = b 1^T with g, b in R^{C_out} (paper §3.3): it scales and shifts whole output
filters and cannot re-weight input channels. `kind='fs'` stores only g and b.

The frozen tree is an ordinary (non-differentiated) argument of `apply`; only the
modulation is trainable, so an optimizer is built over {head, modulation} and never holds
state for the frozen weights:

  modulation = adafm.init(general_params, adafm.Spec(kind='adafm'))
  params = adafm.apply(general_params, modulation)        # inside the loss
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

Params = dict[str, Any]
Path = tuple[str, ...]

MODULATED_LAYERS = ("conv_0", "conv_1")


@dataclasses.dataclass(frozen=True)
class Spec:
  """Which kernels are modulated, and how.

  Attributes:
    kind: 'adafm' (full [C_in, C_out] gamma and beta) or 'fs' (rank one: [C_out] vectors).
    layers: names of the conv modules whose kernel is modulated, wherever they sit.
    kernel: the name of that kernel in each of them (HWIO): flax's `nn.Conv` says
      'kernel', StyleGAN2's synthesis layers 'weight'.
  """

  kind: Literal["adafm", "fs"] = "adafm"
  layers: tuple[str, ...] = MODULATED_LAYERS
  kernel: str = "kernel"


def _is_modulated(path: Path, spec: Spec) -> bool:
  return len(path) >= 2 and path[-1] == spec.kernel and path[-2] in spec.layers


def modulated_paths(frozen_params: Params, spec: Spec = Spec()) -> list[Path]:
  """Paths of the kernels `spec` modulates (each ends in (layer, spec.kernel))."""
  return [p for p in traverse_util.flatten_dict(frozen_params) if _is_modulated(p, spec)]


def init(frozen_params: Params, spec: Spec = Spec()) -> Params:
  """The identity modulation: gamma = 1, beta = 0 for every modulated kernel.

  Returns a pytree mirroring the modulated modules:
  {..., layer: {'gamma': g, 'beta': b}} with g, b of shape [C_in, C_out] ('adafm') or
  [C_out] ('fs').

  Raises:
    ValueError: unknown kind, or no kernel to modulate (a wrong tree would silently
      train nothing).
  """
  if spec.kind not in ("adafm", "fs"):
    raise ValueError(f"unknown AdaFM kind {spec.kind!r}; valid: 'adafm', 'fs'")
  flat = traverse_util.flatten_dict(frozen_params)
  modulation = {}
  for path, kernel in flat.items():
    if not _is_modulated(path, spec):
      continue
    shape = kernel.shape[-2:] if spec.kind == "adafm" else kernel.shape[-1:]
    modulation[path[:-1] + ("gamma",)] = jnp.ones(shape, kernel.dtype)
    modulation[path[:-1] + ("beta",)] = jnp.zeros(shape, kernel.dtype)
  if not modulation:
    raise ValueError(f"no kernel of a layer named {', '.join(spec.layers)} to modulate; "
                     f"top-level names: {', '.join(sorted({p[0] for p in flat}))}")
  return traverse_util.unflatten_dict(modulation)


def modulate_kernel(kernel: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
  """gamma * W + beta over an HWIO kernel; [C_out] vectors act on whole output filters."""
  return gamma * kernel + beta  # [C_in, C_out] and [C_out] both broadcast from the right.


def _is_factors(path: Path, node: Any) -> bool:
  del path
  return isinstance(node, dict) and set(node) == {"gamma", "beta"}


def apply(frozen_params: Params, modulation: Params, kernel: str = "kernel") -> Params:
  """`frozen_params` with every modulated kernel (named `kernel`, as its `Spec` says)
  replaced by gamma * W + beta.

  Equal to `frozen_params` (1 * W + 0 == W exactly) at `init`'s modulation.

  Raises:
    ValueError: a modulation entry names no kernel of `frozen_params`.
  """
  flat = traverse_util.flatten_dict(frozen_params)
  for module_path, factors in traverse_util.flatten_dict(modulation, is_leaf=_is_factors).items():
    kernel_path = module_path + (kernel,)
    if kernel_path not in flat:
      raise ValueError(f"the modulation names {'/'.join(kernel_path)}, which the frozen "
                       "params do not hold")
    flat[kernel_path] = modulate_kernel(flat[kernel_path], factors["gamma"], factors["beta"])
  return traverse_util.unflatten_dict(flat)


def frozen_during_warmup(inner: optax.GradientTransformation,
                         warmup_steps: int) -> optax.GradientTransformation:
  """`inner`, with zero updates and untouched state for the first `warmup_steps` steps.

  The authors keep gamma and beta fixed for the first 10k iterations (NOTES §3) and only
  then train them; as with `requires_grad=False` in torch, Adam's moments do not see the
  warmup gradients. Use with `optax.multi_transform` for the modulation's subtree.
  """

  def init_fn(params):
    return (jnp.zeros([], jnp.int32), inner.init(params))

  def update_fn(updates, state, params=None):
    count, inner_state = state

    def frozen(_):
      return jax.tree.map(jnp.zeros_like, updates), inner_state

    def train(_):
      return inner.update(updates, inner_state, params)

    new_updates, new_inner_state = jax.lax.cond(count < warmup_steps, frozen, train, None)
    return new_updates, (optax.safe_increment(count), new_inner_state)

  return optax.GradientTransformation(init_fn, update_fn)
