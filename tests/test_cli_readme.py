"""A newcomer's first hour: the README's finetune, evaluate and sample commands, exactly
as written, on a folder of 50 photos of their own (JPEGs made from ORL faces), at
tiny size; and what the console shows meanwhile (one line per log step, compilation
announced, no library start-up noise or Orbax chatter)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import pytest
from PIL import Image

from gantransfer_jax import config_files
from gantransfer_jax import train
from gantransfer_jax.data import folder
from gantransfer_jax.data import sources

from weights_markers import needs_inception

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Appended to the README's commands (later flags win): sizes for a test.
TINY = {
    "finetune": ["--config.total_steps=2", "--config.log_every=1", "--config.sample_every=2",
                 "--config.checkpoint_every=2", "--config.batch_size=8"],
    "evaluate": ["--config.num_samples=8", "--config.k=3"],
    "sample": ["--num=4"],
}


def readme_commands() -> list[str]:
  """The README's shell commands, one string each (continuation lines joined)."""
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
  return [line.strip() for block in blocks
          for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]


def newcomer_commands() -> dict[str, str]:
  """The finetune-evaluate-sample sequence on `folder:/my/images`."""
  commands = readme_commands()
  finetune = next(i for i, c in enumerate(commands)
                  if "configs/finetune.py:transfergan" in c and "folder:/my/images" in c)
  found = dict(zip(("finetune", "evaluate", "sample"), commands[finetune:finetune + 3]))
  assert "configs/evaluate.py" in found["evaluate"] and "folder:/my/images" in found["evaluate"]
  assert "gantransfer_jax.sample" in found["sample"]
  return found


def _photos(directory) -> str:
  os.makedirs(directory)
  faces = sorted(folder.list_image_files(sources.orl_faces_dir()))[:50]
  for i, path in enumerate(faces):
    Image.open(path).convert("RGB").save(os.path.join(directory, f"photo_{i:02d}.jpg"))
  return str(directory)


def _run(command: str, photos: str, root: str, extra: list[str]) -> str:
  argv = (command.replace(".venv/bin/python", sys.executable)
          .replace("/my/images", photos).replace("workdirs/", f"{root}/workdirs/").split())
  # The test's devices (the pretrained checkpoint's too) and its compilation cache.
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
  result = subprocess.run(argv + extra, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-3000:]
  for noise in ("oneDNN", "Unable to initialize backend", "orbax", "Traceback"):
    assert noise not in output, (noise, output[-3000:])
  return output


@needs_inception
@pytest.mark.slow
def test_the_readme_commands_run_on_a_folder_of_50_photos(tmp_path):
  commands = newcomer_commands()
  photos = _photos(tmp_path / "my_photos")
  root = str(tmp_path)
  # Stands in for command 1's workdirs/ps_quick (the README's pretraining, at tiny size).
  pretrain = config_files.get_config("ps_pretrain:tiny")
  pretrain.update(total_steps=1, log_every=1, sample_every=1, checkpoint_every=1)
  train.train_and_evaluate(pretrain, f"{root}/workdirs/ps_quick")

  out = _run(commands["finetune"], photos, root, TINY["finetune"])
  workdir = f"{root}/workdirs/ft_transfergan"
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["data"]["num_images"] == 0 and saved["init"] == "checkpoint"
  assert "compiling the train step" in out
  for step in (1, 2):  # Once each: the loop's line, not the metric writer's too.
    assert len(re.findall(rf"step {step}/2 \| .* img/s \| .* ETA", out)) == 1, out
  assert "loss/d=" not in out

  out = _run(commands["evaluate"], photos, root, TINY["evaluate"])
  with open(f"{root}/workdirs/eval_transfergan/report.json", encoding="utf-8") as f:
    report = json.load(f)
  assert report["num_reference"] == 50 and report["num_generated"] == 8
  assert "features of the reference set" in out and "generating and scoring images" in out

  _run(commands["sample"], photos, root, TINY["sample"])
  assert os.listdir(f"{workdir}/grids")
