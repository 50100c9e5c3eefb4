"""Stopping a run cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C).

  with preemption.Watch() as stop:
    for step in ...:
      ...                        # dispatch the step
      if stop.requested(step):   # save a checkpoint at `step`, then stop

The first signal only sets a flag: the loop finishes the step in flight,
saves a verified checkpoint there and stops with `Interrupted` (exit status
75, EX_TEMPFAIL: "run it again"). A second signal exits at once (status
128 + the signal) without saving.

A job of several processes must save the same step everywhere. There JAX's
preemption service (started by `jax.distributed.initialize`) owns SIGTERM:
a notice on any process makes `reached_preemption_sync_point(step)` true at
the same step on all of them, the step Orbax's preemption-aware saving also
uses. A SIGINT is turned into a SIGTERM for that service; a second SIGINT
still exits at once.
"""
import ctypes
import os
import signal
import subprocess
import sys
import threading

import jax
from jax.experimental import multihost_utils

PR_SET_PDEATHSIG = 1  # prctl(2)


def _say(text: str) -> None:
  os.write(2, (text + "\n").encode())  # Safe inside a signal handler.


class _Handling:
  """Installs `self._handle` for `signums` for a block, then restores the
  handlers it replaced."""
  _previous: dict = {}

  def _install(self, signums) -> None:
    self._previous = {s: signal.signal(s, self._handle) for s in signums}

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


class Watch(_Handling):
  """Installs the handlers for the block (in the main thread only; a run in
  another thread is stopped the usual way) and restores the old ones."""

  def __init__(self):
    self.signal_name = None
    self._shared = False  # Several processes: JAX's service decides.

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    self._shared = jax.process_count() > 1
    self._install((signal.SIGINT,) if self._shared
                  else (signal.SIGINT, signal.SIGTERM))
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signal_name is not None:
      _say(f"{name} again: exiting at once, without saving.")
      os._exit(128 + signum)
    self.signal_name = name
    _say(f"{name}: finishing the step in flight and saving a checkpoint "
         f"({name} again exits at once).")
    if self._shared:
      signal.raise_signal(signal.SIGTERM)  # To JAX's preemption service.

  def requested(self, step: int) -> bool:
    """Whether to save at `step` and stop (called at every step)."""
    if self._shared:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal_name = self.signal_name or "SIGTERM"
        return True
      return False
    return self.signal_name is not None


class Forwarding(_Handling):
  """While a parent (a sweep, a search) runs training processes: SIGTERM or
  SIGINT is passed on to `procs()` (each saves and exits 75; a second
  signal makes them exit at once) and `received` names it, so the parent
  starts nothing new. The children run in their own sessions, so Ctrl-C
  in a terminal reaches them once, through the parent."""

  def __init__(self, procs):
    self.procs, self.received = procs, None

  def __enter__(self):
    self._install((signal.SIGINT, signal.SIGTERM))
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = signal.Signals(signum).name
    _say(f"{self.received}: passing it to the running trainings; nothing "
         "new starts")
    for proc in self.procs():
      proc.send_signal(signum)


def start_child(command: list[str], log) -> subprocess.Popen:
  """A training process of a sweep or search, output to `log`: in its own
  session (see Forwarding) and sent SIGTERM if its parent dies (Linux), so
  it saves and stops instead of training on unwatched."""
  prctl = ctypes.CDLL(None).prctl  # Looked up here, not in the child.

  def die_with_parent():
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
  return subprocess.Popen(
      command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
      preexec_fn=die_with_parent if sys.platform == "linux" else None)
