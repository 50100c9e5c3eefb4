"""Writes metrics to WORKDIR/metrics.jsonl and TensorBoard; process 0 only.

A run resumed at step S first drops the records of steps after S (written
by the interrupted run after its last checkpoint, they would be written
again) and tells TensorBoard to purge its events after S, so curves never
zig-zag. Each record is one `os.write` of a whole line; a line left damaged
by a crash or a full disk is dropped on the next start, and `read_jsonl`
skips it with a note instead of failing.

Both files are written in the calling thread and flushed at each call, so a
full disk stops the run with one line (`SaveFailed`) at that step: no
writer thread can die and leave the run waiting on it.
"""
import contextlib
import json
import os
import sys
import time

import jax
import numpy as np

from bigmodel_jax.errors import SaveFailed


def _read(path: str) -> tuple[list[dict], int]:
  """(the records of a metrics.jsonl, how many lines were damaged)."""
  records, damaged = [], 0
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        damaged += 1
  return records, damaged


def read_jsonl(workdir: str) -> list[dict]:
  """All whole records of WORKDIR/metrics.jsonl (damaged lines skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  records, damaged = _read(path)
  if damaged:
    print(f"note: {path}: skipped {damaged} damaged line(s).", file=sys.stderr)
  return records


def _truncate(path: str, step: int) -> list[dict]:
  """Keeps the records up to `step` (rewritten atomically if any other
  record or a damaged line was there); returns them."""
  if not os.path.exists(path):
    return []
  records, damaged = _read(path)
  kept = [r for r in records if r.get("step", 0) <= step]
  if damaged or len(kept) < len(records):
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(path + ".tmp", path)
    print(f"note: {path}: dropped {len(records) - len(kept)} record(s) after "
          f"step {step}" + (f" and {damaged} damaged line(s)" if damaged
                            else "") + ".", file=sys.stderr)
  return kept


class MetricWriter:
  """Appends to the metrics of a run (re)started at `start_step`;
  `records` holds those kept from before."""

  def __init__(self, workdir: str, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.records = []
    self._fd = self._tb = None
    if self.enabled:
      from tensorboardX import event_file_writer  # Only where written.
      from tensorboardX.proto import event_pb2
      self._event = event_pb2.Event
      os.makedirs(workdir, exist_ok=True)
      self.path = os.path.join(workdir, "metrics.jsonl")
      with _writing(self.path):
        self.records = _truncate(self.path, start_step)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                           0o644)
      self._tb_path = os.path.join(workdir, "events.out.tfevents.*")
      with _writing(self._tb_path):  # Hides later steps' old events.
        self._tb = event_file_writer.EventsWriter(
            os.path.join(workdir, "events"))
        self._tb.write_event(self._event(
            step=start_step + 1, session_log=event_pb2.SessionLog(
                status=event_pb2.SessionLog.START)))
        self._tb.flush()

  def _append(self, record: dict) -> None:
    with _writing(self.path):
      os.write(self._fd, (json.dumps(record) + "\n").encode())

  def _summaries(self, step: int, summaries: list) -> None:
    with _writing(self._tb_path):
      for summary in summaries:
        self._tb.write_event(self._event(wall_time=time.time(), step=step,
                                         summary=summary))
      self._tb.flush()

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    from tensorboardX.summary import scalar
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._append({"step": int(step), **scalars})
    self._summaries(step, [scalar(k, v) for k, v in scalars.items()])

  def write_record(self, step: int, record: dict) -> None:
    """A JSON-serialisable record (e.g. a confusion matrix): metrics.jsonl only."""
    if self.enabled:
      self._append({"step": int(step), **record})

  def write_text(self, tag: str, text: str) -> None:
    if self.enabled:
      from tensorboardX.summary import text as text_summary
      self._summaries(0, [text_summary(tag, text)])

  def close(self) -> None:
    """Closes the files; a failure to flush them is left to the error that
    stopped the run (the writes were flushed at each call)."""
    if self.enabled:
      os.close(self._fd)
      try:
        self._tb.close()
      except OSError:
        pass


@contextlib.contextmanager
def _writing(path: str):
  """Turns an OSError (a full disk) while writing `path` into one line."""
  try:
    yield
  except OSError as e:
    raise SaveFailed(f"Writing {path} failed: {e.strerror or e}. Stopping; "
                     "the checkpoints before it are kept.") from e
