"""The CPU-sized (32 x 32) StyleGAN2 presets share one small-scale recipe (measured on the
ORL faces, README "Learning at CPU scale"); the paper presets keep the paper's."""

import pytest

from configs import finetune
from configs import ps_pretrain


@pytest.mark.parametrize("config", [
    ps_pretrain.get_config("quick"),
    finetune.get_config("scratch,quick"),
    finetune.get_config("transfergan,quick"),
    finetune.get_config("dip_freezed,stylegan2,quick"),
], ids=["ps_pretrain:quick", "scratch,quick", "transfergan,quick", "dip_freezed,stylegan2,quick"])
def test_quick_stylegan2_presets_share_the_small_scale_recipe(config):
  # R1 gamma 1 lazily every 16 steps and Adam lr 0.005 (both measured); path length and
  # style mixing off, as the official 'cifar' config.
  assert config.resolution == 32 or config.resolution is None  # Transfers: from the source.
  assert (config.loss.r1_gamma, config.loss.r1_interval) == (1.0, 16)
  assert (config.optim.g_lr, config.optim.d_lr) == (0.005, 0.005)
  assert config.loss.pl_weight == 0 and config.loss.style_mixing_prob == 0


def test_paper_recipe_and_other_families_keep_their_losses():
  paper = ps_pretrain.get_config("")
  assert (paper.loss.r1_gamma, paper.loss.pl_weight, paper.loss.style_mixing_prob) == (
      10.0, 2.0, 0.9)
  assert (paper.optim.g_lr, paper.optim.d_lr) == (0.002, 0.002)
  resnet = ps_pretrain.get_config("resnet,quick")
  assert resnet.loss.r1_gamma == 10.0 and resnet.loss.r1_interval == 4
  assert resnet.optim.g_lr == 1e-4
  assert finetune.get_config("adafm,quick").loss.r1_interval == 4
