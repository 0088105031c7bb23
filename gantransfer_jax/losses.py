"""GAN losses, regularisers and EMA helpers (StyleGAN2-ADA conventions), all pure.

The train loop owns the weighting: R1 by gamma / 2 (times the lazy interval), path
length by pl_weight (times its interval), as in the official `training/loss.py`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PyTree = Any


def d_logistic_loss(real_logits: Array, fake_logits: Array) -> Array:
  """Discriminator logistic loss: -log(1 - sigmoid(fake)) - log(sigmoid(real)), means."""
  return jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))


def g_nonsaturating_loss(fake_logits: Array) -> Array:
  """Non-saturating generator loss: mean of -log(sigmoid(fake))."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def d_hinge_loss(real_logits: Array, fake_logits: Array) -> Array:
  """Hinge: mean max(0, 1 - D(x)) + mean max(0, 1 + D(G(z))) (DIP's default, Algorithm 1)."""
  return jnp.mean(jax.nn.relu(1 - real_logits)) + jnp.mean(jax.nn.relu(1 + fake_logits))


def g_hinge_loss(fake_logits: Array) -> Array:
  """The hinge generator loss: -mean D(G(z)) (as the Wasserstein one)."""
  return -jnp.mean(fake_logits)


def d_wasserstein_loss(real_logits: Array, fake_logits: Array) -> Array:
  return jnp.mean(fake_logits) - jnp.mean(real_logits)


class GanLoss(NamedTuple):
  discriminator: Callable[[Array, Array], Array]  # (real_logits, fake_logits) -> loss
  generator: Callable[[Array], Array]             # fake_logits -> loss


LOSSES = {
    "nonsaturating": GanLoss(d_logistic_loss, g_nonsaturating_loss),
    "hinge": GanLoss(d_hinge_loss, g_hinge_loss),
    "wasserstein": GanLoss(d_wasserstein_loss, g_hinge_loss),
}


def gan_loss(kind: str) -> GanLoss:
  if kind not in LOSSES:
    raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
  return LOSSES[kind]


def consistency_penalty(logits: Array, transformed_logits: Array) -> Array:
  """bCR (Zhao et al. 2020): mean over the batch of ||D(x) - D(T(x))||^2.

  The loop adds `loss.bcr_weight` times this for reals and for fakes to D's loss
  (weight 10 in paper 003's DiffAugment baseline, 1 with DIP). Gradients flow
  through both terms, as in the paper.
  """
  diff = (logits - transformed_logits).reshape(logits.shape[0], -1)
  return jnp.mean(jnp.sum(jnp.square(diff), axis=1))


def r1_penalty(d_fn: Callable[[Array], Any], reals: Array, *, return_logits: bool = False,
               has_aux: bool = False):
  """R1: mean over the batch of ||d sum(D(reals)) / d reals_i||^2.

  `d_fn` maps images to logits [B] and may include DiffAugment (with its key closed
  over): the gradient then flows through the augmentation to the un-augmented reals,
  as the DiffAugment authors do. Differentiating the result w.r.t. parameters closed
  over by `d_fn` gives the double-backprop gradient of the regulariser.

  Args:
    d_fn: images -> logits, or images -> (logits, aux) with `has_aux`.
    reals: [B, ...] real images.
    return_logits: also return `d_fn(reals)`, from the same forward pass, so that the
      loop can reuse it for the logistic loss (the official "Dreal_Dr1" phase).
    has_aux: `d_fn` also returns auxiliary output (e.g. updated model state).

  Returns:
    The scalar penalty, then the logits if `return_logits`, then aux if `has_aux`.
  """
  if has_aux:
    logits, vjp_fn, aux = jax.vjp(d_fn, reals, has_aux=True)
  else:
    logits, vjp_fn = jax.vjp(d_fn, reals)
  # The cotangent of ones is the gradient of logits.sum(): one backward pass.
  (grads,) = vjp_fn(jnp.ones_like(logits))
  penalty = jnp.mean(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))
  outputs = (penalty,) + ((logits,) if return_logits else ()) + ((aux,) if has_aux else ())
  return outputs if len(outputs) > 1 else penalty


def path_length_penalty(synth_fn: Callable[[Array], Array], ws: Array, key: Array,
                        pl_mean: Array, decay: float = 0.01) -> tuple[Array, Array]:
  """StyleGAN2 path-length regulariser (official `Gpl` phase).

  With y ~ N(0, I) / sqrt(H * W) of the images' shape, g = d sum(G(ws) * y) / d ws and
  length_b = sqrt(mean over the num_ws of sum over w_dim of g_b^2). The running mean is
  updated as pl_mean + decay * (mean_b length_b - pl_mean), and, as official, the
  penalty is measured against this updated mean *with* its gradient through the batch
  mean (only the stored copy is detached).

  Args:
    synth_fn: ws [B, num_ws, w_dim] -> images [B, H, W, C]; deterministic (close over
      the noise key).
    ws: [B, num_ws, w_dim] styles.
    key: PRNG key for the image-space projection y.
    pl_mean: scalar running mean of the lengths.
    decay: EMA rate of pl_mean.

  Returns:
    (penalty, new_pl_mean): penalty = mean_b (length_b - pl_mean')^2, to be weighted by
    pl_weight; new_pl_mean = pl_mean' without gradient.
  """
  images, vjp_fn = jax.vjp(synth_fn, ws)
  height, width = images.shape[1], images.shape[2]
  pl_noise = jax.random.normal(key, images.shape, images.dtype) / np.sqrt(height * width)
  (pl_grads,) = vjp_fn(pl_noise)  # = d sum(images * pl_noise) / d ws
  pl_lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(pl_grads), axis=2), axis=1))
  new_pl_mean = pl_mean + decay * (jnp.mean(pl_lengths) - pl_mean)
  penalty = jnp.mean(jnp.square(pl_lengths - new_pl_mean))
  return penalty, jax.lax.stop_gradient(new_pl_mean)


def ema_beta(batch_size: int, half_life_kimg: float, *, cur_nimg: int | Array | None = None,
             rampup: float | None = None) -> float | Array:
  """Per-step EMA decay for a half-life in thousands of images: 0.5 ** (B / half-life).

  With `rampup` (official `ema_rampup`), the half-life is capped at cur_nimg * rampup so
  that the average does not remember the random initialisation for too long.
  """
  half_life_nimg = half_life_kimg * 1000
  if rampup is None:
    return 0.5 ** (batch_size / half_life_nimg)
  if cur_nimg is None:
    raise ValueError("ema_beta with rampup needs cur_nimg")
  half_life_nimg = jnp.minimum(half_life_nimg, cur_nimg * rampup)
  return 0.5 ** (batch_size / jnp.maximum(half_life_nimg, 1e-8))


def ema_update(ema_params: PyTree, params: PyTree, beta: float | Array) -> PyTree:
  """Returns lerp(params, ema_params, beta) = params + beta * (ema_params - params)."""
  return jax.tree.map(lambda e, p: p + beta * (e - p), ema_params, params)
