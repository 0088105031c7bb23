"""metrics.jsonl survives a write torn by a crash (disk full, power loss, kill -9)."""

import json

import pytest

from gantransfer_jax import writers


def test_torn_last_line_is_skipped_and_the_next_record_starts_a_new_line(tmp_path):
  path = tmp_path / writers.METRICS_FILE
  records = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
  path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3, "lo')

  with pytest.warns(UserWarning, match=r"torn or malformed line.*line 3"):
    assert writers.read_metrics(str(tmp_path)) == records

  writer = writers.JsonlWriter(str(path))  # The resumed run appends.
  writer.write_scalars(3, {"loss": 0.125})
  writer.close()
  lines = path.read_text().splitlines()
  assert lines[2] == '{"step": 3, "lo' and json.loads(lines[3]) == {"step": 3, "loss": 0.125}
  with pytest.warns(UserWarning, match="line 3"):
    assert writers.read_metrics(str(tmp_path)) == records + [{"step": 3, "loss": 0.125}]


def test_intact_file_reads_without_warnings(tmp_path, recwarn):
  writer = writers.JsonlWriter(str(tmp_path / writers.METRICS_FILE))
  writer.write_scalars(1, {"loss": 1.0})
  writer.close()
  writer = writers.JsonlWriter(str(tmp_path / writers.METRICS_FILE))  # No stray newline.
  writer.write_scalars(2, {"loss": 2.0})
  writer.close()
  assert (tmp_path / writers.METRICS_FILE).read_text().count("\n") == 2
  assert writers.read_metrics(str(tmp_path)) == [{"step": 1, "loss": 1.0},
                                                  {"step": 2, "loss": 2.0}]
  assert not recwarn.list
