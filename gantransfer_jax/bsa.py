"""Batch statistics adaptation (BSA; Noguchi & Harada 2019) over a frozen SNGAN generator.

BSA is not adversarial. Every convolution and linear weight of a pretrained G stays
frozen, and so do its batch-norm running statistics; what is learned is

* one latent code per training image (`latents`, [N, z_dim], zero at the start as in
  the authors' code), and
* a per-channel scale and shift of every normalisation layer's output (`adaptation`):
  y' = scale * y + shift, with y the output of a batch norm *including its own affine*
  (SNGAN's conditional batch norms `cbn1`/`cbn2` of each block and the final `bn_out`).
  As G runs in inference mode (running statistics), a batch norm is a per-channel
  affine map, so the scale and shift re-fit the statistics it normalises with: this is
  the adaptation of the statistics that gives BSA its name.

The loss (the authors' SmallGAN code) is L1(G(z_i + eps), x_i) divided by its own value
(so it contributes 1 and its gradient is scaled by 1/L1), plus `perceptual_weight` times
the L1 distance between feature maps of a frozen network, plus `latent_weight` times an
earth mover's distance of the batch's latents to 10x as many N(0, I) draws;
eps ~ N(0, latent_noise^2). New images come from z ~ N(mean, cov) fitted to the learned
latents (kept in G's state as `bsa_gaussian`, refitted every step).

Deviations, all because of this toolkit's offline setting or its architecture:
* The perceptual features are torchvision's ImageNet MobileNetV2 (`models.mobilenet_v2`,
  outputs of blocks 1, 3, 6 and 13: strides 2 to 16) instead of VGG16, whose weights
  cannot be fetched offline. The authors' weight (0.001 per layer) was set for VGG16's
  activations; it is kept, so the balance of the terms is not theirs.
* The scale and shift act on the outputs of the normalisation layers, not on their
  inputs' statistics; the first linear layer (trained with a tiny learning rate by the
  authors) stays frozen: its output enters a batch norm, whose adaptation covers it.
* SNGAN only: StyleGAN2 and the ResNet GANs have no batch statistics to adapt.

The adaptation is a transform of G's forward pass (flax method interception), so the
frozen parameter tree is used exactly as stored:

  layers = bsa.statistics_layers(functools.partial(generator.apply, train=False), g_vars,
                                 z, embedding)
  adaptation = bsa.init_adaptation(layers)
  with bsa.adapted(adaptation):
    images = generator.apply(g_vars, z, embedding, train=False)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from gantransfer_jax.models import gan as gan_lib

Array = jax.Array
Params = dict[str, Any]
Path = tuple[str, ...]

# Top-level names of a BSA generator's params and state.
SOURCE = "source"            # The frozen pretrained G's params.
ADAPTATION = "bsa"           # {layer path...: {'scale', 'shift'}}, the trainable part.
GAUSSIAN = "bsa_gaussian"    # {'mean': [z_dim], 'cov': [z_dim, z_dim]} of the latents.

# MobileNetV2 blocks whose outputs the perceptual distance compares (strides 2, 4, 8, 16;
# the last block at each of those resolutions, as VGG's relu1_2 ... relu4_3 are).
PERCEPTUAL_BLOCKS = ("block1", "block3", "block6", "block13")
# The authors' reference sample: 10 standard-normal draws per latent of the batch.
EMD_REFERENCE_MULTIPLE = 10


# ---- The adaptation: a transform of the frozen generator's forward pass ----------------


def _is_statistics_layer(module: nn.Module) -> bool:
  """SNGAN's conditional batch norms and its plain ones outside them (`bn_out`)."""
  from gantransfer_jax.models import sngan  # pylint: disable=g-import-not-at-top

  if isinstance(module, sngan.ConditionalBatchNorm):
    return True
  return isinstance(module, nn.BatchNorm) and not isinstance(module.parent,
                                                             sngan.ConditionalBatchNorm)


def _interceptor(on_output: Callable[[Path, Array], Array]):
  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and _is_statistics_layer(context.module):
      return on_output(tuple(context.module.path), out)
    return out
  return intercept


def statistics_layers(forward: Callable[..., Array], *args: Any) -> dict[Path, int]:
  """{module path: channels} of the layers BSA adapts in G's `forward(*args)`, found by
  tracing it once (shapes only, no FLOPs).

  Raises:
    ValueError: the forward pass has no batch norm (nothing to adapt).
  """
  found = {}

  def record(path, out):
    found[path] = out.shape[-1]
    return out

  with nn.intercept_methods(_interceptor(record)):
    jax.eval_shape(forward, *args)
  if not found:
    raise ValueError("the generator has no batch norm: BSA has no statistics to adapt")
  return found


def init_adaptation(layers: dict[Path, int]) -> Params:
  """The identity adaptation: scale 1, shift 0 per channel of every layer."""
  flat = {}
  for path, channels in layers.items():
    flat[path + ("scale",)] = jnp.ones((channels,), jnp.float32)
    flat[path + ("shift",)] = jnp.zeros((channels,), jnp.float32)
  return traverse_util.unflatten_dict(flat)


def _is_factors(path: Path, node: Any) -> bool:
  del path
  return isinstance(node, dict) and set(node) == {"scale", "shift"}


@contextlib.contextmanager
def adapted(adaptation: Params) -> Iterator[None]:
  """Within the block, every statistics layer's output y becomes scale * y + shift.

  Raises (when G runs):
    ValueError: G has a statistics layer the adaptation does not name (another G).
  """
  factors = traverse_util.flatten_dict(adaptation, is_leaf=_is_factors)

  def scale_and_shift(path, out):
    if path not in factors:
      raise ValueError(f"the BSA adaptation has no scale/shift for layer {'/'.join(path)}: "
                       "it was made for another generator")
    return out * factors[path]["scale"] + factors[path]["shift"]

  with nn.intercept_methods(_interceptor(scale_and_shift)):
    yield


# ---- Losses ------------------------------------------------------------------------------


def l1_distance(x: Array, y: Array) -> Array:
  return jnp.mean(jnp.abs(x - y))


def earth_movers_penalty(z: Array, key: Array,
                         multiple: int = EMD_REFERENCE_MULTIPLE) -> Array:
  """The authors' latent regulariser: a nearest-neighbour (relaxed earth mover's)
  distance between the latents z [B, D] and `multiple` * B draws t of N(0, I):
  mean_t min_z ||z - t||^2 + mean_z min_t ||z - t||^2."""
  t = jax.random.normal(key, (multiple * z.shape[0], z.shape[1]), z.dtype)
  dist = (jnp.sum(z ** 2, axis=1, keepdims=True) - 2 * z @ t.T
          + jnp.sum(t ** 2, axis=1)[None, :])
  return jnp.mean(jnp.min(dist, axis=0)) + jnp.mean(jnp.min(dist, axis=1))


def mobilenet_feature_maps(variables: Any, images: Array, size: int) -> list[Array]:
  """Feature maps of `PERCEPTUAL_BLOCKS` for images in [-1, 1], resized to `size`."""
  from gantransfer_jax.models import mobilenet_v2  # pylint: disable=g-import-not-at-top

  wanted = lambda module, method: method == "__call__" and module.name in PERCEPTUAL_BLOCKS
  _, state = mobilenet_v2.MobileNetV2().apply(
      variables, mobilenet_v2.preprocess(images, size=size), capture_intermediates=wanted)
  outputs = state["intermediates"]
  return [outputs[name]["__call__"][0] for name in PERCEPTUAL_BLOCKS]


def perceptual_distance(features_of: Callable[[Array], list[Array]], x: Array,
                        y: Array) -> Array:
  """Sum over layers of the mean L1 distance between feature maps (SmallGAN's form)."""
  return sum(l1_distance(a, b) for a, b in zip(features_of(x), features_of(y)))


# ---- Sampling: a Gaussian fitted to the learned latents --------------------------------


def fit_gaussian(latents: Array) -> dict[str, Array]:
  """Mean and (unbiased) covariance of latents [N, D]."""
  mean = jnp.mean(latents, axis=0)
  centred = latents - mean
  cov = centred.T @ centred / max(latents.shape[0] - 1, 1)
  return {"mean": mean, "cov": cov}


def gaussian_latents(gaussian: dict[str, Array], eps: Array) -> Array:
  """mean + eps @ sqrt(cov) for eps ~ N(0, I) [B, D]: draws of N(mean, cov).

  The symmetric square root (eigendecomposition) is exact for a singular cov, which a
  few-shot set always gives (N - 1 < z_dim directions)."""
  values, vectors = jnp.linalg.eigh(gaussian["cov"])
  root = (vectors * jnp.sqrt(jnp.clip(values, 0.0))) @ vectors.T
  return gaussian["mean"] + eps @ root


# ---- The generator as the toolkit samples it --------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class BsaGan(gan_lib.Gan):
  """A BSA run's generator behind the `Gan` interface, so that the sample command,
  evaluation and the sweep use it as any other: `g_params` is {'source', 'bsa'},
  `g_state` the source's state plus `bsa_gaussian`; `sample` maps its z ~ N(0, I) to
  N(mean, cov) of the learned latents. There is no discriminator to train."""

  base: gan_lib.Gan | None = None

  @staticmethod
  def source_state(g_state: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in g_state.items() if name != GAUSSIAN}

  def reconstruct(self, g_params: Params, g_state: dict[str, Any], z: Array) -> Array:
    """G(z) with the adaptation, in inference mode (frozen running statistics)."""
    with adapted(g_params[ADAPTATION]):
      return self.base.sample(g_params[SOURCE], self.source_state(g_state), z, None, None)

  def statistics_layers(self, source_params: Params,
                        source_state: dict[str, Any]) -> dict[Path, int]:
    z = jnp.zeros((1, self.z_dim), jnp.float32)
    return statistics_layers(
        lambda p, s: self.base.sample(p, s, z, None, None), source_params, source_state)

  def sample(self, g_params, g_state, z, cond, key):
    del cond, key
    return self.reconstruct(g_params, g_state, gaussian_latents(g_state[GAUSSIAN], z))

  def generate(self, g_params, g_state, z, cond, key):
    return self.sample(g_params, g_state, z, cond, key), g_state


def wrap(gan: gan_lib.Gan) -> BsaGan:
  """`gan` (an unconditional SNGAN) as a BSA run's generator."""
  if gan.cond_dim:
    raise ValueError("BSA adapts an unconditional generator; this one is conditional "
                     "(dip.prior or num_classes)")
  return BsaGan(gan.generator, gan.discriminator, gan.config, cond_dim=0, base=gan)
