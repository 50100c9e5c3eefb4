"""Labelled images from a TFDS dataset by name (mnist, cifar10, imagenet2012...).

Reads with `tfds.data_source` (array_record, random access, no TensorFlow);
each example's "image" and "label" features go through the config's
preprocessing strings (`data/image_ops.py`). Class names come from the
dataset's label feature.
"""
from bigmodel_jax.dataio import images
from bigmodel_jax.dataio import tfds_source

batch_spec = images.batch_spec
units = images.units
load_tokenizer = images.load_tokenizer


class Source:
  """(image, label) pairs of a TFDS data source."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    example = self.source[i]
    return example["image"], int(example["label"])


class Input(images.ImageInput):

  def __init__(self, config, *, seed, process_index, process_count):
    def source(split):
      return Source(tfds_source.source(config.dataset, split,
                                       config.data_dir))
    train = source(config.train_split)
    label = train.source.dataset_info.features["label"]
    super().__init__(config, source, label.names, seed=seed,
                     process_index=process_index, process_count=process_count)
