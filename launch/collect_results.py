r"""Prints a Markdown table of runs' evaluation results (final and best FID, KID, PR).

  python launch/collect_results.py workdirs/ft_scratch workdirs/ft_transfergan ...

Reads each workdir's config.json and metrics.jsonl (written by the training loop).
"""

import json
import os
import sys

from gantransfer_jax import writers


def summarize(workdir: str) -> dict:
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  records = writers.read_metrics(workdir)
  evals = [r for r in records if r.get("eval/fid") is not None]
  if not evals:
    raise SystemExit(f"{workdir}: no evaluation in metrics.jsonl (run with --config.eval_every)")
  final = evals[-1]
  summary = next((r for r in reversed(records) if "eval/best_fid" in r), {})
  return {
      "run": os.path.basename(os.path.normpath(workdir)),
      "method": config.get("method", config.get("task")),
      "init": os.path.basename(os.path.normpath(config.get("init_checkpoint") or "random")),
      "kimg": final.get("perf/kimg"),
      "fid": final["eval/fid"],
      "best_fid": summary.get("eval/best_fid", min(r["eval/fid"] for r in evals)),
      "kid": final["eval/kid"],
      "precision": final["eval/precision"],
      "recall": final["eval/recall"],
  }


def main(workdirs: list[str]) -> None:
  rows = [summarize(w) for w in workdirs]
  columns = list(rows[0])
  print("| " + " | ".join(columns) + " |")
  print("|" + "---|" * len(columns))
  for row in rows:
    cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
  if len(sys.argv) < 2:
    raise SystemExit(__doc__)
  main(sys.argv[1:])
