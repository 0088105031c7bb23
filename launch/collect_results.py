r"""Prints a Markdown table of runs' evaluation results (final and best FID, KID, PR).

  python launch/collect_results.py workdirs/ft_scratch workdirs/ft_transfergan ...

Reads each workdir's config.json and metrics.jsonl (written by the training loop); the
rows are those of a sweep's results.md (`launch/sweep.py`, which also tabulates means
over seeds). Runs without evaluations get empty metric cells and a note.
"""

import sys

import sweep  # launch/sweep.py: this script's folder is first on sys.path.


def main(workdirs: list[str]) -> None:
  rows = [sweep.summarize(w) for w in workdirs]
  print(sweep.markdown_table(rows, sweep.run_columns()))
  missing = [row["run"] for row in rows if row["fid"] is None]
  if missing:
    print(f"\nNo evaluation in {', '.join(missing)}: train with --config.eval_every=N.")


if __name__ == "__main__":
  if len(sys.argv) < 2:
    raise SystemExit(__doc__)
  main(sys.argv[1:])
