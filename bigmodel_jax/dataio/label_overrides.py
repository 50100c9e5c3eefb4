"""Label overrides: corrected labels that classification inputs apply
(`input.label_overrides`), e.g. read back from an annotation round
(`audit_labels import`).

The file is JSON, {example id: label name}; ids are the input's
(`Input.example_ids`: "17" for a text file's 18th example, "train:17" for
an image split's). Every id must exist and every label be a class name, or
the run stops with one line naming the first that is not.
"""
import json

import numpy as np

from bigmodel_jax.errors import ConfigError, NotFound


def load(path: str, class_names: list[str]) -> dict:
  """{example id: class index} of the file at `path`."""
  try:
    with open(path, encoding="utf-8") as f:
      overrides = json.load(f)
  except FileNotFoundError:
    raise NotFound(f"input.label_overrides={path!r} does not exist.") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"input.label_overrides={path!r} is not JSON ({e})."
                      ) from None
  if not isinstance(overrides, dict):
    raise ConfigError(f"input.label_overrides={path!r} must hold an object "
                      "{example id: label name}.")
  index = {name: i for i, name in enumerate(class_names)}
  for example, name in overrides.items():
    if str(name) not in index:
      raise ConfigError(f"input.label_overrides: {example!r} -> {name!r} is "
                        f"not a class; classes are {class_names}.")
  return {str(k): index[str(v)] for k, v in overrides.items()}


def unknown(example: str, some_id: str) -> ConfigError:
  return ConfigError(f"input.label_overrides: no example {example!r} (ids "
                     f"look like {some_id!r}).")


def overridden(labels, ids: list[str], overrides: dict) -> np.ndarray:
  """`labels` (class indices of the examples `ids`) with `overrides`."""
  position = {example: i for i, example in enumerate(ids)}
  labels = np.array(labels, copy=True)
  for example, label in overrides.items():
    if example not in position:
      raise unknown(example, ids[0])
    labels[position[example]] = label
  return labels


class Relabelled:
  """An (image, label) source of split `split` with `overrides` (ids
  "SPLIT:INDEX") applied."""

  def __init__(self, source, split: str, overrides: dict):
    self.source = source
    self.labels = {}
    for example, label in overrides.items():
      name, _, index = example.rpartition(":")
      if name != split or not index.isdigit() or int(index) >= len(source):
        raise unknown(example, f"{split}:0")
      self.labels[int(index)] = label

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    image, label = self.source[i]
    return image, self.labels.get(int(i), label)
