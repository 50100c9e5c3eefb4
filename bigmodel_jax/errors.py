"""Errors a user can fix, reported as one line instead of a traceback.

Entrypoints are wrapped in `entrypoint`: a `UserError` prints
"error: MESSAGE" on stderr and exits with its `exit_code` (2 for bad input,
1 for a run that had to stop, 75 for one interrupted and saved); any other exception is a bug and keeps its
traceback. Each class also derives from the built-in error it refines, so
callers can catch ValueError, FileNotFoundError, ... as before.
"""
import errno
import functools
import os
import re
import sys

from bigmodel_jax import quiet_stderr


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
  """A checkpoint or a metrics file could not be written: the run stopped.
  The entrypoint exits at once: Orbax's save threads cannot finish after
  such a failure."""
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


def disk_full(error: BaseException) -> bool:
  """Whether `error` is a full disk or quota: an OSError, or a Rust
  library's error (safetensors, tokenizers) that ends "(os error 28)"."""
  if isinstance(error, OSError):
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
  return re.search(r"\(os error (28|122)\)", str(error)) is not None


def entrypoint(main):
  """`main(argv)` with user errors, and a full disk, as one line and their
  exit code (1 for a full disk: every command writes through a staging
  file or directory, or resumes, so nothing half-written is kept)."""
  @functools.wraps(main)
  def wrapped(argv=None):
    if as_program:
      quiet_stderr.install()
    try:
      return main(argv)
    except UserError as e:
      print(f"{getattr(e, 'label', 'error')}: {e}", file=sys.stderr,
            flush=True)
      _exit(e.exit_code, getattr(e, "exit_now", False) or as_program)
    except Exception as e:
      if not disk_full(e):
        raise
      where = getattr(e, "filename", None)
      print(f"error: {os.strerror(errno.ENOSPC)}"
            f"{f' writing {where}' if where else ''}. Free some space and run "
            "the same command again: it keeps nothing half-written.",
            file=sys.stderr, flush=True)
      _exit(1, as_program)
  # Run as a program (python -m ...), a command drops TensorStore's
  # "Event loop is closed" noise and exits at once after its error line
  # (the interpreter's shutdown would let reads still in flight print more).
  as_program = main.__module__ == "__main__"
  return wrapped


def _exit(code: int, at_once: bool):
  if at_once:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  raise SystemExit(code) from None
