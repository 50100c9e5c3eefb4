"""Writes metrics to WORKDIR/metrics.jsonl and TensorBoard; process 0 only."""
import json
import os

import jax
import numpy as np


class MetricWriter:

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._jsonl = self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # Imported only where written.
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = SummaryWriter(logdir=workdir)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, step)

  def write_record(self, step: int, record: dict) -> None:
    """A JSON-serialisable record (e.g. a confusion matrix): metrics.jsonl only."""
    if self.enabled:
      self._jsonl.write(json.dumps({"step": int(step), **record}) + "\n")
      self._jsonl.flush()

  def write_text(self, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_jsonl(workdir: str) -> list[dict]:
  """All records of WORKDIR/metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
