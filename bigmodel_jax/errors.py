"""Errors a user can fix, reported as one line instead of a traceback.

Entrypoints are wrapped in `entrypoint`: a `UserError` prints
"error: MESSAGE" on stderr and exits with its `exit_code` (2 for bad input,
1 for a run that had to stop, 75 for one interrupted and saved); any other exception is a bug and keeps its
traceback. Each class also derives from the built-in error it refines, so
callers can catch ValueError, FileNotFoundError, ... as before.
"""
import functools
import os
import sys


class UserError(Exception):
  exit_code = 2


class ConfigError(UserError, ValueError):
  """A config key, command-line argument or input value that is not allowed."""


class NotFound(UserError, FileNotFoundError):
  """Missing data, run, checkpoint or step."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that is unreadable, corrupt or from another config."""


class WorkdirError(UserError, RuntimeError):
  """A workdir in use by another run, not a directory, or not writable."""


class Diverged(UserError, FloatingPointError):
  """Non-finite loss, gradient or state: the run stopped."""
  exit_code = 1


class SaveFailed(UserError, RuntimeError):
  """A checkpoint could not be written: the run stopped. The entrypoint
  exits at once: Orbax's save threads cannot finish after such a failure."""
  exit_code = 1
  exit_now = True


class Interrupted(UserError):
  """A run stopped by SIGTERM or SIGINT after saving its checkpoint: running
  the same command again resumes it (exit status 75, EX_TEMPFAIL)."""
  exit_code = 75
  label = "interrupted"


class NotExportable(ConfigError):
  """A model setting the export format cannot reproduce faithfully."""


class ExportMismatch(UserError, RuntimeError):
  """An export whose reloaded outputs differ from the run's: not kept."""
  exit_code = 1


def entrypoint(main):
  """`main(argv)` with user errors as one line and their exit code."""
  @functools.wraps(main)
  def wrapped(argv=None):
    try:
      return main(argv)
    except UserError as e:
      print(f"{getattr(e, 'label', 'error')}: {e}", file=sys.stderr,
            flush=True)
      if getattr(e, "exit_now", False):
        sys.stdout.flush()
        os._exit(e.exit_code)
      raise SystemExit(e.exit_code) from None
  return wrapped
