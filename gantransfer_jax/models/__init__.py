"""Generators and discriminators (flax.linen); `families.get(config.model).build(config)` builds a family (`builder.build_gan` adds MineGAN or BSA)."""
