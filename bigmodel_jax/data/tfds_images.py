"""Labelled images from a TFDS dataset by name (mnist, cifar10, imagenet2012...).

Reads with `tfds.data_source` (array_record, random access, no TensorFlow);
each example's "image" and "label" features go through the config's
preprocessing strings (`data/image_ops.py`). Class names come from the
dataset's label feature.
"""
from bigmodel_jax.data import images, tfds_split

batch_spec = images.batch_spec
units = images.units


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
    train = tfds_split(config.dataset, config.train_split, config.data_dir)
    eval_ = tfds_split(config.dataset, config.eval_split, config.data_dir)
    label = train.dataset_info.features["label"]
    super().__init__(config, Source(train), Source(eval_), label.names,
                     seed=seed, process_index=process_index,
                     process_count=process_count)
