"""TFDS datasets read with `tfds.data_source` (array_record, no TensorFlow)."""
import os

import tensorflow_datasets as tfds

from bigmodel_jax.errors import NotFound


def source(name: str, split: str, data_dir: str | None):
  """`tfds.data_source` of a prepared split, with a clear error if missing."""
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except Exception as e:  # TFDS raises several types for a missing dataset.
    where = data_dir or "the default TFDS data dir (~/tensorflow_datasets)"
    raise NotFound(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where} "
        f"({type(e).__name__}). Prepare it once with `tfds build {name} "
        "--data_dir DIR` (needs tensorflow and internet; imagenet2012 needs "
        "its manual download), then point TFDS_DATA_DIR or "
        "--config.input.data_dir at DIR.") from e


def load_text(name: str, split: str, data_dir: str | None) -> str:
  """The concatenated `text` feature of a TFDS split, with a clear error."""
  data = source(name, split, data_dir)
  return "".join(data[i]["text"].decode("utf-8") for i in range(len(data)))
