"""The Colab notebooks (launch/notebooks) run top to bottom, on CPU, with tiny configs.

Each notebook is executed by nbclient in a fresh kernel of this interpreter, with a cell
of test parameters inserted after its "parameters" cell (as papermill does): tiny
presets, a few steps, a 16-image folder as the target, a temporary workdir. The kernel
sees one CPU device, the repository first on its path, and the tests' persistent XLA
cache (so after the first run JAX compiles are disk reads). The FID Inception weights
are linked into a temporary asset cache, which keeps the reference statistics of the
temporary target out of the user's cache.
"""

import importlib.util
import json
import os
import pathlib
import re
import sys
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

from gantransfer_jax.pretrained import assets
from tests.weights_markers import needs_inception

nbclient = pytest.importorskip(
    "nbclient", reason="executing the notebooks needs nbclient (pip install nbclient)")
nbformat = pytest.importorskip(
    "nbformat", reason="executing the notebooks needs nbformat (pip install nbformat)")
pytest.importorskip(
    "ipykernel", reason="executing the notebooks needs a Python kernel (pip install ipykernel)")

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_NOTEBOOKS = _ROOT / "launch" / "notebooks"
_TIMEOUT_S = 600  # Per cell; a cold XLA cache makes the first run a few minutes.



def _builder():
  spec = importlib.util.spec_from_file_location("notebooks_build", _NOTEBOOKS / "build.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _kernel_env(asset_cache):
  env = dict(os.environ)
  # One device, as a Colab runtime has, not conftest's emulated four.
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  env.update(
      JAX_PLATFORMS="cpu",
      CUDA_VISIBLE_DEVICES="",
      TF_CPP_MIN_LOG_LEVEL="2",
      JAX_COMPILATION_CACHE_DIR=os.environ.get(
          "GANTRANSFER_JAX_TEST_XLA_CACHE",
          os.path.join(tempfile.gettempdir(), "gantransfer_jax_xla_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      PYTHONPATH=os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p),
      MPLBACKEND="Agg",
  )
  if asset_cache is not None:
    env[assets.CACHE_ENV_VAR] = str(asset_cache)
  return env


@pytest.fixture
def asset_cache(tmp_path):
  """An asset cache holding (a link to) the FID Inception weights and nothing else."""
  cache = tmp_path / "asset_cache"
  cache.mkdir()
  if os.path.exists(assets.inception_weights_path()):
    (cache / assets.INCEPTION_WEIGHTS_FILE).symlink_to(assets.inception_weights_path())
  return cache


@pytest.fixture
def target_folder(tmp_path):
  """16 images of smooth random colour fields: the user's upload, as a folder."""
  folder = tmp_path / "my_images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(16):
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((40, 48), Image.BILINEAR).save(folder / f"img_{i:02d}.png")
  return folder


def execute(name, parameters, tmp_path, asset_cache=None):
  """Runs launch/notebooks/NAME.ipynb with `parameters` injected; returns (notebook, s)."""
  notebook = nbformat.read(_NOTEBOOKS / f"{name}.ipynb", as_version=4)
  index = next(i for i, cell in enumerate(notebook.cells)
               if "parameters" in cell.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell(
      "\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
  injected.metadata["tags"] = ["injected-parameters"]
  notebook.cells.insert(index + 1, injected)
  client = nbclient.NotebookClient(
      notebook, timeout=_TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": str(tmp_path)}})  # The kernel's working directory.
  start = time.perf_counter()
  client.execute(env=_kernel_env(asset_cache))
  elapsed = time.perf_counter() - start
  print(f"{name}.ipynb executed in {elapsed:.1f} s")
  return notebook, elapsed


def _outputs(notebook, mime):
  """Every output (display data and display updates included) with that MIME type."""
  return [output for cell in notebook.cells if cell.cell_type == "code"
          for output in cell.outputs if mime in output.get("data", {})]


def _text(notebook):
  """Everything the notebook printed or logged."""
  return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.outputs)


def _metrics(workdir):
  with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("name", ["ps_pretrain", "finetune", "select_checkpoint"])
def test_committed_notebook_is_what_the_builder_writes_without_outputs(name):
  builder = _builder()
  committed = (_NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8")
  assert committed == builder.render(name), (
      f"launch/notebooks/{name}.ipynb differs from launch/notebooks/build.py: edit the "
      f"builder and run `{pathlib.Path(sys.executable).name} launch/notebooks/build.py`")
  notebook = nbformat.reads(committed, as_version=4)
  assert all(not cell.get("outputs") for cell in notebook.cells)
  tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1 and "INSTALL = True" in tagged[0].source


@pytest.mark.slow
def test_ps_pretrain_notebook_trains_in_chunks_and_shows_each_grid(tmp_path):
  root = tmp_path / "workdirs"
  notebook, _ = execute("ps_pretrain", {
      "PRESET": "tiny", "DISPLAY_EVERY": 3, "WORKDIR_ROOT": str(root), "INSTALL": False,
  }, tmp_path)

  workdir = root / "ps_tiny"
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert (workdir / "samples" / "step_0000006.png").exists()
  assert max(r["step"] for r in _metrics(workdir)) == 6
  # Two chunks: the second resumed from the first's checkpoint.
  assert f"Resumed from {workdir / 'checkpoints'} at step 3" in _text(notebook)
  # The status line and the grid (updated in place after each chunk) show the end.
  assert [o.data["text/markdown"] for o in _outputs(notebook, "text/markdown")] == [
      f"`{workdir}`: step 6 of 6"]
  assert len(_outputs(notebook, "image/png")) == 1


@needs_inception
@pytest.mark.slow
def test_finetune_notebook_pretrains_then_transfers_with_fid(tmp_path, asset_cache,
                                                             target_folder):
  root = tmp_path / "workdirs"
  notebook, _ = execute("finetune", {
      "METHOD": "transfergan", "PRETRAIN_PRESET": "tiny",
      "DATA_SOURCE": f"folder:{target_folder}", "NUM_IMAGES": 0,
      "TOTAL_STEPS": 4, "EVAL_EVERY": 2, "EVAL_NUM_IMAGES": 16, "DISPLAY_EVERY": 4,
      "OVERRIDES": {"batch_size": 8, "log_every": 2, "sample_every": 2,
                    "checkpoint_every": 4},
      "WORKDIR_ROOT": str(root), "INSTALL": False,
  }, tmp_path, asset_cache)

  pretrained, workdir = root / "ps_tiny", root / "transfergan"
  assert (pretrained / "checkpoints" / "6").exists()
  with open(workdir / "config.json", encoding="utf-8") as f:
    config = json.load(f)
  assert config["init_checkpoint"] == str(pretrained)
  assert config["resolution"] == 16  # The model came from the tiny checkpoint.
  assert [r["step"] for r in _metrics(workdir) if "eval/fid" in r] == [2, 4]
  assert (workdir / "compare.png").exists() and (workdir / "compare_samples.png").exists()
  assert "transfergan (ps_tiny): final FID" in _text(notebook)


@needs_inception
@pytest.mark.slow
def test_select_notebook_pretrains_two_candidates_and_ranks_them(tmp_path, asset_cache,
                                                                 target_folder):
  root = tmp_path / "workdirs"
  notebook, _ = execute("select_checkpoint", {
      "PRETRAIN_PRESET": "tiny", "PRETRAIN_OVERRIDES": {"total_steps": 3},
      "DATA_SOURCE": f"folder:{target_folder}", "NUM_SAMPLES": 16,
      "WORKDIR_ROOT": str(root), "INSTALL": False,
  }, tmp_path, asset_cache)

  candidates = [str(root / "ps_tiny"), str(root / "pinknoise_tiny")]
  with open(root / "select" / "selection.json", encoding="utf-8") as f:
    report = json.load(f)
  assert sorted(report["ranking"]) == sorted(candidates)
  assert report["recommended"] == report["ranking"][0]
  printed = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
  assert f"INIT_CHECKPOINT = {report['recommended']!r}" in printed
