"""Drops TensorStore's "Event loop is closed" tracebacks from stderr.

When a checkpoint read or write fails (a truncated file, a full disk), Orbax
closes its event loop while TensorStore still completes the other reads and
writes in flight; each then prints, from a TensorStore thread, a traceback
ending "RuntimeError: Event loop is closed" that says nothing about the
failure. The command's own one-line error says what happened, so commands
run as programs (see `errors.entrypoint`) drop exactly those tracebacks.
Writes from the main thread, and any other traceback, pass through.
"""
import sys
import threading

NOISE = "RuntimeError: Event loop is closed"


class _Filter:
  def __init__(self, stream):
    self._stream = stream
    self._held = {}  # Thread id -> text of a traceback being written.

  def write(self, text: str) -> int:
    thread = threading.get_ident()
    held = self._held.get(thread)
    if held is None:
      if (threading.current_thread() is threading.main_thread() or
          not text.startswith("Traceback (most recent call last):")):
        return self._stream.write(text)
      held = ""
    held += text
    last = held.rstrip("\n").rsplit("\n", 1)[-1]
    if held.endswith("\n") and last and not last.startswith((" ", "Traceback")):
      del self._held[thread]  # The traceback's last line: its exception.
      if last.strip() != NOISE:
        self._stream.write(held)
    else:
      self._held[thread] = held
    return len(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def install() -> None:
  """Wraps sys.stderr (once) in the filter."""
  if not isinstance(sys.stderr, _Filter):
    sys.stderr = _Filter(sys.stderr)
