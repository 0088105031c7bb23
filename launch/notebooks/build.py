r"""Writes the Colab notebooks of this folder from the cell sources below.

  python launch/notebooks/build.py          # rewrite the .ipynb files (outputs cleared)
  python launch/notebooks/build.py --check  # exit 1 if a committed notebook differs

Edit the notebooks here, not in Jupyter: the setup, data and training cells are shared
between notebooks, and tests/test_notebooks.py checks that the committed files are what
this script writes (then executes each one with a tiny configuration).

The notebooks hold no training logic: they load the same config files as
`python -m gantransfer_jax.main --config=configs/...`, apply overrides as its
`--config.FIELD=VALUE` flags do, call the functions main dispatches to
(`train.train_and_evaluate`, `tasks.select.run`) and display what those write.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
# Placeholder: where Colab clones the repository from. Change it for your fork.
REPO_URL = "https://github.com/YOUR_ORG/gantransfer_jax.git"

_COLAB_NOTE = """\
**Colab:** *Runtime → Change runtime type* → a TPU (e.g. v5e-1) or a GPU, then *Run
all*. The setup cell clones `REPO_URL`, installs `requirements.txt` with the JAX build
for the runtime (`jax[tpu]`, `jax[cuda12]` or CPU) and the package. Elsewhere (a local
Jupyter on the `.venv` kernel from `bash launch/setup.sh`) nothing is installed. Workdirs
under `/content` vanish with the runtime: point `WORKDIR_ROOT` at a mounted Drive folder
(`/content/drive/MyDrive/...`) to keep checkpoints; training resumes from them."""

_INSTALL_PARAMETERS = f"""\
INSTALL = True  # Colab only: clone REPO_URL into REPO_DIR and pip-install (idempotent).
REPO_URL = "{REPO_URL}"  # Placeholder: your fork's URL.
REPO_DIR = "gantransfer_jax"  # Relative to the working directory (/content in Colab)."""

_SETUP = """\
import glob
import os
import shutil
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB and INSTALL:
  if not os.path.exists(os.path.join(REPO_DIR, "configs")):
    subprocess.run(["git", "clone", "--depth=1", REPO_URL, REPO_DIR], check=True,
                   env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})  # Fail, don't prompt.
  # TPU v2-v4 hosts have /dev/accel*, v5e and later /dev/vfio/<n>; GPUs answer nvidia-smi.
  on_tpu = bool(any(os.environ.get(v) for v in ("COLAB_TPU_ADDR", "TPU_NAME",
                                                "TPU_ACCELERATOR_TYPE"))
                or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
  on_gpu = (not on_tpu and shutil.which("nvidia-smi") is not None
            and subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0)
  jax_requirement = "jax[tpu]" if on_tpu else "jax[cuda12]" if on_gpu else "jax"
  print(f"Installing requirements.txt with {jax_requirement} ...")
  # As launch/setup.sh: the requirements, then the package itself (it declares none).
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                  os.path.join(REPO_DIR, "requirements.txt"), jax_requirement], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", REPO_DIR],
                 check=True)
  sys.path.insert(0, os.path.abspath(REPO_DIR))  # This kernel started before the install.

# Each training chunk below re-jits the same step: XLA's persistent cache makes that a
# disk read instead of a compile.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.expanduser("~/.cache/gantransfer_jax/xla"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
from absl import logging

from gantransfer_jax import config_files  # configs/NAME.py, loaded as --config loads them.
from gantransfer_jax import main as cli

logging.set_verbosity(logging.INFO)  # The training loop's progress lines.
cli.quiet_library_logs()  # As the CLI: no Orbax chatter.
print(f"JAX {jax.__version__}, backend {jax.default_backend()}: {jax.devices()}")



def pretrain_workdir(preset, source="synth:primitives_ps"):
  \"\"\"WORKDIR_ROOT/ps_<preset> (other sources: <source>_<preset>) for a ps_pretrain preset.\"\"\"
  name = "ps" if source == "synth:primitives_ps" else source.split(":")[-1]
  return os.path.join(WORKDIR_ROOT, f"{name}_{preset.replace(',', '_') or 'stylegan2'}")


def with_overrides(config, overrides):
  \"\"\"`config` with `--config.FIELD=VALUE` style overrides ({"FIELD": VALUE}; None skips).

  Locked as the command line locks it: a misspelt field is an error, not a new field.
  \"\"\"
  config.lock()
  config.update_from_flattened_dict({k: v for k, v in overrides.items() if v is not None})
  return config"""

_DATA = """\
# DATA_SOURCE as `--config.data.source` takes it (folder:PATH, npz:PATH, tfds:NAME[:SPLIT],
# orl_faces), or in Colab "upload" (pick image files; they are saved to UPLOAD_DIR) or
# "drive:PATH" (a folder of your Google Drive, e.g. "drive:MyDrive/faces").
from gantransfer_jax.data import sources

if DATA_SOURCE == "upload":
  from google.colab import files
  os.makedirs(UPLOAD_DIR, exist_ok=True)
  for name, content in files.upload().items():
    with open(os.path.join(UPLOAD_DIR, os.path.basename(name)), "wb") as f:
      f.write(content)
  DATA_SOURCE = f"folder:{os.path.abspath(UPLOAD_DIR)}"
elif DATA_SOURCE.startswith("drive:"):
  from google.colab import drive
  drive.mount("/content/drive")
  DATA_SOURCE = "folder:" + os.path.join("/content/drive", DATA_SOURCE[len("drive:"):])
print(f"target: {DATA_SOURCE} ({sources.describe(DATA_SOURCE)})")"""

_TRAIN_IN_CHUNKS = """\
# Trains in chunks of DISPLAY_EVERY steps (default: eval_every, else sample_every): each
# call resumes from the checkpoint the previous one saved, so the run is the same as one
# long call; after each chunk the newest sample grid replaces the one shown here.
# Interrupt the kernel to stop: a checkpoint is saved; run this cell again to resume.
from IPython.display import Image, Markdown, display

from gantransfer_jax import checkpoints
from gantransfer_jax import plot
from gantransfer_jax import train

chunk = DISPLAY_EVERY or config.eval_every or config.sample_every
try:
  done = checkpoints.resolve_checkpoint(WORKDIR)[1]
except FileNotFoundError:
  done = 0
status = display(Markdown(f"`{WORKDIR}`: step {done} of {config.total_steps}"),
                 display_id=True)
grid = display(Markdown("*(the sample grid appears after the first chunk)*"), display_id=True)
for end in [*range(chunk, config.total_steps, chunk), config.total_steps]:
  if end <= done:
    continue
  chunk_config = config.copy_and_resolve_references()
  chunk_config.total_steps = end
  state = train.train_and_evaluate(chunk_config, WORKDIR)
  run = plot.load_run(WORKDIR, require_evaluations=False)
  _, fids = run.curve("eval/fid")
  status.update(Markdown(f"`{WORKDIR}`: step {int(state.step)} of {config.total_steps}"
                         + (f", FID {fids[-1]:.2f}" if len(fids) else "")))
  grid.update(Image(filename=run.latest_samples, width=512))
  if int(state.step) < end:
    print(f"Stopped at step {int(state.step)}: run this cell again to resume.")
    break"""


def _join(parts: tuple[str, ...], separator: str) -> str:
  return separator.join(textwrap.dedent(part).strip("\n") for part in parts)


def _md(*parts: str) -> nbformat.NotebookNode:
  """A markdown cell of the (each dedented) parts, as paragraphs."""
  return nbformat.v4.new_markdown_cell(_join(parts, "\n\n"))


def _code(*parts: str, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
  """A code cell of the (each dedented) parts, one after the other."""
  cell = nbformat.v4.new_code_cell(_join(parts, "\n"))
  if tags:
    cell.metadata["tags"] = list(tags)
  return cell


def _notebook(name: str, cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
  notebook = nbformat.v4.new_notebook(cells=cells, metadata={
      "colab": {"name": f"{name}.ipynb", "provenance": []},
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
  })
  for index, cell in enumerate(notebook.cells):
    cell.id = f"{name}-{index:02d}"  # Deterministic ids: rebuilding changes nothing.
  return notebook


def ps_pretrain() -> nbformat.NotebookNode:
  return _notebook("ps_pretrain", [
      _md("""
          # Primitives-PS pretraining, with live sample grids

          Pretrains a GAN on procedurally drawn Primitives-PS images (paper 001): no
          dataset needed, nothing private in it. The same run as

              python -m gantransfer_jax.main --config=configs/ps_pretrain.py:PRESET \\
                  --workdir=WORKDIR_ROOT/ps_PRESET --config.FIELD=VALUE ...

          `PRESET` (configs/ps_pretrain.py): `""` is the paper's StyleGAN2 recipe (256 × 256,
          300 kimg: hours on a TPU or GPU), `quick` a 32 × 32 model that learns in minutes on
          a CPU, `tiny` a smoke test; `resnet` (AdaFM's source model), `sngan` (DIP's) or
          `cifar` pick another family, alone or with a size (`resnet,quick`). The finetune
          notebook transfers from the checkpoint written here.""",
          _COLAB_NOTE),
      _code("""
          PRESET = "quick"  # configs/ps_pretrain.py preset, e.g. "", "quick", "resnet,quick".
          TOTAL_STEPS = None  # None: the preset's.
          DISPLAY_EVERY = None  # Steps per chunk between sample grids; None: sample_every.
          EVAL_EVERY = 0  # > 0: FID/KID/precision/recall vs synthetic images every N steps.
          EVAL_NUM_IMAGES = 1000
          OVERRIDES = {}  # Any other field, e.g. {"stylegan2.channel_max": 256, "seed": 1}.
          WORKDIR_ROOT = "workdirs/notebooks"  # The run goes to WORKDIR_ROOT/ps_<PRESET>.""",
            _INSTALL_PARAMETERS, tags=("parameters",)),
      _md("## Setup"),
      _code(_SETUP),
      _md("## Config\n\n`configs/ps_pretrain.py:PRESET` with the overrides above."),
      _code("""
          from gantransfer_jax import assets

          config = with_overrides(config_files.load_module("ps_pretrain").get_config(PRESET), {
              "total_steps": TOTAL_STEPS, "eval_every": EVAL_EVERY,
              "eval_num_images": EVAL_NUM_IMAGES, **OVERRIDES})
          WORKDIR = pretrain_workdir(PRESET)
          if config.eval_every:
            assets.main(["inception"])  # The FID Inception weights (cached after the first time).
          print(config)"""),
      _md("## Train\n\nEach grid shows the same latents (fixed for the whole run), later "
          "in training."),
      _code(_TRAIN_IN_CHUNKS),
      _md("## Metrics\n\nThe last logged losses, and the FID curve when `EVAL_EVERY > 0`."),
      _code("""
          from gantransfer_jax import writers

          print(writers.read_metrics(WORKDIR)[-1])
          if config.eval_every:
            comparison = plot.plot_compare([WORKDIR], os.path.join(WORKDIR, "fid.png"),
                                           with_samples=False)
            display(Image(filename=comparison.figure))
          print(f"Finetune from this run with INIT_CHECKPOINT = {WORKDIR!r}")"""),
  ])


def finetune() -> nbformat.NotebookNode:
  return _notebook("finetune", [
      _md("""
          # Finetune a pretrained GAN on your own images

          Trains one method of configs/finetune.py on a small image set, with
          FID/KID/precision/recall every `EVAL_EVERY` steps. The same run as

              python -m gantransfer_jax.main --config=configs/finetune.py:METHOD[,quick] \\
                  --workdir=WORKDIR_ROOT/METHOD --config.init_checkpoint=INIT_CHECKPOINT \\
                  --config.data.source=DATA_SOURCE --config.eval_every=EVAL_EVERY ...

          Methods: `scratch` (no transfer), `transfergan`, `freezed` (StyleGAN2, from a
          Primitives-PS checkpoint); `adafm`, `fs`, `smallhead`, `gphead` (from a ResNet GAN
          checkpoint, `ps_pretrain.py:resnet`); `dip`, `dip_diffaug` (from scratch, with
          MobileNetV2 priors); `dip_freezed` (from an SNGAN checkpoint); `cifar`.

          With `INIT_CHECKPOINT = ""`, a method that starts from a checkpoint first
          pretrains one of its model family here, into the workdir the pretraining
          notebook would use (`quick`: minutes; the paper's recipe takes hours, so then
          pass a checkpoint: the pretraining notebook's workdir, or a model converted by
          `launch/convert_*.py`). Run the notebook again with another `METHOD` and list
          the earlier workdirs in `COMPARE` to plot the methods together.""",
          _COLAB_NOTE),
      _code("""
          METHOD = "transfergan"  # One of configs/finetune.py's METHODS (DIP's: + ",stylegan2").
          QUICK = True  # The ',quick' presets (32 x 32, CPU-sized); False: the paper's recipe.
          INIT_CHECKPOINT = ""  # A pretrained workdir or checkpoint; "": pretrain one here.
          PRETRAIN_PRESET = None  # Its configs/ps_pretrain.py preset; None: the method's.
          PRETRAIN_OVERRIDES = {}
          DATA_SOURCE = "orl_faces"  # "upload", "drive:MyDrive/faces", "folder:/path", ...
          UPLOAD_DIR = "uploaded_images"
          NUM_IMAGES = 100  # n-shot subset of the target; 0: every image (e.g. your own).
          TOTAL_STEPS = None  # None: the preset's.
          EVAL_EVERY = None  # None: a fifth of the steps; 0: no FID (and no FID curve).
          EVAL_NUM_IMAGES = 500  # Generated images per evaluation (papers: 5000+; slow on CPU).
          DISPLAY_EVERY = None  # Steps per chunk between sample grids; None: eval_every.
          OVERRIDES = {}  # Any other field, e.g. {"freeze_d": 3, "seed": 1}.
          COMPARE = []  # Other finetune workdirs to plot with this one.
          WORKDIR_ROOT = "workdirs/notebooks"  # The run goes to WORKDIR_ROOT/<METHOD>.""",
            _INSTALL_PARAMETERS, tags=("parameters",)),
      _md("## Setup"),
      _code(_SETUP),
      _md("## Target images"),
      _code(_DATA),
      _md("## Config\n\n`configs/finetune.py:METHOD[,quick]` with the overrides above."),
      _code("""
          from IPython.display import Image, display

          from gantransfer_jax import assets
          from gantransfer_jax import images

          finetune_configs = config_files.load_module("finetune")
          PRESET = f"{METHOD},quick" if QUICK else METHOD
          config = with_overrides(
              finetune_configs.get_config(PRESET),
              {"data.source": DATA_SOURCE, "data.num_images": NUM_IMAGES,
               "total_steps": TOTAL_STEPS, "eval_num_images": EVAL_NUM_IMAGES})
          config.eval_every = config.total_steps // 5 if EVAL_EVERY is None else EVAL_EVERY
          config = with_overrides(config, OVERRIDES)
          WORKDIR = os.path.join(WORKDIR_ROOT, METHOD.replace(",", "_"))
          if config.eval_every:
            assets.main(["inception"])  # The FID Inception weights (cached after the first time).
          if config.get("dip"):
            assets.main([config.dip.prior])  # DIP's prior network.
          print(config)
          target = sources.load_dataset(config.data, 64)
          print(f"{len(target)} target images; the first ones:")
          display(Image(filename=images.save_grid(
              os.path.join(WORKDIR_ROOT, "target.png"), target[:32], num_cols=8)))"""),
      _md("## The pretrained model\n\nWhat `INIT_CHECKPOINT` names, or (when empty) a "
          "model of the method's family pretrained on Primitives-PS here first."),
      _code("""
          from gantransfer_jax import train

          if config.init == "checkpoint":
            if not INIT_CHECKPOINT:
              if PRETRAIN_PRESET is None:  # The model configs/finetune.py builds on.
                PRETRAIN_PRESET = finetune_configs.pretrain_preset(PRESET)
              INIT_CHECKPOINT = pretrain_workdir(PRETRAIN_PRESET)
              train.train_and_evaluate(
                  with_overrides(config_files.load_module("ps_pretrain").get_config(PRETRAIN_PRESET),
                                 PRETRAIN_OVERRIDES),
                  INIT_CHECKPOINT)
            config.init_checkpoint = INIT_CHECKPOINT
          print(f"{METHOD} from {config.init_checkpoint or 'random weights'}")"""),
      _md("## Finetune\n\nThe sample grid (latents fixed for the whole run) and the "
          "latest FID update after each chunk."),
      _code(_TRAIN_IN_CHUNKS),
      _md("## FID curves and samples\n\n`gantransfer_jax.plot.plot_compare`: FID and "
          "recall against images shown (a star where FID first came within 5% of its "
          "best), then each run's latest samples."),
      _code("""
          if config.eval_every:
            comparison = plot.plot_compare([WORKDIR, *COMPARE],
                                           os.path.join(WORKDIR, "compare.png"))
            display(Image(filename=comparison.figure))
            display(Image(filename=comparison.samples))
            for run in comparison.runs:
              kimg, fid = run.curve("eval/fid")
              print(f"{run.label}: final FID {fid[-1]:.2f}, best {fid.min():.2f}, within 5% "
                    f"of its best at {run.convergence_kimg:g} kimg")
          else:
            display(Image(filename=plot.load_run(WORKDIR, require_evaluations=False)
                          .latest_samples))"""),
  ])


def select_checkpoint() -> nbformat.NotebookNode:
  return _notebook("select_checkpoint", [
      _md("""
          # Which pretrained checkpoint to finetune from

          Scores candidate checkpoints against your target images (paper 004): each
          candidate's samples against the target by FID, KID, precision and recall. The
          highest recall wins (ties: the lowest FID). The same run as

              python -m gantransfer_jax.main --config=configs/select.py \\
                  --workdir=WORKDIR_ROOT/select --config.candidates=A,B \\
                  --config.data.source=DATA_SOURCE --config.num_samples=NUM_SAMPLES

          With `CANDIDATES = ""` the notebook first pretrains one candidate per synthetic
          source in `PRETRAIN_SOURCES`: which synthetic data suits your images best?
          Otherwise list your workdirs or checkpoints (e.g. StyleGAN2-ADA models converted
          by `launch/convert_stylegan2_ada.py`).""",
          _COLAB_NOTE),
      _code("""
          CANDIDATES = ""  # Comma-separated workdirs or checkpoints; "": pretrain them here.
          PRETRAIN_PRESET = "quick"  # configs/ps_pretrain.py preset of those candidates.
          PRETRAIN_SOURCES = ("synth:primitives_ps", "synth:pinknoise")
          PRETRAIN_OVERRIDES = {}
          DATA_SOURCE = "orl_faces"  # "upload", "drive:MyDrive/faces", "folder:/path", ...
          UPLOAD_DIR = "uploaded_images"
          NUM_SAMPLES = 1000  # Generated images per candidate (paper 004: 5000).
          SELECT_OVERRIDES = {}  # Any other configs/select.py field, e.g. {"k": 3}.
          WORKDIR_ROOT = "workdirs/notebooks"  # The selection goes to WORKDIR_ROOT/select.""",
            _INSTALL_PARAMETERS, tags=("parameters",)),
      _md("## Setup"),
      _code(_SETUP),
      _md("## Target images"),
      _code(_DATA),
      _md("## Candidates\n\nEach candidate's latest training samples."),
      _code("""
          from IPython.display import Image, display

          from gantransfer_jax import plot
          from gantransfer_jax import train

          if not CANDIDATES:
            workdirs = []
            for source in PRETRAIN_SOURCES:
              workdirs.append(pretrain_workdir(PRETRAIN_PRESET, source))
              train.train_and_evaluate(
                  with_overrides(config_files.load_module("ps_pretrain").get_config(PRETRAIN_PRESET),
                                 {"data.source": source, **PRETRAIN_OVERRIDES}),
                  workdirs[-1])
            CANDIDATES = ",".join(workdirs)
          runs = [plot.load_run(path, require_evaluations=False) for path in CANDIDATES.split(",")]
          figure = plot.samples_figure(runs)
          if figure is not None:
            figure.savefig(os.path.join(WORKDIR_ROOT, "candidates.png"), dpi=100)
            display(Image(filename=os.path.join(WORKDIR_ROOT, "candidates.png")))"""),
      _md("## Selection"),
      _code("""
          from gantransfer_jax import assets
          from gantransfer_jax.tasks import select

          assets.main(["inception"])  # The FID Inception weights (cached after the first time).
          select_config = with_overrides(config_files.load_module("select").get_config(), {
              "candidates": CANDIDATES, "data.source": DATA_SOURCE, "num_samples": NUM_SAMPLES,
              **SELECT_OVERRIDES})
          report = select.run(select_config, os.path.join(WORKDIR_ROOT, "select"))"""),
      _md("## Result\n\nBest first. Finetune from the recommended checkpoint with the "
          "finetune notebook."),
      _code("""
          print(select.format_table(report))
          print(f"\\nRule: {report['rule']}.")
          print(f"INIT_CHECKPOINT = {report['recommended']!r}")"""),
  ])


NOTEBOOKS = {
    "ps_pretrain": ps_pretrain,
    "finetune": finetune,
    "select_checkpoint": select_checkpoint,
}


def path(name: str) -> str:
  return os.path.join(HERE, f"{name}.ipynb")


def render(name: str) -> str:
  """The notebook's file content."""
  notebook = NOTEBOOKS[name]()
  nbformat.validate(notebook)
  return nbformat.writes(notebook) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="compare with the committed notebooks instead of writing them")
  args = parser.parse_args(argv)
  stale = []
  for name in NOTEBOOKS:
    text = render(name)
    if args.check:
      with open(path(name), encoding="utf-8") as f:
        if f.read() != text:
          stale.append(path(name))
    else:
      with open(path(name), "w", encoding="utf-8") as f:
        f.write(text)
      print(f"wrote {path(name)}")
  if stale:
    print("out of date (run python launch/notebooks/build.py): " + ", ".join(stale))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
