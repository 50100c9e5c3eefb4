"""Stratified k-fold cross-validation of any labelled split.

  folds = stratified_folds(labels, k=5, seed=0)   # k sorted index arrays

Each class's examples are shuffled by (seed, class) and dealt round-robin
into the k folds, so every fold holds each class in proportion (sizes
differ by at most one per class) and the folds are disjoint and cover the
split. Fold `fold` is the validation data of cross-validation run `fold`;
the others are its training data. The test split is never part of it.
"""
import numpy as np

from bigmodel_jax.errors import ConfigError


def stratified_folds(labels, k: int, seed: int) -> list[np.ndarray]:
  labels = np.asarray(labels)
  if not isinstance(k, int) or k < 2:
    raise ConfigError(f"input.num_folds={k!r} is not allowed: a whole "
                      "number >= 2.")
  folds = [[] for _ in range(k)]
  for c in np.unique(labels):
    members = np.random.default_rng([seed, int(c)]).permutation(
        np.flatnonzero(labels == c))
    for i in range(k):
      folds[i].append(members[i::k])
  return [np.sort(np.concatenate(f)) for f in folds]


def fold_split(labels, k: int, fold: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """(training indices, validation indices) of cross-validation run
  `fold` of `k`."""
  if not isinstance(fold, int) or not 0 <= fold < k:
    raise ConfigError(f"input.fold={fold!r} is not in 0..{k - 1}.")
  folds = stratified_folds(labels, k, seed)
  return (np.sort(np.concatenate(folds[:fold] + folds[fold + 1:])),
          folds[fold])


class Subset:
  """The examples `indices` of an indexable source."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]
