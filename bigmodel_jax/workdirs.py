"""A run's workdir: checked before anything is written, and locked.

  with workdirs.lock("runs/x"):   # "... in use by PID 4242 on host-a" if taken
    ...

The lock is an `flock` on WORKDIR/.lock: the operating system releases it
when its process ends however it ends (kill -9 included), so a crashed run
never leaves a stale lock behind; the file keeps the holder's PID and host
for the message. Only process 0 of a job takes it (the others write
nothing). Object-store paths ("gs://...") are not locked.
"""
import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile

from bigmodel_jax.errors import ConfigError, WorkdirError


# What a run writes in its workdir (train, inputs' `save`, sweeps).
RUN_FILES = frozenset({
    ".lock", "config.json", "config_history.jsonl", "metrics.jsonl",
    "checkpoints", "checksums", "tokenizer.json", "class_names.json",
    "chat_template.json", "plugins", "train.log", "set_aside"})


def _is_run_config(path: str) -> bool:
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(config, dict) and {"model", "input"} <= config.keys()


def check_not_foreign(path: str) -> None:
  """WorkdirError unless `path` is new, empty or a run's workdir: a
  training run must never overwrite another program's files (an exported
  Hugging Face directory's config.json and tokenizer.json)."""
  if not os.path.isdir(path):
    return
  config = os.path.join(path, "config.json")
  if os.path.exists(config) and not _is_run_config(config):
    raise WorkdirError(f"--workdir {path!r} is not a training run: its "
                       "config.json is not a run config (an exported model?)."
                       " Use a new directory.")
  foreign = sorted(name for name in os.listdir(path)
                   if name not in RUN_FILES and
                   not name.startswith("events.out.tfevents"))
  if foreign and not os.path.exists(config):
    raise WorkdirError(f"--workdir {path!r} is not empty and not a training "
                       f"run: it holds {', '.join(foreign[:4])}"
                       f"{' ...' if len(foreign) > 4 else ''}. Use a new "
                       "directory.")


def prepare(path: str) -> None:
  """Creates the workdir, or says in one line why it cannot be one."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"--workdir {path!r} is a file, not a directory.")
  check_not_foreign(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"Cannot create the workdir {path!r}: "
                       f"{e.strerror or e}.") from e
  if not os.access(path, os.W_OK):
    raise WorkdirError(f"The workdir {path!r} is not writable.")


@contextlib.contextmanager
def lock(path: str):
  """Holds WORKDIR/.lock exclusively for the block; another holder is a
  WorkdirError naming its PID and host."""
  if "://" in path:
    yield
    return
  prepare(path)
  try:
    fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise WorkdirError(f"Cannot write to the workdir {path!r}: "
                       f"{e.strerror or e}.") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
      raise WorkdirError(
          f"The workdir {path!r} is in use by {holder or 'another process'}; "
          "wait for that run to end or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(),
              0)
    yield
  finally:
    os.close(fd)  # Releases the lock.


@contextlib.contextmanager
def new_directory(out: str):
  """Yields a staging directory beside `out` that becomes `out` when the
  block ends without error (removed otherwise): a half-written result never
  appears under `out`. `out` must not exist or be empty."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConfigError(f"--out {out} exists and is not empty; choose a new "
                      "directory.")
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(staging, 0o777 & ~umask)  # As a plain mkdir would (not 0700).
  try:
    yield staging
    if os.path.exists(out):
      os.rmdir(out)
    os.rename(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
