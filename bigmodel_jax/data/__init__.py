"""Inputs, picked by `config.input.name`: each module exposes `batch_spec`
and `units` (shapes and throughput units from the config alone), `Input`
and, for text, `load_tokenizer`."""
import functools
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from bigmodel_jax.data import prefetch


def process_rows(batch_size: int, process_index: int, process_count: int
                 ) -> slice:
  """This process's rows of every global batch."""
  if batch_size % process_count:
    raise ValueError(f"input.batch_size={batch_size} is not divisible by the "
                     f"{process_count} processes.")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


@functools.lru_cache(maxsize=4)
def _permutation(size: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(size)


def shuffled_indices(size: int, batch_size: int, seed: int, step: int
                     ) -> np.ndarray:
  """Example indices of global batch `step` in a stream of shuffled epochs:
  a pure function of (seed, step), so a resumed run sees the same batches."""
  out, position = [], step * batch_size
  while len(out) < batch_size:
    epoch, offset = divmod(position, size)
    take = _permutation(size, seed, epoch)[offset:
                                           offset + batch_size - len(out)]
    out.extend(take.tolist())
    position += len(take)
  return np.asarray(out)


def eval_positions(size: int, batch_size: int, rows: slice):
  """(indices, weights) of this process's rows of each eval batch, covering
  `size` examples once in order; padding rows repeat example 0 at weight 0."""
  for start in range(0, size, batch_size):
    positions = start + np.arange(rows.start, rows.stop)
    real = positions < size
    yield np.where(real, positions, 0), real.astype(np.float32)


def tfds_split(name: str, split: str, data_dir: str | None):
  """`tfds.data_source` of a prepared split, with a clear error if missing."""
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except Exception as e:  # TFDS raises several types for a missing dataset.
    where = data_dir or "the default TFDS data dir (~/tensorflow_datasets)"
    raise FileNotFoundError(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where}: "
        f"{e}\nPrepare it once with `tfds build {name} --data_dir DIR` "
        "(needs tensorflow and internet; imagenet2012 needs its manual "
        "download), then point TFDS_DATA_DIR or --config.input.data_dir at "
        "DIR.") from e


def save_class_names(workdir: str, class_names: list[str]) -> None:
  """WORKDIR/class_names.json, for tables and predictions after training."""
  with open(os.path.join(workdir, "class_names.json"), "w") as f:
    json.dump(list(class_names), f)


class StepInput:
  """Base of inputs whose batches are a pure function of the step:
  subclasses define `config`, `train_batch(step)` and `eval_batches()`."""

  def train_batches(self, start_step: int):
    """Batches for steps start_step, start_step + 1, ... made ahead in a thread."""
    return prefetch.background(self.train_batch, start_step)

  def num_eval_batches(self) -> int:
    return self.config.eval_steps
