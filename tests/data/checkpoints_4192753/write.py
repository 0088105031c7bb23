"""Writes this folder's checkpoints and expected.npz; run from a checkout of 4192753, the
last commit before the condition embeddings became a transform:

  cd CHECKOUT && PYTHONPATH=. .venv/bin/python PATH/TO/write.py OUT_DIR

(then keep each run's config.json and checkpoints/). tests/test_conditional_training.py
restores them with today's code and compares the samples and D logits.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import ps_pretrain
from gantransfer_jax import builder
from gantransfer_jax import checkpoints
from gantransfer_jax import train

RUNS = {"sngan_tiny": ("sngan,tiny", {}), "cifar_tiny": ("cifar,tiny", {}),
        "tiny_labels": ("tiny", {"num_classes": 5})}


def outputs(workdir):
  """(samples, D logits of them) of the checkpoint's EMA G at fixed latents, conditions."""
  config, params = checkpoints.restore_params(workdir)
  gan = builder.build_gan(config)
  z = jax.random.normal(jax.random.key(1), (4, gan.z_dim))
  cond = jnp.eye(gan.cond_dim)[:4] if gan.cond_dim else None
  samples = gan.sample(params["generator_ema"], params["generator_state"], z, cond,
                       jax.random.key(2))
  logits, _ = gan.discriminate(params["discriminator"], params["discriminator_state"],
                               samples, cond)
  return np.asarray(samples), np.asarray(logits)


def main(out_dir):
  expected = {}
  for run, (preset, overrides) in RUNS.items():
    config = ps_pretrain.get_config(preset)
    config.update(overrides)
    config.update(total_steps=2, log_every=1, sample_every=2, checkpoint_every=2)
    workdir = os.path.join(out_dir, run)
    train.train_and_evaluate(config, workdir)
    expected[f"{run}/samples"], expected[f"{run}/logits"] = outputs(workdir)
  np.savez_compressed(os.path.join(out_dir, "expected.npz"), **expected)


if __name__ == "__main__":
  main(sys.argv[1])
