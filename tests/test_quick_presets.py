"""The CPU-sized (32 x 32) StyleGAN2 presets use the official code's 32 x 32 losses."""

import pytest

from configs import finetune
from configs import ps_pretrain


def official_r1_gamma(resolution: int, batch: int) -> float:
  """StyleGAN2-ADA `train.py`, cfg 'auto': `spec.gamma = 0.0002 * (res ** 2) / spec.mb`."""
  return 0.0002 * resolution ** 2 / batch


@pytest.mark.parametrize("config", [
    ps_pretrain.get_config("quick"),
    finetune.get_config("scratch,quick"),
    finetune.get_config("transfergan,quick"),
    finetune.get_config("dip_freezed,stylegan2,quick"),
], ids=["ps_pretrain:quick", "scratch,quick", "transfergan,quick", "dip_freezed,stylegan2,quick"])
def test_quick_stylegan2_losses_are_the_official_32px_ones(config):
  # R1 scaled with resolution^2 / batch (the recipe's 10 is ~800x this at 32 px), lazy
  # every 16 steps; path length and style mixing off, as the official 'cifar' config.
  assert config.resolution == 32 or config.resolution is None  # Transfers: from the source.
  assert config.loss.r1_gamma == pytest.approx(official_r1_gamma(32, config.batch_size))
  assert config.loss.r1_interval == 16
  assert config.loss.pl_weight == 0 and config.loss.style_mixing_prob == 0


def test_paper_recipe_and_other_families_keep_their_losses():
  paper = ps_pretrain.get_config("")
  assert (paper.loss.r1_gamma, paper.loss.pl_weight, paper.loss.style_mixing_prob) == (
      10.0, 2.0, 0.9)
  resnet = ps_pretrain.get_config("resnet,quick")
  assert resnet.loss.r1_gamma == 10.0 and resnet.loss.r1_interval == 4
  assert finetune.get_config("adafm,quick").loss.r1_interval == 4
