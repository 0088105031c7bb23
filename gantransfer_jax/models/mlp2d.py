"""The small MLP generator and discriminator of the 2D study (paper 004; NOTES §5).

G: z (64) -> 64 -> 128 -> 128 -> 128 -> 64 -> 2, each hidden layer Dense + BatchNorm + ReLU.
D: 2 -> 64 -> 128 -> 128 -> 64 -> 1, Dense + ReLU; D returns a logit (the sigmoid lives
in the loss, which is the numerically stable form of the authors' `Sigmoid` + `log`).

BatchNorm follows PyTorch's `BatchNorm1d` defaults, which the authors' code uses: batch
statistics while training (`train=True`, call with `mutable=['batch_stats']`), running
averages with momentum 0.1 (flax momentum 0.9) and eps 1e-5 when `train=False`.

`torch_init=True` (the default) reproduces PyTorch's `nn.Linear` initialisation,
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias, because the study's dynamics
(which modes the pretrained GANs find) depend on it more than a large model's would.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's kaiming_uniform_(a=sqrt(5)) on a Linear kernel is U(+-1/sqrt(fan_in)),
# i.e. variance 1 / (3 fan_in).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int) -> nn.initializers.Initializer:
  bound = 1.0 / jnp.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _dense(features: int, fan_in: int, torch_init: bool, name: str | None = None) -> nn.Dense:
  if torch_init:
    return nn.Dense(features, kernel_init=_TORCH_KERNEL_INIT,
                    bias_init=_torch_bias_init(fan_in), name=name)
  return nn.Dense(features, name=name)


class Generator2D(nn.Module):
  """Maps latent codes [N, z_dim] to points [N, 2]."""

  z_dim: int = 64
  hidden: Sequence[int] = (64, 128, 128, 128, 64)
  out_dim: int = 2
  torch_init: bool = True

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    x = z
    for features in self.hidden:
      x = _dense(features, x.shape[-1], self.torch_init)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
      x = nn.relu(x)
    return _dense(self.out_dim, x.shape[-1], self.torch_init)(x)


class Discriminator2D(nn.Module):
  """Maps points [N, 2] to real/fake logits [N]."""

  hidden: Sequence[int] = (64, 128, 128, 64)
  torch_init: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for features in self.hidden:
      x = nn.relu(_dense(features, x.shape[-1], self.torch_init)(x))
    return _dense(1, x.shape[-1], self.torch_init)(x)[..., 0]
