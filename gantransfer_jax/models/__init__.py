"""Generators and discriminators (flax.linen); `gan.build_gan(config)` builds a family."""
