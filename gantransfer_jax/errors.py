"""User errors: mistakes the user fixes (config, paths, data, checkpoints), not bugs.

The command line (`gantransfer_jax.main`) prints a `UserError` as one short message
(its text names the problem and the fix) and exits with `USAGE_EXIT_CODE`; anything
else is a bug and keeps its traceback. Raise a subclass of `UserError` (subclass a
builtin too, e.g. `class ConfigError(UserError, ValueError)`, where callers catch that).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn

# The shell's convention for "wrong usage" (argparse and absl use it too); bugs exit 1.
USAGE_EXIT_CODE = 2


class UserError(Exception):
  """A problem the user fixes; the message says what is wrong and how to fix it."""


class InputError(UserError, ValueError):
  """The user's data, files or settings for them are not what they must be (raised by
  the readers that validate them: data sources, image folders, the sampler's checks)."""


def is_user_error(error: BaseException) -> bool:
  """UserErrors, and missing or unreadable files; any other error is a bug."""
  return isinstance(error, (UserError, FileNotFoundError, NotADirectoryError,
                            PermissionError, IsADirectoryError))


def message(error: BaseException) -> str:
  """The error's text for a user (KeyError's repr quotes are dropped)."""
  if isinstance(error, KeyError) and error.args:
    return str(error.args[0])
  return str(error) or type(error).__name__


def exit_with(text: str) -> NoReturn:
  """Prints `error: TEXT` to stderr and exits with USAGE_EXIT_CODE."""
  print(f"error: {text}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT_CODE)


def one_line_user_errors(verbose: Callable[[], bool] = lambda: False):
  """Decorates a command's `main(argv)`: user errors (and absl's UsageError) become
  `exit_with(message)`; bugs, and everything when `verbose()`, keep their traceback."""
  from absl import app  # pylint: disable=g-import-not-at-top

  def decorate(main: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
      try:
        return main(*args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except
        if verbose() or not (isinstance(e, app.UsageError) or is_user_error(e)):
          raise
        exit_with(message(e) + "\n(run with --verbose for the traceback)")

    return wrapped

  return decorate
