"""Labelled-image batches from any indexable source; the base of image inputs.

A source is a sequence of (HWC uint8 image, int label). Training batches are
drawn from endless reshuffled epochs and are a pure function of (seed, step),
so a resumed run sees the batches an uninterrupted one would; each process
takes its slice of the global batch and preprocesses only that. Evaluation
covers the eval split exactly once, in order, padding the last batch with
zero-weight examples.

An example's id is "SPLIT:INDEX" in the split it comes from (a fold's
examples keep their train-split ids): `input.label_overrides` uses them.
`input.groups` ("FILE.py:NAME", a function of {"image", "label"}) adds each
eval example's group to eval batches (`dataio/groups.py`).
"""
import concurrent.futures

import jax
import numpy as np

from bigmodel_jax.dataio import folds, groups, image_ops, label_overrides
from bigmodel_jax.dataio.common import (SplitCache, StepInput, eval_positions,
                                      save_class_names, shuffled_indices)
from bigmodel_jax.errors import ConfigError


def batch_spec(config) -> dict:
  """Shapes and dtypes of a global training batch, from the config alone."""
  batch = config.batch_size
  spec = {"inputs": jax.ShapeDtypeStruct(
              (batch, config.image_size, config.image_size, config.channels),
              np.float32),
          "targets": jax.ShapeDtypeStruct((batch,), np.int32)}
  if config.get("mixup_alpha"):
    spec["mix_targets"] = jax.ShapeDtypeStruct((batch,), np.int32)
    spec["mix"] = jax.ShapeDtypeStruct((batch,), np.float32)
  return spec


def units(config) -> tuple[str, int]:
  """What throughput counts, and how many of it a global batch holds."""
  return "images", config.batch_size


load_tokenizer = None  # Images have no text.


def reader(config):
  """Encoded image bytes (PNG, JPEG, ...) -> the model's input (H, W, C)
  float32, made by the input's evaluation preprocessing; ValueError naming
  what is wrong (serving, `sample --image`)."""
  size, channels = config.image_size, config.channels
  pp = image_ops.parse(config.eval_pp)

  def read(data: bytes) -> np.ndarray:
    image = image_ops.decoded(data, channels)
    pixels = pp(image, np.random.default_rng(0))
    if pixels.shape != (size, size, channels):
      raise ValueError(
          f"An image of {image.shape[1]}x{image.shape[0]} becomes "
          f"{pixels.shape} after the model's preprocessing; it needs "
          f"{(size, size, channels)}.")
    return pixels.astype(np.float32)
  return read


def _relabelled(source, config, class_names):
  """`source` with `input.label_overrides` applied to the splits they name."""
  overrides = label_overrides.load(config.label_overrides, class_names)
  by_split = {}
  for example, label in overrides.items():
    by_split.setdefault(example.rpartition(":")[0], {})[example] = label
  made = {split: label_overrides.Relabelled(source(split), split, o)
          for split, o in by_split.items()}
  return lambda split: made[split] if split in made else source(split)


def _folded(source, config):
  """`source` with the train split cut into `input.num_folds` stratified
  folds: fold `input.fold` is the eval split, the others train."""
  whole = source(config.train_split)
  labels = [int(whole[i][1]) for i in range(len(whole))]
  train, held_out = folds.fold_split(labels, config.num_folds, config.fold,
                                     config.get("split_seed", 0))
  parts = {config.train_split: folds.Subset(whole, train),
           config.eval_split: folds.Subset(whole, held_out)}
  return lambda split: parts[split] if split in parts else source(split)


def _without_classes(source, config):
  """`source` whose train split lacks the examples labelled
  `input.train_without_classes` (unseen classes: anomaly detection)."""
  whole, unseen = source(config.train_split), set(config.train_without_classes)
  kept = [i for i in range(len(whole)) if int(whole[i][1]) not in unseen]
  train = folds.Subset(whole, kept)
  return lambda split: train if split == config.train_split else source(split)


class ImageInput(StepInput):
  """Train and eval batches of one process; subclasses supply `source`, a
  function from a split name to its (image, label) source."""

  def __init__(self, config, source, class_names, *, seed: int,
               process_index: int, process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    if config.get("label_overrides"):
      source = _relabelled(source, config, class_names)
    if config.get("num_folds"):  # Cross-validation: folds of the train split.
      source = _folded(source, config)
    if config.get("train_without_classes"):
      source = _without_classes(source, config)
    self.sources = SplitCache(source)
    self.train = self.sources[config.train_split]
    self.sources[config.eval_split]  # Missing data fails now, not mid-run.
    self.class_names = list(class_names)
    self._groups = SplitCache(self._groups_of)
    self.train_pp = image_ops.parse(config.train_pp)
    self.eval_pp = image_ops.parse(config.eval_pp)
    workers = config.get("num_workers", 0)
    self._pool = (concurrent.futures.ThreadPoolExecutor(workers)
                  if workers else None)

  def model_fields(self) -> dict:
    return {"num_classes": len(self.class_names)}

  def _groups_of(self, split: str):
    spec = self.config.get("groups")
    if not spec:
      return None
    if not groups.is_function(spec):
      raise ConfigError(f"input.groups={spec!r}: images have no columns; "
                        "name a function (FILE.py:NAME of the record).")
    source = self.sources[split]
    return groups.Groups.of_records(spec, (
        dict(zip(("image", "label"), source[i])) for i in range(len(source))))

  def group_names(self, split: str | None = None) -> list[str] | None:
    found = self._groups[split or self.config.eval_split]
    return found.names if found else None

  def example_ids(self, split: str | None = None) -> list[str]:
    """The ids of a split's examples, in eval order."""
    split = split or self.config.eval_split
    source = self.sources[split]
    if isinstance(source, folds.Subset):  # A fold of the train split.
      return [f"{self.config.train_split}:{i}" for i in source.indices]
    return [f"{split}:{i}" for i in range(len(source))]

  def _examples(self, source, indices, pp, rngs) -> tuple:
    def one(i, rng):
      image, label = source[int(i)]
      return pp(image, rng), label
    pairs = (self._pool.map(one, indices, rngs) if self._pool
             else map(one, indices, rngs))
    images, labels = zip(*pairs)
    return np.stack(images).astype(np.float32), np.asarray(labels, np.int32)

  def train_size(self) -> int:
    return len(self.train)

  def train_labels(self) -> np.ndarray:
    labels = getattr(self.train, "labels", None)  # Without decoding images.
    if not (isinstance(labels, np.ndarray) and len(labels) == len(self.train)):
      labels = [self.train[i][1] for i in range(len(self.train))]
    return np.asarray(labels)

  def train_examples(self, indices: np.ndarray, step: int) -> dict:
    """The training images at `indices`, augmented as at step `step`."""
    rngs = [np.random.default_rng([self.seed, step, int(i)]) for i in indices]
    images, labels = self._examples(self.train, indices, self.train_pp, rngs)
    return {"inputs": images, "targets": labels}

  def train_batch(self, step: int) -> dict:
    indices = shuffled_indices(len(self.train), self.config.batch_size,
                               self.seed, step)
    batch = self.train_examples(indices[self._rows], step)
    alpha = self.config.get("mixup_alpha")
    if alpha:  # Mixes each example with its neighbour in the local batch.
      images, labels = batch["inputs"], batch["targets"]
      share = np.random.default_rng([self.seed, step, 1 << 20]).beta(alpha,
                                                                    alpha)
      batch["inputs"] = share * images + (1 - share) * np.roll(images, 1, 0)
      batch["mix_targets"] = np.roll(labels, 1)
      batch["mix"] = np.full(labels.shape, share, np.float32)
    return batch

  def num_eval_batches(self, split: str | None = None) -> int:
    source = self.sources[split or self.config.eval_split]
    return -(-len(source) // self.config.batch_size)

  def eval_batches(self, split: str | None = None):
    """A whole split once, in order; padding has weight 0."""
    split = split or self.config.eval_split
    source = self.sources[split]
    for indices, weights in eval_positions(len(source),
                                           self.config.batch_size, self._rows):
      rngs = [np.random.default_rng([self.seed, int(i)]) for i in indices]
      images, targets = self._examples(source, indices, self.eval_pp, rngs)
      batch = {"inputs": images, "targets": targets, "weights": weights}
      if self._groups[split]:
        batch["groups"] = self._groups[split].masks(indices, weights)
      yield batch

  def save(self, workdir: str) -> None:
    save_class_names(workdir, self.class_names)
