r"""Runs a grid of finetunes (methods x datasets x shots x seeds) and tabulates the results.

  python launch/sweep.py --root=workdirs/sweep --methods=scratch,transfergan,freezed \
      --datasets=orl_faces,folder:/data/cats --shots=10,100 --seeds=0,1,2 --quick \
      --config.init_checkpoint=workdirs/ps_quick --config.eval_every=250

Each run is one process,
  python -m gantransfer_jax.main --config=configs/finetune.py:METHOD[,quick]
      --workdir=ROOT/<method>_<dataset-slug>_n<shots>_s<seed>
      --config.data.source=DATASET --config.data.num_images=SHOTS --config.seed=SEED
      [every other --config.* argument of this command, passed through]
with its output appended to WORKDIR/sweep.log. Runs of methods that start from random
weights (their preset's `config.init` is "scratch": scratch, dip, dip_diffaug) never get
--config.init_checkpoint: a grid shares one set of overrides, and those baselines are
defined by their random initialisation. Any finetune preset is a method, the
transfer baselines included (transfergan, freezed, transfergan_ada, minegan). Add --config.eval_every: without evaluations the
tables stay empty.

Every finetune preset runs here, `bsa` too (BSA's task logs the same evaluations, so its
runs fill the same tables; it starts from an SNGAN `--config.init_checkpoint`).

Resuming: run the same command again. A run is finished when its latest checkpoint
step reaches total_steps (--config.total_steps if passed here, else its config.json's);
finished runs are skipped and unfinished ones rerun, which resumes them from their
latest checkpoint. A failed run is logged (return code, tail of its sweep.log) and the
grid goes on; the exit status is 1 if any run failed.

Parallelism: --parallel=K keeps K runs going, run slot i seeing only device
--devices[i] (default i) through the --device_env variable (default
CUDA_VISIBLE_DEVICES; e.g. TPU_VISIBLE_CHIPS on TPU VMs, or leave the variable alone
with --device_env=''). With --parallel=1 no variable is set: the run uses every device.

At the end ROOT/results.csv (one row per run: final and best FID, convergence kimg,
final KID, precision, recall) and ROOT/results.md (that table, and mean ± sample std
over seeds per method, init, dataset and shots) are written for the whole grid.
`launch/collect_results.py WORKDIR...` prints the per-run table for any workdirs.

For tests and other launchers: --command_prefix replaces `python -m
gantransfer_jax.main` (e.g. `srun python -m gantransfer_jax.main`, or a fake trainer
taking the same arguments); --python only swaps the interpreter; --dry_run prints the
commands.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import functools
import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gantransfer_jax import checkpoints
from gantransfer_jax import config_files
from gantransfer_jax import plot
from gantransfer_jax.metrics import registry

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(_REPO, "configs", "finetune.py")
TRAINER_MODULE = "gantransfer_jax.main"
LOG_FILE = "sweep.log"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
_TAIL_LINES = 20

RUN_KEYS = ("run", "status", "method", "init", "dataset", "shots", "seed", "kimg")
GROUP_KEYS = ("method", "init", "dataset", "shots")
# Of the primary score (FID) over the whole run, beside its final value.
PRIMARY_COLUMNS = (f"best_{registry.PRIMARY}", "convergence_kimg")


def metric_columns() -> tuple[str, ...]:
  """The registered headline scores (the last evaluation's), FID's best value and
  convergence point right after FID."""
  columns = []
  for score in registry.headline_scores():
    columns.append(score.name)
    if score.name == registry.PRIMARY:
      columns.extend(PRIMARY_COLUMNS)
  return tuple(columns)


def run_columns() -> tuple[str, ...]:
  return RUN_KEYS + metric_columns()


def dataset_slug(source: str) -> str:
  """A short file-name-safe name of a `config.data.source`, for the run's folder name.

  folder:/data/afhq/cat -> cat, npz:/x/faces.npz -> faces, tfds:name:train -> name-train,
  orl_faces -> orl_faces.
  """
  kind, _, rest = source.partition(":")
  if kind in ("folder", "npz") and rest:
    name = os.path.basename(os.path.normpath(rest))
    if kind == "npz":
      name = os.path.splitext(name)[0]
  elif kind == "tfds" and rest:
    name = rest
  else:
    name = source
  return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-.") or "data"


@dataclasses.dataclass(frozen=True)
class Run:
  """One cell of the grid."""

  method: str
  dataset: str
  shots: int
  seed: int

  @property
  def name(self) -> str:
    # A preset with modifiers ('dip_freezed,stylegan2') names its folder with '-'.
    method = re.sub(r"[^A-Za-z0-9_.]+", "-", self.method)
    return f"{method}_{dataset_slug(self.dataset)}_n{self.shots}_s{self.seed}"

  def workdir(self, root: str) -> str:
    return os.path.join(root, self.name)


def make_grid(methods: Sequence[str], datasets: Sequence[str], shots: Sequence[int],
              seeds: Sequence[int]) -> list[Run]:
  """All combinations, seeds innermost; fails if two cells would share a workdir."""
  runs = [Run(*cell) for cell in itertools.product(methods, datasets, shots, seeds)]
  by_name = collections.defaultdict(list)
  for run in runs:
    by_name[run.name].append(run)
  clashes = [r for r in by_name.values() if len(r) > 1]
  if clashes:
    sources = sorted({run.dataset for group in clashes for run in group})
    raise ValueError(f"runs would share workdirs {sorted(g[0].name for g in clashes)}: "
                     f"repeated grid values, or datasets {sources} with the same name "
                     "(give them distinct folder/file names)")
  return runs


def _preset(method: str, quick: bool) -> str:
  return f"{method},quick" if quick else method


@functools.lru_cache(maxsize=None)
def starts_from_scratch(method: str, quick: bool = False,
                        config_file: str = CONFIG_FILE) -> bool:
  """Whether the method's preset starts from random weights (its `config.init`)."""
  config = config_files.get_config(f"{config_file}:{_preset(method, quick)}")
  return config.get("init") == "scratch"


def build_command(run: Run, root: str, extra: Sequence[str] = (), *, quick: bool = False,
                  config_file: str = CONFIG_FILE,
                  command_prefix: Sequence[str] | None = None) -> list[str]:
  """The trainer command line of one run (argv list; `shlex.join` it to print)."""
  prefix = list(command_prefix or [sys.executable, "-m", TRAINER_MODULE])
  if starts_from_scratch(run.method, quick, config_file):
    extra = [a for a in extra if not a.startswith("--config.init_checkpoint")]
  preset = _preset(run.method, quick)
  return prefix + [
      f"--config={config_file}:{preset}",
      f"--workdir={run.workdir(root)}",
      f"--config.data.source={run.dataset}",
      f"--config.data.num_images={run.shots}",
      f"--config.seed={run.seed}",
      *extra,
  ]


def requested_total_steps(extra: Sequence[str]) -> int | None:
  """--config.total_steps=N among the pass-through arguments (the last one wins)."""
  value = None
  for arg in extra:
    if arg.startswith("--config.total_steps="):
      value = int(arg.split("=", 1)[1])
  return value


def is_finished(workdir: str, total_steps: int | None = None) -> bool:
  """Whether the run's latest checkpoint reached total_steps (default: its config.json's).

  The checkpoint, not metrics.jsonl, is the record of progress: training resumes from
  it, and a run stopped between a log line and its checkpoint must run again.
  """
  if total_steps is None:
    total_steps = plot.read_config(workdir).get("total_steps")
    if total_steps is None:
      return False
  try:
    _, step = checkpoints.resolve_checkpoint(workdir)
  except FileNotFoundError:
    return False
  return step >= int(total_steps)


def _tail(path: str, lines: int = _TAIL_LINES) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return "".join(collections.deque(f, maxlen=lines))


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


# The line a run's log ends each invocation with; `logged_seconds` sums them, so a run's
# time survives the reruns that skip it.
_EXIT_LINE = "=== {date}: exited with code {code} after {seconds:.1f} s\n"
_EXIT_PATTERN = re.compile(r"^=== .*: exited with code -?\d+ after ([0-9.]+) s$")


def write_start_line(log_file, command: Sequence[str], where: str = "") -> None:
  log_file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}{where}: {shlex.join(command)}\n")
  log_file.flush()


def write_exit_line(log_file, returncode: int, seconds: float) -> None:
  log_file.write(_EXIT_LINE.format(date=time.strftime("%Y-%m-%d %H:%M:%S"),
                                   code=returncode, seconds=seconds))


def logged_seconds(workdir: str) -> float | None:
  """Wall seconds of every invocation the run's log records (None: no record, e.g. a
  run made before the log kept them)."""
  path = os.path.join(workdir, LOG_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8", errors="replace") as f:
    times = [float(m.group(1)) for m in map(_EXIT_PATTERN.match, f) if m]
  return sum(times) if times else None


def _print(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclasses.dataclass
class SweepReport:
  """Names of the runs per outcome (return codes for the failed ones)."""

  skipped: list[str] = dataclasses.field(default_factory=list)
  completed: list[str] = dataclasses.field(default_factory=list)
  failed: dict[str, int] = dataclasses.field(default_factory=dict)


def run_sweep(runs: Sequence[Run], root: str, extra: Sequence[str] = (), *,
              parallel: int = 1, devices: Sequence[str] | None = None,
              device_env: str = "CUDA_VISIBLE_DEVICES", quick: bool = False,
              config_file: str = CONFIG_FILE, command_prefix: Sequence[str] | None = None,
              dry_run: bool = False, poll_seconds: float = 0.2,
              log: Callable[[str], None] = _print) -> SweepReport:
  """Runs the unfinished runs of the grid, up to `parallel` at a time (see module doc)."""
  if parallel < 1:
    raise ValueError(f"parallel must be >= 1, got {parallel}")
  devices = list(devices) if devices else [str(i) for i in range(parallel)]
  if parallel > 1 and device_env and len(devices) < parallel:
    raise ValueError(f"--parallel={parallel} needs as many --devices, got {devices}")
  total = len(runs)
  total_steps = requested_total_steps(extra)
  report = SweepReport()
  pending = collections.deque()
  for k, run in enumerate(runs, 1):
    if is_finished(run.workdir(root), total_steps):
      log(f"[{k}/{total}] {run.name}: finished already, skipped")
      report.skipped.append(run.name)
    else:
      pending.append((k, run))
  from_scratch = sorted({r.method for _, r in pending
                         if starts_from_scratch(r.method, quick, config_file)})
  if from_scratch and any(a.startswith("--config.init_checkpoint") for a in extra):
    log(f"{', '.join(from_scratch)} runs start from random weights: "
        "--config.init_checkpoint is not passed to them")
  log(f"{len(pending)} of {total} runs to do, {len(report.skipped)} finished already")

  free_slots = list(range(parallel))
  running = {}  # slot -> (k, run, process, log file, start time)

  def start(slot: int, k: int, run: Run) -> None:
    command = build_command(run, root, extra, quick=quick, config_file=config_file,
                            command_prefix=command_prefix)
    env = dict(os.environ)
    where = ""
    if parallel > 1 and device_env:
      env[device_env] = devices[slot]
      where = f" on {device_env}={devices[slot]}"
    if dry_run:
      log(f"[{k}/{total}] {run.name}{where}: {shlex.join(command)}")
      free_slots.append(slot)
      return
    workdir = run.workdir(root)
    os.makedirs(workdir, exist_ok=True)
    log_file = open(os.path.join(workdir, LOG_FILE), "a", encoding="utf-8")
    write_start_line(log_file, command, where)
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    log(f"[{k}/{total}] {run.name}: started{where}, log {log_file.name}")
    running[slot] = (k, run, process, log_file, time.time())

  def finish(slot: int, returncode: int) -> None:
    k, run, _, log_file, started = running.pop(slot)
    seconds = time.time() - started
    write_exit_line(log_file, returncode, seconds)
    log_file.close()
    free_slots.append(slot)
    elapsed = _duration(seconds)
    if returncode == 0:
      log(f"[{k}/{total}] {run.name}: done in {elapsed}")
      report.completed.append(run.name)
    else:
      report.failed[run.name] = returncode
      log(f"[{k}/{total}] {run.name}: FAILED with return code {returncode} after "
          f"{elapsed}; last lines of {log_file.name}:\n{_tail(log_file.name)}")

  try:
    while pending or running:
      while pending and free_slots:
        start(free_slots.pop(0), *pending.popleft())
      if running:
        time.sleep(poll_seconds)
      for slot, (_, _, process, _, _) in list(running.items()):
        if process.poll() is not None:
          finish(slot, process.returncode)
  except KeyboardInterrupt:
    # The runs got the interrupt too and checkpoint before exiting: wait for that.
    log(f"interrupted: waiting for {len(running)} running run(s) to save and stop")
    for slot, (_, _, process, _, _) in list(running.items()):
      finish(slot, process.wait())
    raise
  return report


# ------------------------------------------------------------------------ results


def summarize(workdir: str, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
  """One results row of a workdir: final and best FID, convergence kimg, KID, PR.

  Metrics are None (and `status` says why) when the run has no evaluations; grid
  fields missing from its config.json (a run that never started) come from `defaults`.
  """
  row = dict.fromkeys(run_columns())
  row.update(defaults or {})
  row["run"] = os.path.basename(os.path.normpath(workdir))
  if not os.path.isdir(workdir):
    row["status"] = "not started"
    return row
  history = plot.load_run(workdir, require_evaluations=False)
  config = history.config
  data = config.get("data") or {}
  if config:  # Without it (a run that failed early) nothing says what it was.
    row.update(method=history.method, init=history.init,
               dataset=data.get("source", row["dataset"]),
               shots=data.get("num_images", row["shots"]), seed=config.get("seed", row["seed"]))
  finished = is_finished(workdir)
  if not history.evaluated:
    row["status"] = "no evaluation" if finished else "unfinished"
    return row
  row["status"] = "finished" if finished else "unfinished"
  kimg, fid = history.curve(registry.PRIMARY_KEY)
  final = next(r for r in reversed(history.records) if r.get(registry.PRIMARY_KEY) is not None)
  row.update({score.name: final.get(f"eval/{score.name}")
              for score in registry.headline_scores()})
  row.update(kimg=float(kimg[-1]), fid=float(fid[-1]), best_fid=float(np.min(fid)),
             convergence_kimg=history.convergence_kimg)
  return row


def group_over_seeds(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Mean and sample std (ddof=1; 0 for a single seed) of the metrics per grid cell."""
  groups = collections.defaultdict(list)
  for row in rows:
    if row.get("fid") is not None:
      groups[tuple(row[k] for k in GROUP_KEYS)].append(row)
  grouped = []
  for key, members in groups.items():
    entry = dict(zip(GROUP_KEYS, key))
    entry["seeds"] = len(members)
    for metric in metric_columns():
      values = np.asarray([m[metric] for m in members if m[metric] is not None], np.float64)
      if not len(values):
        entry[metric] = None
      elif np.ptp(values) <= 1e-9 * np.abs(values).max():  # Equal: no rounding noise.
        entry[metric] = (float(values[0]), 0.0)
      else:
        entry[metric] = (float(values.mean()), float(values.std(ddof=1)))
    grouped.append(entry)
  return grouped


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, tuple):
    mean, std = value
    return f"{mean:.4g} ± {std:.2g}"
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def write_results(root: str, rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
  """ROOT/results.csv (per run) and ROOT/results.md (per run, and over seeds)."""
  os.makedirs(root, exist_ok=True)
  csv_path, md_path = os.path.join(root, RESULTS_CSV), os.path.join(root, RESULTS_MD)
  with open(csv_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, run_columns(), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
  missing = [row["run"] for row in rows if row.get("fid") is None]
  parts = [
      "## Runs",
      ", ".join(("kimg",) + tuple(score.name for score in registry.headline_scores()))
      + ": the last evaluation; best_fid: the lowest; "
      "convergence_kimg: kimg at which FID first came within 5% of its best.",
      markdown_table(rows, run_columns()),
      "## Mean ± std over seeds",
      "Sample standard deviation (0 with one seed); runs without evaluations left out.",
      markdown_table(group_over_seeds(rows), GROUP_KEYS + ("seeds",) + metric_columns()),
  ]
  if missing:
    parts.append(f"No evaluation (yet) in: {', '.join(missing)}. Train with "
                 "--config.eval_every=N to record "
                 + "/".join(score.display for score in registry.headline_scores()) + ".")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write("\n\n".join(parts) + "\n")
  return csv_path, md_path


def collect(runs: Sequence[Run], root: str) -> tuple[str, str]:
  rows = [summarize(run.workdir(root), dataclasses.asdict(run)) for run in runs]
  return write_results(root, rows)


# ------------------------------------------------------------------------ command line


def _list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
  return lambda text: [kind(v) for v in text.split(",") if v]


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
  parser = argparse.ArgumentParser(
      prog="python launch/sweep.py", description=__doc__.split("\n\n")[0],
      allow_abbrev=False,  # --config.* must never pass for an abbreviated --config_file.
      epilog="Every other --config.* argument is passed through to each run.")
  parser.add_argument("--root", required=True, help="Folder of the run workdirs and tables.")
  parser.add_argument("--methods", type=_list(str), required=True,
                      help="Comma-separated finetune presets, e.g. scratch,transfergan,minegan.")
  parser.add_argument("--datasets", type=_list(str), required=True,
                      help="Comma-separated config.data.source values.")
  parser.add_argument("--shots", type=_list(int), required=True,
                      help="Comma-separated config.data.num_images values.")
  parser.add_argument("--seeds", type=_list(int), default=[0], help="Comma-separated seeds.")
  parser.add_argument("--quick", action="store_true", help="Use the METHOD,quick presets.")
  parser.add_argument("--config_file", default=CONFIG_FILE, help="The finetune config file.")
  parser.add_argument("--parallel", type=int, default=1, help="Concurrent runs.")
  parser.add_argument("--devices", type=_list(str), default=None,
                      help="Device per parallel slot (default 0,1,...,K-1).")
  parser.add_argument("--device_env", default="CUDA_VISIBLE_DEVICES",
                      help="Variable that gives each parallel run its device ('' = none).")
  parser.add_argument("--python", default=sys.executable, help="Interpreter of the runs.")
  parser.add_argument("--command_prefix", default=None,
                      help=f"Replaces `PYTHON -m {TRAINER_MODULE}` (shell-quoted string).")
  parser.add_argument("--dry_run", action="store_true", help="Print the commands only.")
  args, extra = parser.parse_known_args(argv)
  unknown = [a for a in extra if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)} (only --config.* "
                 "arguments are passed through to the runs)")
  return args, extra


def main(argv: Sequence[str] | None = None) -> int:
  args, extra = parse_args(sys.argv[1:] if argv is None else argv)
  prefix = (shlex.split(args.command_prefix) if args.command_prefix
            else [args.python, "-m", TRAINER_MODULE])
  runs = make_grid(args.methods, args.datasets, args.shots, args.seeds)
  report = run_sweep(runs, args.root, extra, parallel=args.parallel, devices=args.devices,
                     device_env=args.device_env, quick=args.quick,
                     config_file=args.config_file, command_prefix=prefix,
                     dry_run=args.dry_run)
  if args.dry_run:
    return 0
  _print(f"{len(report.completed)} run(s) done, {len(report.skipped)} skipped, "
         f"{len(report.failed)} failed"
         + (f": {', '.join(f'{n} (rc {c})' for n, c in report.failed.items())}"
            if report.failed else ""))
  for path in collect(runs, args.root):
    _print(f"wrote {path}")
  return 1 if report.failed else 0


if __name__ == "__main__":
  sys.exit(main())
