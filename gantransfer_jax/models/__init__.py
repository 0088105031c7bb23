"""Generators and discriminators (flax.linen), built from a config by `build_models`."""

from __future__ import annotations

import ml_collections


def build_models(config: ml_collections.ConfigDict):
  """(generator, discriminator) modules for config.model at config.resolution."""
  if config.model == "stylegan2":
    from gantransfer_jax.models import stylegan2  # pylint: disable=g-import-not-at-top

    cfg = config.stylegan2
    generator = stylegan2.Generator(
        resolution=config.resolution, z_dim=cfg.z_dim, w_dim=cfg.w_dim,
        mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base,
        channel_max=cfg.channel_max)
    discriminator = stylegan2.Discriminator(
        resolution=config.resolution, channel_base=cfg.channel_base,
        channel_max=cfg.channel_max, mbstd_group_size=cfg.mbstd_group_size)
    return generator, discriminator
  raise ValueError(f"unknown model {config.model!r}; valid: 'stylegan2'")
