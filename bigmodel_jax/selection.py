"""Checkpoints chosen by their evaluation: the best one, and early stopping.

  config.keep_best.metric = "val/accuracy"     # None: off
  config.early_stopping.metric = "val/loss"    # with patience, min_delta

With `keep_best`, a step whose evaluation is the best so far is saved (even
between checkpoint steps), kept out of rotation and named in
WORKDIR/best.json, so `sample`, `evaluate`, `export`, `compress` and `serve`
take `--step best`. With `early_stopping`, the run ends, saved, once the
metric has not improved by more than `min_delta` for `patience`
evaluations in a row; rerunning the command then does nothing more. A
metric's direction is `mode` ("min" or "max"), or with "auto" from its
name: losses, perplexities, errors and bits are minimized, anything else
(accuracy, F1, ...) maximized. Both are restored on resume by replaying the
run's metrics.jsonl, so a resumed run decides as an unbroken one would.
"""
import json
import math
import os

import ml_collections
from ml_collections.config_dict import placeholder

from bigmodel_jax.errors import ConfigError, NotFound

LOWER_IS_BETTER = ("loss", "perplexity", "error", "bits")


def keep_best_block() -> ml_collections.ConfigDict:
  """`config.keep_best`: the metric whose best step is kept (None: off)."""
  return ml_collections.ConfigDict(dict(metric=placeholder(str), mode="auto"))


def early_stopping_block() -> ml_collections.ConfigDict:
  """`config.early_stopping`: stop after `patience` evaluations without an
  improvement above `min_delta` of `metric` (None: off)."""
  return ml_collections.ConfigDict(dict(
      metric=placeholder(str), mode="auto", patience=5, min_delta=0.0))


def lower_is_better(metric: str, mode: str = "auto") -> bool:
  if mode not in ("auto", "min", "max"):
    raise ConfigError(f"mode={mode!r}: use 'auto', 'min' or 'max'.")
  if mode != "auto":
    return mode == "min"
  return any(word in metric.rsplit("/", 1)[-1] for word in LOWER_IS_BETTER)


class _Best:
  """The best value of one metric so far and its step."""

  def __init__(self, metric: str, mode: str):
    self.metric, self.lower = metric, lower_is_better(metric, mode)
    self.value, self.step = None, None

  def improves(self, value: float, delta: float = 0.0) -> bool:
    if not math.isfinite(value):
      return False
    if self.value is None:
      return True
    return (value < self.value - delta if self.lower
            else value > self.value + delta)


class Selection:
  """Watches the evaluations of a run (re)started after `records`."""

  def __init__(self, config, records: list[dict] = ()):
    keep = config.get("keep_best") or {}
    stop = config.get("early_stopping") or {}
    self.best = (_Best(keep["metric"], keep.get("mode", "auto"))
                 if keep.get("metric") else None)
    self.watch = (_Best(stop["metric"], stop.get("mode", "auto"))
                  if stop.get("metric") else None)
    if self.watch is not None:
      self.patience, self.min_delta = stop["patience"], stop["min_delta"]
    self.stale = 0  # Evaluations in a row without an improvement.
    self.stopped_at = None
    for record in records:
      self.observe(record["step"], record)

  @property
  def best_step(self) -> int | None:
    return self.best.step if self.best else None

  def observe(self, step: int, scalars: dict) -> bool:
    """Takes an evaluation's scalars; whether `step` is a new best (to
    save). Sets `stopped_at` when early stopping ends the run here."""
    new_best = False
    if self.best and self.best.metric in scalars:
      value = float(scalars[self.best.metric])
      if self.best.improves(value):
        self.best.value, self.best.step, new_best = value, step, True
    if self.watch and self.watch.metric in scalars and self.stopped_at is None:
      value = float(scalars[self.watch.metric])
      if self.watch.improves(value, self.min_delta):
        self.watch.value, self.watch.step, self.stale = value, step, 0
      else:
        self.stale += 1
        if self.stale >= self.patience:
          self.stopped_at = step
    return new_best

  def stop_message(self) -> str:
    return (f"early stopping at step {self.stopped_at}: "
            f"{self.watch.metric} has not improved by more than "
            f"{self.min_delta} for {self.patience} evaluation(s); best "
            f"{self.watch.value:.4g} at step {self.watch.step}")

  def write(self, workdir: str) -> None:
    """WORKDIR/best.json: the best step, its metric and value."""
    path = os.path.join(workdir, "best.json")
    with open(path + ".tmp", "w") as f:
      json.dump({"step": self.best.step, "metric": self.best.metric,
                 "value": self.best.value}, f)
    os.replace(path + ".tmp", path)


def best_step(workdir: str) -> int:
  """The step of WORKDIR/best.json; NotFound when the run keeps none."""
  try:
    with open(os.path.join(workdir, "best.json")) as f:
      return int(json.load(f)["step"])
  except FileNotFoundError:
    raise NotFound(f"--step best: {workdir!r} has no best checkpoint (train "
                   "with config.keep_best.metric set, e.g. "
                   "--config.keep_best.metric=val/loss).") from None
