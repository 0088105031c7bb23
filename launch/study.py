r"""The transfer study (issue #16 item 2) at CPU scale, in one command.

  .venv/bin/python launch/study.py                       # defaults: see below
  .venv/bin/python launch/study.py --name=orl100_cpu --pretrain_steps=4000   # 64 kimg

1. Pretrains `--pretrain_config` (default `ps_pretrain.py:quick`, the baseline
   architecture) on Primitives-PS for `--pretrain_steps` (default 16000 = 256 kimg: the
   length at which its samples show the salient object with sharp edges; at 64 kimg
   they are soft blobs) in ROOT/ps_pretrain.
2. Finetunes on a seeded `--shots`-image subset of `--dataset` (default 100 ORL faces;
   the subset is fixed by `--subset_seed`, so every method and seed sees the same images,
   the seeds vary only the training randomness) with each of `--methods` (the
   finetune.py `,quick` presets; '+' writes the preset's ',': `dip_freezed+stylegan2` is
   DIP's StyleGAN2 variant with FreezeD) over `--seeds`, by `launch/sweep.py` under
   ROOT/runs. The methods that transfer start from the step-1 checkpoint (the sweep gives
   the random-initialisation baselines none). Every method trains `--finetune_kimg`
   thousand images: methods with another batch size (DIP + FreezeD's 8) get
   proportionally more steps, and all are evaluated at the same `--evals` kimg points,
   each time `--eval_num_images` generated images against the whole target set with the
   FID Inception (FID, KID, precision, recall; convergence kimg from those points).
3. Writes OUT (default docs/results/NAME): results.csv and results.md (sweep's tables:
   per run, and mean ± std over seeds), summary.csv (mean and std per method),
   fid_vs_kimg.png (`plot compare` over all runs), samples_<method>.png (the final grid of
   each method's first seed), pretrain_samples.png (the pretraining's final grid, to see
   the shapes) and study.md (the command, the machine, wall times, measured img/s;
   each run's wall time over all its invocations, from its log, so reruns keep it).

Rerunning the same command skips the finished pretraining and finetunes (sweep's check:
the latest checkpoint reached total_steps) and rewrites OUT from the workdirs. ROOT
records the protocol its runs were made with (ROOT/study_protocol.json: pretraining,
data, lengths, evaluation, overrides); a rerun that changes it is refused, since it would
keep finetunes made from another checkpoint. More seeds or methods are the same study.

Pass-through: every `--config.*` argument goes to each finetune, every `--pretrain.X=V`
to the pretraining as `--config.X=V` (e.g. tiny models for tests). `--command_prefix`
replaces `python -m gantransfer_jax.main` for pretraining and finetunes alike.

Time (defaults, 2 cores at load ~1.7): about 1 h 39 min, measured in parts (README,
"Worked example (CPU)": pretraining 22 min 55 s, finetunes 76 min); study.md of any run
records its own.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gantransfer_jax import config_files
from gantransfer_jax import plot
from gantransfer_jax import writers

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)


def _load_sweep():
  # launch/ is not a package: load the sibling by path, as its tests do.
  spec = importlib.util.spec_from_file_location("sweep", os.path.join(_HERE, "sweep.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules.setdefault("sweep", module)  # Its dataclasses look their module up there.
  spec.loader.exec_module(module)
  return sys.modules["sweep"]


sweep = _load_sweep()

DEFAULT_NAME = "orl100_cpu_pt256full"
DEFAULT_METHODS = ("scratch", "transfergan", "freezed", "dip_freezed+stylegan2")
PRETRAIN_DIR = "ps_pretrain"
RUNS_DIR = "runs"
SUMMARY_CSV = "summary.csv"
STUDY_MD = "study.md"
PROTOCOL_JSON = "study_protocol.json"
FIGURE = "fid_vs_kimg.png"


@dataclasses.dataclass(frozen=True)
class Schedule:
  """One method's run length and evaluation interval, in steps of its own batch."""

  batch_size: int
  total_steps: int
  eval_every: int


def schedule(kimg: float, evals: int, batch_size: int) -> Schedule:
  """Steps for `kimg` thousand images, evaluated at `evals` equally spaced kimg points.

  Equal kimg, not equal steps, is the papers' axis; a point that is not a whole number
  of steps at this batch size would put the methods' evaluations at different kimg.
  """
  if evals < 1:
    raise ValueError(f"--evals must be >= 1, got {evals}")
  every = kimg * 1000 / evals / batch_size
  if every < 1 or abs(every - round(every)) > 1e-9:
    raise ValueError(f"--finetune_kimg={kimg:g} / --evals={evals} is {kimg / evals:g} kimg "
                     f"per evaluation, not a whole number of steps at batch {batch_size}: "
                     "choose kimg and evals so that it is")
  every = int(round(every))
  return Schedule(batch_size, every * evals, every)


def preset(method: str) -> str:
  """'dip_freezed+stylegan2' -> 'dip_freezed,stylegan2' (a comma separates --methods)."""
  return method.replace("+", ",")


def batch_size(method: str, extra: Sequence[str], config_file: str) -> int:
  """The batch the run will train with: a --config.batch_size override, else its preset's."""
  for arg in reversed(extra):
    if arg.startswith("--config.batch_size="):
      return int(arg.split("=", 1)[1])
  return int(config_files.get_config(f"{config_file}:{preset(method)},quick").batch_size)


def finetune_overrides(extra: Sequence[str], sched: Schedule, *, init_checkpoint: str,
                       eval_num_images: int, subset_seed: int) -> list[str]:
  """The sweep's pass-through arguments of one method (the study's own fields win)."""
  own = {"total_steps": sched.total_steps, "eval_every": sched.eval_every,
         "eval_num_images": eval_num_images, "init_checkpoint": init_checkpoint,
         "data.subset_seed": subset_seed}
  kept = [a for a in extra if a.split("=", 1)[0][len("--config."):] not in own]
  return kept + [f"--config.{k}={v}" for k, v in own.items()]


def _log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def pretrain(workdir: str, config: str, steps: int, extra: Sequence[str],
             prefix: Sequence[str]) -> bool:
  """Runs (or resumes) the pretraining unless finished; False if it failed."""
  if sweep.is_finished(workdir, steps):
    _log(f"pretraining {workdir}: finished already, skipped")
    return True
  command = [*prefix, f"--config={config}", f"--workdir={workdir}",
             f"--config.total_steps={steps}", *extra]
  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, sweep.LOG_FILE)
  with open(log_path, "a", encoding="utf-8") as log_file:
    sweep.write_start_line(log_file, command)
    _log(f"pretraining {workdir}: started, log {log_path}")
    start = time.time()
    returncode = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT)
    sweep.write_exit_line(log_file, returncode, time.time() - start)
  if returncode:
    _log(f"pretraining FAILED with return code {returncode}; last lines of {log_path}:\n"
         f"{sweep._tail(log_path)}")  # pylint: disable=protected-access
  return returncode == 0


def protocol(args: argparse.Namespace, extra: Sequence[str],
             pretrain_extra: Sequence[str]) -> dict[str, Any]:
  """What the runs under a study's root were made with: the fields that, changed, make
  its finished runs another study's (methods and seeds may be added to it)."""
  return {"pretrain_config": args.pretrain_config, "pretrain_steps": args.pretrain_steps,
          "pretrain_overrides": list(pretrain_extra), "dataset": args.dataset,
          "shots": args.shots, "subset_seed": args.subset_seed,
          "finetune_kimg": args.finetune_kimg, "evals": args.evals,
          "eval_num_images": args.eval_num_images, "config_file": args.config_file,
          "finetune_overrides": list(extra)}


def check_protocol(root: str, wanted: dict[str, Any]) -> None:
  """Records `wanted` in ROOT, or checks it against the one recorded there.

  A rerun skips finished runs, so without this a rerun with e.g. a longer pretraining
  would resume the pretraining and keep the finetunes made from the old checkpoint.

  Raises:
    ValueError: ROOT holds a study of another protocol (the fields that differ named).
  """
  path = os.path.join(root, PROTOCOL_JSON)
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        recorded = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path} is unreadable ({e}): restore or remove it") from None
    changed = [f"{key}: {recorded.get(key)!r} there, {value!r} now"
               for key, value in wanted.items() if recorded.get(key) != value]
    if changed:
      raise ValueError(f"{root} holds the runs of a study made otherwise ({'; '.join(changed)}):"
                       " pass another --name or --root for a new study")
    return
  os.makedirs(root, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(wanted, f, indent=2)


def mean_rate(workdir: str, key: str) -> float | None:
  """Mean of a metrics.jsonl scalar (img/s, evaluation seconds) over a run's records."""
  values = [r[key] for r in writers.read_metrics(workdir) if r.get(key) is not None]
  return float(np.mean(values)) if values else None


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """sweep.group_over_seeds as flat csv rows: METRIC_mean and METRIC_std columns."""
  flat = []
  for group in sweep.group_over_seeds(rows):
    row = {k: group[k] for k in (*sweep.GROUP_KEYS, "seeds")}
    for metric in sweep.metric_columns():
      mean, std = group[metric] if group[metric] is not None else (None, None)
      row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
    flat.append(row)
  return flat


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
  columns = list(rows[0]) if rows else list(sweep.GROUP_KEYS)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def _machine() -> str:
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  return (f"{platform.machine()}, {os.cpu_count()} CPU cores visible, load average "
          f"(1/5/15 min) {load} at the end")


def write_outputs(out: str, root: str, runs_by_method: dict[str, list], pretrain_dir: str,
                  schedules: dict[str, Schedule], timings: dict[str, float],
                  argv: Sequence[str]) -> list[str]:
  """The study's files in `out` (module doc, step 3); returns their paths."""
  os.makedirs(out, exist_ok=True)
  runs_root = os.path.join(root, RUNS_DIR)
  rows = []
  for method, runs in runs_by_method.items():
    for run in runs:
      row = sweep.summarize(run.workdir(runs_root), dataclasses.asdict(run))
      row["method"] = preset(method)  # config.method drops the ',stylegan2' of DIP's variant.
      rows.append(row)
  written = list(sweep.write_results(out, rows))
  summary = summary_rows(rows)
  write_csv(os.path.join(out, SUMMARY_CSV), summary)
  written.append(os.path.join(out, SUMMARY_CSV))

  evaluated = [run.workdir(runs_root) for runs in runs_by_method.values() for run in runs
               if plot.load_run(run.workdir(runs_root), require_evaluations=False).evaluated]
  if evaluated:
    figure = plot.plot_compare(evaluated, os.path.join(out, FIGURE), with_samples=False)
    written.append(figure.figure)
  grids = {"pretrain": plot.load_run(pretrain_dir, require_evaluations=False).latest_samples}
  for method, runs in runs_by_method.items():
    grids[method] = plot.load_run(runs[0].workdir(runs_root),
                                  require_evaluations=False).latest_samples
  for method, source in grids.items():
    if source:
      name = ("pretrain_samples.png" if method == "pretrain"
              else f"samples_{method.replace('+', '-')}.png")
      written.append(shutil.copyfile(source, os.path.join(out, name)))

  throughput = ["| run | batch | steps | eval every (steps) | img/s (training) | "
                "s per evaluation | wall (all its invocations) |",
                "|---|---|---|---|---|---|---|"]
  for label, workdir, sched in [("pretraining", pretrain_dir, None)] + [
      (run.name, run.workdir(runs_root), schedules[m])
      for m, runs in runs_by_method.items() for run in runs]:
    rate, seconds = (mean_rate(workdir, "perf/img_per_sec"),
                     mean_rate(workdir, "perf/eval_seconds"))
    wall = sweep.logged_seconds(workdir)
    throughput.append(
        f"| {label} | {sched.batch_size if sched else ''} | "
        f"{sched.total_steps if sched else ''} | {sched.eval_every if sched else ''} | "
        f"{'' if rate is None else f'{rate:.1f}'} | "
        f"{'' if seconds is None else f'{seconds:.0f}'} | "
        f"{'' if wall is None else sweep._duration(wall)} |")  # pylint: disable=protected-access
  lines = [
      "# Transfer study: " + os.path.basename(os.path.normpath(out)),
      "Written by `launch/study.py`; numbers only, no interpretation.",
      f"Command: `{shlex.join(['.venv/bin/python', 'launch/study.py', *argv])}`",
      f"Machine: {_machine()}.",
      "Wall time of the last invocation (finished work is skipped on a rerun; the table "
      "below has each run's own, over all its invocations): " + ", ".join(
          f"{k} {sweep._duration(v)}" for k, v in timings.items()) + ".",  # pylint: disable=protected-access
      "## Mean ± std over seeds", sweep.markdown_table(
          sweep.group_over_seeds(rows), (*sweep.GROUP_KEYS, "seeds", *sweep.metric_columns())),
      f"Per-run table: [results.md](results.md); figure: [{FIGURE}]({FIGURE}).",
      "## Throughput (means over each run's log and evaluation records)",
      "\n".join(throughput),
  ]
  path = os.path.join(out, STUDY_MD)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n\n".join(lines) + "\n")
  with open(os.path.join(out, "study.json"), "w", encoding="utf-8") as f:
    json.dump({"argv": list(argv), "timings_seconds": timings,
               "schedules": {m: dataclasses.asdict(s) for m, s in schedules.items()}},
              f, indent=2)
  return written + [path, os.path.join(out, "study.json")]


def _list(text: str) -> list[str]:
  return [v for v in text.split(",") if v]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
  parser = argparse.ArgumentParser(prog="python launch/study.py",
                                   description=__doc__.split("\n\n")[0], allow_abbrev=False)
  parser.add_argument("--name", default=DEFAULT_NAME, help="The study's name.")
  parser.add_argument("--root", default=None, help="Workdirs (default workdirs/study/NAME).")
  parser.add_argument("--out", default=None, help="Results (default docs/results/NAME).")
  parser.add_argument("--pretrain_config", default="configs/ps_pretrain.py:quick")
  parser.add_argument("--pretrain_steps", type=int, default=16000)
  parser.add_argument("--methods", type=_list, default=list(DEFAULT_METHODS),
                      help="finetune.py presets (without ',quick'); '+' for their ','.")
  parser.add_argument("--dataset", default="orl_faces", help="config.data.source.")
  parser.add_argument("--shots", type=int, default=100)
  parser.add_argument("--subset_seed", type=int, default=0)
  parser.add_argument("--seeds", type=lambda t: [int(s) for s in _list(t)], default=[0, 1, 2])
  parser.add_argument("--finetune_kimg", type=float, default=48.0)
  parser.add_argument("--evals", type=int, default=4, help="Evaluations per finetune.")
  parser.add_argument("--eval_num_images", type=int, default=100,
                      help="Generated images per evaluation (the reference: all targets).")
  parser.add_argument("--config_file", default=sweep.CONFIG_FILE)
  parser.add_argument("--python", default=sys.executable)
  parser.add_argument("--command_prefix", default=None,
                      help=f"Replaces `PYTHON -m {sweep.TRAINER_MODULE}` (shell-quoted).")
  args, rest = parser.parse_known_args(argv)
  extra = [a for a in rest if a.startswith("--config.")]
  pretrain_extra = ["--config." + a[len("--pretrain."):] for a in rest
                    if a.startswith("--pretrain.")]
  unknown = [a for a in rest if not a.startswith(("--config.", "--pretrain."))]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  return args, extra, pretrain_extra


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args, extra, pretrain_extra = parse_args(argv)
  root = args.root or os.path.join("workdirs", "study", args.name)
  out = args.out or os.path.join(_REPO, "docs", "results", args.name)
  prefix = (shlex.split(args.command_prefix) if args.command_prefix
            else [args.python, "-m", sweep.TRAINER_MODULE])
  # Checked before hours of pretraining: a bad kimg/evals pair fails now.
  schedules = {m: schedule(args.finetune_kimg, args.evals,
                           batch_size(m, extra, args.config_file)) for m in args.methods}
  runs_by_method = {m: sweep.make_grid([preset(m)], [args.dataset], [args.shots], args.seeds)
                    for m in args.methods}
  try:
    check_protocol(root, protocol(args, extra, pretrain_extra))
  except ValueError as e:
    _log(f"error: {e}")
    return 2
  pretrain_dir = os.path.join(root, PRETRAIN_DIR)
  timings = {}
  # The seeds of a method compile the same train and evaluation steps (scratch and
  # TransferGAN too): XLA's persistent cache turns all but the first into disk reads.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.abspath(
      os.path.join(root, "xla_cache")))

  start = time.time()
  if not pretrain(pretrain_dir, args.pretrain_config, args.pretrain_steps, pretrain_extra,
                  prefix):
    return 1
  timings["pretraining"] = time.time() - start
  failed = {}
  for method in args.methods:
    sched = schedules[method]
    _log(f"{method}: {sched.total_steps} steps at batch {sched.batch_size} "
         f"({args.finetune_kimg:g} kimg), evaluated every {sched.eval_every} steps")
    start = time.time()
    report = sweep.run_sweep(
        runs_by_method[method], os.path.join(root, RUNS_DIR),
        finetune_overrides(extra, sched, init_checkpoint=pretrain_dir,
                           eval_num_images=args.eval_num_images,
                           subset_seed=args.subset_seed),
        quick=True, config_file=args.config_file, command_prefix=prefix)
    timings[method] = time.time() - start
    failed.update(report.failed)
  for path in write_outputs(out, root, runs_by_method, pretrain_dir, schedules, timings,
                            argv):
    _log(f"wrote {path}")
  if failed:
    _log(f"failed: {', '.join(f'{n} (rc {c})' for n, c in failed.items())}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
