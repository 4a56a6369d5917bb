"""The one wrapper of every command-line entry: a failure ends in one line, not a traceback.

    if __name__ == "__main__":
      cli.run(main)   # instead of absl's app.run(main)

Any exception raised while parsing the flags (a config file that does not load, a bad `:arg`, a
misspelt `--config.key`) or by `main` is printed as `error: <message>` on stderr, exit status 1.
The full traceback is printed instead when the environment variable RECON3D_TRACEBACK is set
(e.g. RECON3D_TRACEBACK=1). Imports no JAX, so the sweep launcher can use it.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable

from absl import app, flags

from recon3d_jax import config_lib

TRACEBACK_ENV = "RECON3D_TRACEBACK"  # Set (to anything non-empty): tracebacks are not hidden.
# Errors whose message is the whole story (a config value, a flag, a file, a diverged run): printed
# without their type or the traceback hint.
EXPECTED = (config_lib.ConfigError, flags.Error, OSError, FloatingPointError, SyntaxError)


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run(main), with failures turned into one line (see the module docstring)."""
  app.run(guarded(main), flags_parser=guarded(parse_flags))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing. A `--config.key=value` whose key the config lacks, which ml_collections
  reports as a bare KeyError or AttributeError, becomes a ConfigError saying so."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    raise config_lib.ConfigError(f"a --config override names no config field: "
                                 f"{' '.join(_lines(e))}") from None


def no_arguments(argv: list[str]) -> None:
  """Raises ConfigError for positional arguments (every entry takes only --flags)."""
  if len(argv) > 1:
    raise config_lib.ConfigError(f"unexpected arguments {argv[1:]}; expected only --flags")


def guarded(fn: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
  """fn, but an exception (unless RECON3D_TRACEBACK is set) exits through `exit_with`."""
  def call(argv):
    try:
      return fn(argv)
    except Exception as e:  # pylint: disable=broad-except  (the point of this module)
      if os.environ.get(TRACEBACK_ENV):
        raise
      exit_with(e)
  return call


def exit_with(error: BaseException) -> None:
  """Prints `error: <message>` on stderr (for an unexpected kind of error, with a second line
  saying how to see its traceback) and exits with status 1."""
  cause = _described(error)
  text = (_lines(cause) or [""])[-1]
  if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
    text = "No space left on device" + (f" (writing {cause.filename})" if cause.filename else "")
  elif _disk_full(cause):  # A library's error that wraps the OS's message.
    text = f"No space left on device: {text[:200]}"
  elif isinstance(cause, SyntaxError):
    text = f"{cause.filename}, line {cause.lineno}: {cause.msg} (a Python syntax error)"
  elif not isinstance(cause, EXPECTED):
    text = f"{type(cause).__name__}: {text}\n({TRACEBACK_ENV}=1 prints the traceback)"
  sys.exit(f"error: {text}")


def _described(error: BaseException) -> BaseException:
  """The error whose message says what went wrong. Libraries wrap errors (a config file's
  exception inside a flag-parsing error, an OS error inside a storage error): a full disk is
  named wherever it is in the chain; otherwise the first error with a one-line message, or the
  innermost one."""
  chain = _chain(error)
  full = [e for e in chain if _disk_full(e)]
  one_line = [e for e in chain if len(_lines(e)) == 1]
  return (full or one_line or chain[-1:])[0]


def _disk_full(error: BaseException) -> bool:
  return (isinstance(error, OSError) and error.errno == errno.ENOSPC
          or any("No space left" in line for line in _lines(error)))


def _chain(error: BaseException) -> list[BaseException]:
  """error, then the errors it wraps (explicit causes, else unsuppressed contexts), outermost
  first."""
  chain = [error]
  while True:
    e = chain[-1]
    inner = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    if inner is None or inner in chain:
      return chain
    chain.append(inner)


def _lines(error: BaseException) -> list[str]:
  """The non-empty lines of error's message (a KeyError's unquoted; an error whose argument is
  another error, that error's)."""
  arg = error.args[0] if len(error.args) == 1 else None
  if isinstance(arg, BaseException):
    return _lines(arg)
  text = arg if isinstance(arg, str) else str(error)
  return [line.strip() for line in text.splitlines() if line.strip()]
