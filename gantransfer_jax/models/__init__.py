"""Generators and discriminators (flax.linen); `gan.build_family(config)` builds a family (`builder.build_gan` adds MineGAN or BSA)."""
