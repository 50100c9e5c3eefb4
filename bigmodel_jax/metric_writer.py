"""Writes metrics to WORKDIR/metrics.jsonl and TensorBoard; process 0 only.

A run resumed at step S first drops the records of steps after S (written
by the interrupted run after its last checkpoint, they would be written
again) and tells TensorBoard to purge its events after S, so curves never
zig-zag. Each record is one `os.write` of a whole line; a line left damaged
by a crash or a full disk is dropped on the next start, and `read_jsonl`
skips it with a note instead of failing.
"""
import json
import os
import sys

import jax
import numpy as np


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
      from tensorboardX import SummaryWriter  # Imported only where written.
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      self.records = _truncate(path, start_step)
      self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
      self._tb = SummaryWriter(logdir=workdir, purge_step=start_step + 1)

  def _append(self, record: dict) -> None:
    os.write(self._fd, (json.dumps(record) + "\n").encode())

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._append({"step": int(step), **scalars})
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)

  def write_record(self, step: int, record: dict) -> None:
    """A JSON-serialisable record (e.g. a confusion matrix): metrics.jsonl only."""
    if self.enabled:
      self._append({"step": int(step), **record})

  def write_text(self, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text)

  def close(self) -> None:
    if self.enabled:
      os.close(self._fd)
      self._tb.close()
