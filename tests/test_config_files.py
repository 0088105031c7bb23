"""Config files loaded by name or path, as the --config flag loads them."""

import pytest

from configs import finetune
from gantransfer_jax import config_files


@pytest.mark.parametrize("spec, expected", [
    ("finetune:dip,stylegan2,quick", ("finetune", "dip,stylegan2,quick")),
    ("configs/ps_pretrain.py:resnet,quick", ("configs/ps_pretrain.py", "resnet,quick")),
    ("configs/ps_pretrain.py", ("configs/ps_pretrain.py", "")),
    ("select", ("select", "")),
])
def test_split_spec(spec, expected):
  assert config_files.split_spec(spec) == expected


def test_name_and_path_give_the_config_the_module_gives():
  by_name = config_files.get_config("finetune:adafm,quick")
  by_path = config_files.get_config(str(config_files.CONFIG_DIR / "finetune.py") +
                                    ":adafm,quick")
  assert by_name.to_dict() == by_path.to_dict() == finetune.get_config("adafm,quick").to_dict()
  # No preset: the file's own default (finetune's is 'transfergan', not '').
  assert config_files.get_config("finetune").method == "transfergan"
  assert hasattr(config_files.load_module("ps_pretrain"), "MODEL_PRESETS")


def test_missing_config_names_the_path():
  with pytest.raises(FileNotFoundError, match="nope.py not found.*configs/"):
    config_files.load_module("nope")
  with pytest.raises(FileNotFoundError, match="elsewhere.py not found"):
    config_files.get_config("/tmp/elsewhere.py:quick")


def test_pretrain_preset_of_each_finetune_preset():
  assert finetune.pretrain_preset("transfergan") == ""
  assert finetune.pretrain_preset("adafm,quick") == "resnet,quick"
  assert finetune.pretrain_preset("dip_freezed") == "sngan"
  assert finetune.pretrain_preset("dip_freezed,stylegan2,quick") == "quick"
  assert finetune.pretrain_preset("cifar") == "cifar"
  with pytest.raises(ValueError, match="unknown preset"):
    finetune.pretrain_preset("adafm,fast")


def test_overrides_parse_literals_and_keep_bare_strings():
  config = config_files.get_config("ps_pretrain:quick")
  config_files.apply_overrides(config, ["loss.r1_gamma=1.5", "data.source=synth:pinknoise",
                                        "stylegan2.channel_max=64"])
  assert config.loss.r1_gamma == 1.5 and config.stylegan2.channel_max == 64
  assert config.data.source == "synth:pinknoise"
