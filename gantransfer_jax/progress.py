"""What the console shows during long work: progress with rate and ETA, compile times.

Plain log lines (no carriage returns or bars), so CI logs and `tee`d files read as
well as a terminal:

  with progress.Counter("Inception features of the reference set", 5000) as count:
    for batch in batches:
      ...
      count.update(len(batch))

logs at most every `interval` seconds, e.g.
`Inception features of the reference set: 1280/5000 images (26%), 41.3 images/s,
ETA 1m30s`, and a last line with the total time. The rate leaves out the first
update, which on a jitted function is mostly its compilation.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import time
from collections.abc import Callable, Hashable
from typing import Any

from absl import logging

Log = Callable[[str], None]


def format_duration(seconds: float) -> str:
  """1h02m03s, 4m05s or 6.1s."""
  if seconds < 60:
    return f"{max(seconds, 0):.1f}s"
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _info(message: str) -> None:
  logging.info("%s", message)


class Counter:
  """Counts work towards `total` (None: unknown) and logs rate and ETA now and then."""

  def __init__(self, what: str, total: int | None = None, *, unit: str = "images",
               interval: float = 10.0, log: Log = _info,
               clock: Callable[[], float] = time.monotonic):
    self.what, self.total, self.unit = what, total, unit
    self.done = 0
    self._interval, self._log, self._clock = interval, log, clock
    self._start = self._last_log = clock()
    self._first: tuple[float, int] | None = None  # (time, count) after the first update.

  def rate(self) -> float | None:
    """Units per second since the first update (None before a second one)."""
    if self._first is None:
      return None
    seconds, count = self._clock() - self._first[0], self.done - self._first[1]
    return count / seconds if seconds > 0 and count > 0 else None

  def eta(self) -> float | None:
    rate = self.rate()
    if rate is None or self.total is None:
      return None
    return max(self.total - self.done, 0) / rate

  def status(self, note: str = "") -> str:
    text = f"{self.what}: {self.done}"
    if self.total:
      text += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
    else:
      text += f" {self.unit}"
    rate, eta = self.rate(), self.eta()
    if rate is not None:
      text += f", {rate:.1f} {self.unit}/s"
    if eta is not None:
      text += f", ETA {format_duration(eta)}"
    return f"{text} | {note}" if note else text

  def update(self, n: int = 1, note: str | Callable[[], str] = "") -> None:
    """Counts `n` more; `note` (or its thunk, called only when logging) joins the line."""
    self.done += n
    now = self._clock()
    if self._first is None:
      self._first = (now, self.done)
    if now - self._last_log >= self._interval and (self.total is None
                                                    or self.done < self.total):
      self._last_log = now
      self._log(self.status(note() if callable(note) else note))

  def finish(self) -> None:
    seconds = self._clock() - self._start
    rate = f" ({self.done / seconds:.1f} {self.unit}/s)" if seconds > 0 and self.done else ""
    self._log(f"{self.what}: {self.done} {self.unit} in {format_duration(seconds)}{rate}")

  def __enter__(self) -> Counter:
    return self

  def __exit__(self, exc_type, *exc) -> None:
    if exc_type is None:
      self.finish()


@contextlib.contextmanager
def phase(what: str, *, log: Log = _info, clock: Callable[[], float] = time.monotonic):
  """Logs `what...` before one long step without a count (reading a file, writing a
  checkpoint) and `what: done in T` after it."""
  log(f"{what}...")
  start = clock()
  yield
  log(f"{what}: done in {format_duration(clock() - start)}")


class FirstCalls:
  """Announces and times the first call of each variant of a jitted function, i.e. its
  compilation, so that the caller's rates and ETAs can leave it out.

    compiles = FirstCalls("the train step")
    out = compiles.call(step_fn, state, do_r1=True)   # logs, blocks, times: compiling
    elapsed = ... - compiles.take_seconds()           # time the loop spent compiling
  """

  def __init__(self, what: str, *, log: Log = _info,
               clock: Callable[[], float] = time.perf_counter):
    self.what = what
    self._log, self._clock = log, clock
    self._compiled: dict[Hashable, Callable[..., Any]] = {}
    self._seconds = 0.0

  def call(self, fn: Callable[..., Any], *args: Any, **keywords: Hashable) -> Any:
    """`fn(*args, **keywords)` for a jitted `fn`; the variant is the static keyword
    arguments: all of them, except those named by `fn.runtime_keywords`, which pick no
    program and go to the compiled executable at every call (the train step of
    `regularizer_dispatch='cond'`). Each variant is compiled ahead of its first run and
    every process waits for the others before running it (see `parallel.barrier`)."""
    runtime_names = getattr(fn, "runtime_keywords", ())
    runtime = {k: v for k, v in keywords.items() if k in runtime_names}
    static = {k: v for k, v in keywords.items() if k not in runtime_names}
    variant = tuple(sorted(static.items()))
    if variant in self._compiled:
      return self._compiled[variant](*args, **runtime)
    options = ", ".join(f"{k}={v}" for k, v in variant)
    self._log(f"compiling {self.what}{f' ({options})' if options else ''}...")
    import jax  # pylint: disable=g-import-not-at-top  (the CLI imports this module early)
    from gantransfer_jax import parallel  # pylint: disable=g-import-not-at-top

    start = self._clock()
    compiled = fn.lower(*args, **static).compile()
    parallel.barrier(f"compiled {self.what} {options}")
    self._compiled[variant] = compiled
    out = jax.block_until_ready(compiled(*args, **runtime))
    seconds = self._clock() - start
    self._seconds += seconds
    self._log(f"compiled {self.what} and ran it once in {format_duration(seconds)}")
    return out

  def take_seconds(self) -> float:
    """Seconds spent in first calls since the last take."""
    seconds, self._seconds = self._seconds, 0.0
    return seconds


class _QuietLibraries(std_logging.Filter):
  """Keeps Orbax's per-save/restore INFO chatter off the console; warnings still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """What the commands (main, sample) and the notebooks do to absl's console log."""
  absl_logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _QuietLibraries) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietLibraries())
  # "Unable to initialize backend 'tpu'" and the like on every start without a TPU.
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)


def quiet_native_logs() -> None:
  """Defaults for TensorFlow's and libtpu's C++ start-up logs (oneDNN notices, device
  probing: nothing to act on); takes effect only before they are imported. TF only
  writes summaries and decodes TFDS images here, so its oneDNN kernels do not matter."""
  for name, value in (("TF_CPP_MIN_LOG_LEVEL", "2"), ("TF_ENABLE_ONEDNN_OPTS", "0"),
                      ("TPU_STDERR_LOG_LEVEL", "2"), ("TPU_MIN_LOG_LEVEL", "2")):
    os.environ.setdefault(name, value)
