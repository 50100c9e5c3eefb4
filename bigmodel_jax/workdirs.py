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
import re
import shutil
import socket
import tempfile

from bigmodel_jax.errors import ConfigError, WorkdirError


# What a run writes in its workdir (train, inputs' `save`, sweeps).
RUN_FILES = frozenset({
    ".lock", "config.json", "config_history.jsonl", "metrics.jsonl",
    "checkpoints", "checksums", "tokenizer.json", "class_names.json",
    "chat_template.json", "plugins", "train.log", "set_aside", ".claim",
    "best.json"})


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
  appears under `out`. `out` must not exist or be empty.

  Its files get the modes a plain `open` gives (some libraries write
  0600). The command claims `out` first (an `flock` on .NAME.claim beside it), so
  a second command writing the same `out` fails at once, before doing its
  work; the claimant removes staging directories of killed earlier
  commands for the same `out`."""
  parent, name = os.path.split(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  claim = os.path.join(parent, f".{name}.claim")
  fd = _claim(claim, out)
  try:
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
      raise ConfigError(f"--out {out} exists and is not empty; choose a new "
                        "directory.")
    prefix = f".staging-{name}."
    for entry in os.listdir(parent):  # Left by killed commands.
      if entry.startswith(prefix) and re.fullmatch(r"[a-z0-9_]{8}",
                                                   entry[len(prefix):]):
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # As a plain mkdir would (not 0700).
    try:
      yield staging
      for root, _, files in os.walk(staging):  # Some libraries write 0600.
        for file in files:
          os.chmod(os.path.join(root, file), 0o666 & ~umask)
      if os.path.exists(out):
        os.rmdir(out)
      os.rename(staging, out)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  finally:
    os.remove(claim)  # While still held: see _claim.
    os.close(fd)


def _claim(path: str, out: str) -> int:
  """An open, exclusively flocked `path` (created if need be); a
  ConfigError if another command holds it. Retries when the file it locked
  was removed meanwhile by the previous holder."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise ConfigError(f"--out {out} is being written by another command; "
                        "wait for it or choose another --out.") from None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)
