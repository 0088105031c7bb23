"""gantransfer_jax.progress: rate and ETA without the first (compiling) update, at most
one line per interval, compile times kept apart."""

from __future__ import annotations

import functools

import jax

from gantransfer_jax import progress


class FakeClock:

  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


def test_counter_rate_and_eta_leave_out_the_first_update_and_lines_are_spaced():
  clock, lines = FakeClock(), []
  counter = progress.Counter("features", 500, interval=10.0, log=lines.append, clock=clock)
  clock.now += 30.0  # The first batch: mostly compilation.
  counter.update(100)
  assert counter.rate() is None and counter.eta() is None
  assert lines == ["features: 100/500 images (20%)"]
  for _ in range(3):
    clock.now += 2.0
    counter.update(100, note="loss 0.5")
  # 300 images in the 6 s after the first batch: 50 images/s, 100 left -> 2 s. No new
  # line: 10 s had not passed since the last one.
  assert counter.rate() == 50.0 and counter.eta() == 2.0
  assert lines == ["features: 100/500 images (20%)"]
  clock.now += 10.0
  counter.update(50, note=lambda: "loss 0.4")
  assert lines[-1] == "features: 450/500 images (90%), 21.9 images/s, ETA 2.3s | loss 0.4"
  counter.update(50)  # Reaching the total leaves the summary to finish().
  counter.finish()
  assert len(lines) == 3
  assert lines[-1] == "features: 500 images in 46.0s (10.9 images/s)"


def test_counter_without_a_total_and_durations():
  lines = []
  with progress.Counter("W1", unit="problems", interval=0.0, log=lines.append) as counter:
    counter.update(3)
  assert lines[0] == "W1: 3 problems" and lines[-1].startswith("W1: 3 problems in ")
  assert [progress.format_duration(s) for s in (6.14, 245, 3723)] == [
      "6.1s", "4m05s", "1h02m03s"]


def test_first_calls_are_announced_timed_once_per_variant_and_taken_apart():
  clock, lines, calls = FakeClock(), [], []

  @functools.partial(jax.jit, static_argnames="do_r1")
  def step(x, do_r1):
    calls.append(do_r1)  # Runs while tracing: once per compiled variant.
    clock.now += 40.0 if len(calls) == 1 else 1.0
    return x + 1

  compiles = progress.FirstCalls("the train step", log=lines.append, clock=clock)
  assert compiles.call(step, 1, do_r1=True) == 2
  assert compiles.call(step, 2, do_r1=True) == 3
  assert compiles.call(step, 3, do_r1=False) == 4
  assert lines == ["compiling the train step (do_r1=True)...",
                   "compiled the train step and ran it once in 40.0s",
                   "compiling the train step (do_r1=False)...",
                   "compiled the train step and ran it once in 1.0s"]
  assert compiles.take_seconds() == 41.0 and compiles.take_seconds() == 0.0
  assert calls == [True, False]  # Later calls run the variant's executable.


def test_phase_logs_before_and_after_with_the_time():
  clock, lines = FakeClock(), []
  with progress.phase("reading network.pkl", log=lines.append, clock=clock):
    clock.now += 75.0
  assert lines == ["reading network.pkl...", "reading network.pkl: done in 1m15s"]
