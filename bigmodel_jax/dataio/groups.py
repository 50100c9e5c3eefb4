"""Groups of examples, for per-group evaluation (`input.groups`).

`input.groups` names, for each example of a labelled input, the group it
belongs to:
  - a column of a CSV/TSV input ("speaker_gender"), or
  - "FILE.py:FUNCTION" or "package.module:FUNCTION": a function of the
    example's record ({"text", "label"} or {"image", "label"}) returning the
    group's name.
Eval batches then carry "groups": (B, G) one-hot rows times the example's
weight (0 on padding), and every evaluation also reports each group's
metrics and the largest gap between groups (`grouped.py`).
"""
import importlib

import numpy as np

from bigmodel_jax import config_loader
from bigmodel_jax.errors import ConfigError


def is_function(spec: str) -> bool:
  return ":" in spec


def function(spec: str):
  """The function named by "FILE.py:NAME" or "module:NAME"."""
  where, _, name = spec.rpartition(":")
  if where.endswith(".py"):
    module, _ = config_loader.load_module(where)
  else:
    try:
      module = importlib.import_module(where)
    except ImportError as e:
      raise ConfigError(f"input.groups={spec!r}: cannot import {where!r} "
                        f"({e}).") from None
  if not callable(getattr(module, name, None)):
    raise ConfigError(f"input.groups={spec!r}: {where} has no function "
                      f"{name!r}.")
  return getattr(module, name)


class Groups:
  """Each example's group id in a split, and the group names (sorted)."""

  def __init__(self, values):
    values = [str(v) for v in values]
    self.names = sorted(set(values))
    index = {n: i for i, n in enumerate(self.names)}
    self.ids = np.array([index[v] for v in values], np.int32)

  @classmethod
  def of_records(cls, spec: str, records):
    """The groups `input.groups`'s function gives `records` (dicts)."""
    fn = function(spec)
    return cls(fn(record) for record in records)

  def masks(self, indices, weights) -> np.ndarray:
    """(B, G) float32: row i is example indices[i]'s group, times its
    weight."""
    one_hot = self.ids[np.asarray(indices)][:, None] == np.arange(
        len(self.names))
    return one_hot.astype(np.float32) * np.asarray(weights,
                                                   np.float32)[:, None]


