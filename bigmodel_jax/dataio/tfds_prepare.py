"""Prepares a missing TFDS dataset from its public file, without TensorFlow.

  tfds_prepare.prepare("tiny_shakespeare", data_dir)

TFDS's own builders read their downloads through `tf.io.gfile`, so
`tfds build` needs TensorFlow. For the datasets in `BUILDERS` this writes
the same dataset TFDS would — the same splits, the same array_record files,
`dataset_info.json` and `features.json` in TFDS's formats — with TFDS's
example serializer, so `tfds.data_source` reads it like one TFDS prepared.
Everything is written into a temporary directory renamed at the end: an
interrupted preparation never leaves a half-prepared dataset.
"""
import os
import shutil
import sys

import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from google.protobuf import json_format
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core.proto import dataset_info_pb2

from bigmodel_jax.dataio import downloads

TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def tiny_shakespeare_splits(path: str) -> dict:
  """TFDS's tiny_shakespeare 1.0.0: one text per split, 90 / 5 / 5."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  i = int(len(text) * 0.9)
  train, rest = text[:i], text[i:]
  i = int(len(rest) * 0.5)
  return {"train": [{"text": train}], "validation": [{"text": rest[:i]}],
          "test": [{"text": rest[i:]}]}


# name -> (version, features, splits from the downloaded file).
BUILDERS = {
    "tiny_shakespeare": ("1.0.0",
                         tfds.features.FeaturesDict({"text": tfds.features.Text()}),
                         tiny_shakespeare_splits),
}


def _write(directory: str, name: str, version: str, features, splits: dict):
  serializer = example_serializer.ExampleSerializer(
      features.get_serialized_info())
  info = dataset_info_pb2.DatasetInfo(name=name, version=version,
                                      file_format="array_record")
  for split, examples in splits.items():
    path = os.path.join(directory, f"{name}-{split}.array_record-00000-of-00001")
    writer = ArrayRecordWriter(path, "group_size:1")
    for example in examples:
      writer.write(serializer.serialize_example(
          features.encode_example(example)))
    writer.close()
    info.splits.add(name=split, shard_lengths=[len(examples)],
                    num_bytes=os.path.getsize(path),
                    filepath_template=TEMPLATE)
  with open(os.path.join(directory, "dataset_info.json"), "w") as f:
    f.write(json_format.MessageToJson(info, sort_keys=True))
  features.save_config(directory)


def prepare(name: str, data_dir: str) -> None:
  """Downloads (once) and writes dataset `name` into `data_dir`."""
  version, features, make_splits = BUILDERS[name]
  source = downloads.fetch(name)
  final = os.path.join(data_dir, name, version)
  print(f"preparing {name} {version} in {final}", file=sys.stderr, flush=True)
  partial = f"{final}.incomplete-{os.getpid()}"
  os.makedirs(partial)
  try:
    _write(partial, name, version, features, make_splits(source))
    os.rename(partial, final)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
