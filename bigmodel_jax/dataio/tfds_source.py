"""TFDS datasets read with `tfds.data_source` (array_record, no TensorFlow).

A dataset `tfds_prepare` knows (tiny_shakespeare) is prepared on first use
in the data dir (`input.data_dir`, else $TFDS_DATA_DIR, else TFDS's default
~/tensorflow_datasets); others need `tfds build` once.
"""
import os

import tensorflow_datasets as tfds

from bigmodel_jax.dataio import tfds_prepare
from bigmodel_jax.errors import NotFound


def _data_dir(data_dir: str | None) -> str:
  return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or
                            "~/tensorflow_datasets")


def source(name: str, split: str, data_dir: str | None):
  """`tfds.data_source` of a prepared split (prepared first where we can),
  with a clear error if missing."""
  data_dir = _data_dir(data_dir)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except Exception as e:  # TFDS raises several types for a missing dataset.
    if name in tfds_prepare.BUILDERS and not _prepared(name, data_dir):
      tfds_prepare.prepare(name, data_dir)
      return tfds.data_source(name, split=split, data_dir=data_dir,
                              download=False)
    raise NotFound(
        f"TFDS dataset {name!r} (split {split!r}) is not prepared in "
        f"{data_dir} ({type(e).__name__}). Prepare it once with `tfds build "
        f"{name} --data_dir DIR` (needs tensorflow and internet; imagenet2012 "
        "needs its manual download), then point TFDS_DATA_DIR or "
        "--config.input.data_dir at DIR.") from e


def _prepared(name: str, data_dir: str) -> bool:
  return os.path.isdir(os.path.join(data_dir, name))


def load_text(name: str, split: str, data_dir: str | None) -> str:
  """The concatenated `text` feature of a TFDS split, with a clear error."""
  data = source(name, split, data_dir)
  return "".join(data[i]["text"].decode("utf-8") for i in range(len(data)))
