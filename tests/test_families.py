"""The model-family registry: a new family needs no edit to generic code, and generic
code names no family (issue #18: `grep -n 'model ==\\|"stylegan2" in\\|hasattr(gan'`)."""

import pathlib
import re

import jax
import ml_collections
import pytest

from configs import ps_pretrain
from gantransfer_jax import builder
from gantransfer_jax import minegan
from gantransfer_jax import validation
from gantransfer_jax.models import families
from gantransfer_jax.models import gan as gan_lib
from gantransfer_jax.models import resnet_gan

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gantransfer_jax"
TOY = "toy"


def _build_toy(config):
  """A ResNet GAN read from its own `toy` section: nothing generic knows that name."""
  cfg = config.toy
  return gan_lib.ResNetGan(
      resnet_gan.ResNetGenerator(config.resolution, z_dim=cfg.z_dim, nf=cfg.nf),
      resnet_gan.ResNetDiscriminator(config.resolution, nf=cfg.nf), config)


def _toy_problems(config):
  nf = (config.get(TOY) or {}).get("nf", 0)  # Asked even without the section.
  return [] if nf <= 8 else [f"toy.nf must be <= 8, got {nf}"]


@pytest.fixture(name="toy_family")
def fixture_toy_family():
  family = families.register(families.Family(
      name=TOY, build=_build_toy, config_section=TOY, problems=_toy_problems))
  yield family
  families.unregister(TOY)  # Later tests' "valid: ..." messages list the built-in four.


def toy_config(**toy):
  config = ps_pretrain.get_config("resnet,tiny")
  config.model = TOY
  config.toy = ml_collections.ConfigDict({**config.resnet.to_dict(), **toy})
  del config["resnet"]
  return config


def test_the_built_in_families_in_their_message_order():
  assert families.names() == ("stylegan2", "resnet", "adafm", "sngan")
  with pytest.raises(ValueError, match="unknown model 'biggan'; valid: stylegan2, resnet, "
                                       "adafm, sngan"):
    families.get("biggan")
  assert families.lookup("biggan") is None


def test_a_registered_family_builds_and_validates_without_generic_edits(toy_family,
                                                                        tmp_path):
  del toy_family
  config = toy_config()
  gan = builder.build_gan(config)
  assert isinstance(gan, gan_lib.ResNetGan)
  g_vars, _ = gan.init(jax.random.key(0))
  images = gan.sample(g_vars["params"], {}, jax.numpy.zeros((2, gan.z_dim)), None,
                      jax.random.key(1))
  assert images.shape == (2, 16, 16, 3)
  validation.validate_train_config(config, str(tmp_path / "run"))


def test_a_registered_family_is_validated_by_its_capabilities(toy_family, tmp_path):
  del toy_family
  config = toy_config(nf=16)
  config.loss.pl_weight = 1.0  # The toy family has no path length,
  config.num_classes = 3  # nor conditioning.
  with pytest.raises(validation.ConfigError) as error:
    validation.validate_train_config(config, str(tmp_path / "run"))
  assert str(error.value).splitlines()[1:] == [
      "  - toy.nf must be <= 8, got 16",
      "  - path-length regularisation is StyleGAN2's; set loss.pl_weight=0 for model 'toy'",
      "  - conditioning (dip.prior or num_classes) needs model 'sngan' or 'stylegan2', not "
      "'toy'"]
  config = toy_config()
  del config["toy"]
  with pytest.raises(validation.ConfigError, match="model 'toy' needs a config.toy section"):
    validation.validate_train_config(config, str(tmp_path / "run"))


def test_a_family_owns_its_config_defaults():
  from gantransfer_jax.models import sngan
  from gantransfer_jax.models import stylegan2
  for preset, name, module in (("", "stylegan2", stylegan2), ("resnet", "resnet", resnet_gan),
                               ("sngan", "sngan", sngan)):
    assert ps_pretrain.get_config(preset)[name].to_dict() == module.CONFIG_DEFAULTS
  section = families.default_section("resnet")
  section.nf = 1  # A config's copy: the family's defaults stay as they are.
  assert families.default_section("resnet").nf == resnet_gan.CONFIG_DEFAULTS["nf"] == 64
  with pytest.raises(ValueError, match="'adafm' owns no config section of its own"):
    families.default_section("adafm")

  families.register(families.Family(name=TOY, build=_build_toy, config_section=TOY,
                                    defaults=lambda: {"z_dim": 16, "nf": 4}))
  try:
    config = ps_pretrain.get_config("resnet,tiny")
    config.model, config.toy = TOY, families.default_section(TOY)
    gan = builder.build_gan(config)
    g_vars, _ = gan.init(jax.random.key(0))
    assert g_vars["params"]["fc"]["kernel"].shape[0] == 16  # z_dim from the defaults.
  finally:
    families.unregister(TOY)


def test_minegan_asks_the_family(toy_family):
  del toy_family
  config = toy_config()
  config.minegan = ml_collections.ConfigDict(dict(stage1_steps=1, num_layers=2))
  assert minegan.config_problems(config) == [
      "MineGAN supports models stylegan2, resnet, not 'toy'"]


def test_unregistered_names_are_unknown_again(tmp_path):
  config = toy_config()
  with pytest.raises(validation.ConfigError, match="model 'toy' is unknown"):
    validation.validate_train_config(config, str(tmp_path / "run"))


def test_transfer_relations():
  assert families.can_start_from("adafm", "resnet")
  assert not families.can_start_from("resnet", "adafm")
  assert not families.can_start_from(None, "resnet")
  assert families.serves_as("adafm", "resnet") and families.serves_as("sngan", "sngan")
  assert not families.serves_as("resnet", "stylegan2")
  assert not families.serves_as(None, "resnet")


def test_truncation_is_set_only_where_the_family_samples_with_it():
  config = ps_pretrain.get_config("tiny")
  families.set_truncation_psi(config, 0.5)
  assert config.stylegan2.truncation_psi == 0.5
  # Every preset carries a stylegan2 section; a ResNet GAN's is not its sampling's.
  config = ps_pretrain.get_config("resnet,tiny")
  families.set_truncation_psi(config, 0.5)
  assert config.stylegan2.truncation_psi == 1.0


# What the grep looks for, and the other ways of testing a family's name.
_FAMILY_NAME_TESTS = re.compile(
    r"""model (==|!=)|model (not )?in [(\[{]|"stylegan2" in|hasattr\(gan""")


def family_name_tests(package: pathlib.Path = PACKAGE) -> list[str]:
  """'path:line: text' of every family-name test outside the families (`models/`)."""
  hits = []
  for path in sorted(package.rglob("*.py")):
    relative = path.relative_to(package)
    if relative.parts[0] == "models":
      continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if _FAMILY_NAME_TESTS.search(line):
        hits.append(f"{relative}:{number}: {line.strip()}")
  return hits


def test_the_scan_finds_a_family_name_test(tmp_path):
  (tmp_path / "models").mkdir()
  (tmp_path / "models" / "gan.py").write_text('if config.model == "stylegan2":\n  pass\n')
  (tmp_path / "task.py").write_text('x = 1\nif "stylegan2" in run:\n  pass\n'
                                   '# for a model in the registry\n'
                                   'ok = model not in ("resnet", "adafm")\n')
  assert family_name_tests(tmp_path) == ['task.py:2: if "stylegan2" in run:',
                                         'task.py:5: ok = model not in ("resnet", "adafm")']


def test_generic_code_names_no_family():
  assert family_name_tests() == []
