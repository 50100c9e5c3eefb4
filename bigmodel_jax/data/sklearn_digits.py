"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), offline.

The images ship inside scikit-learn, so this input works with no data dir.
The train/test split is fixed (a seeded, class-stratified permutation), the
same for every run and seed; `input.eval_split` picks "test" or "train".
Pixel values 0..16 are scaled to 0..255 like any 8-bit image.
"""
import functools

import numpy as np

from bigmodel_jax.dataio import images
from bigmodel_jax.errors import ConfigError

batch_spec = images.batch_spec
units = images.units
load_tokenizer = images.load_tokenizer


@functools.lru_cache(maxsize=2)
def _dataset(test_fraction: float):
  """(pixels, labels, test mask) of all 1,797 images, loaded once."""
  from sklearn.datasets import load_digits  # Only this input needs sklearn.
  digits = load_digits()
  pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(0)
  test = np.zeros(len(labels), bool)
  for c in np.unique(labels):  # The same fraction of every class.
    members = rng.permutation(np.flatnonzero(labels == c))
    test[members[:round(len(members) * test_fraction)]] = True
  return pixels, labels, test


def split(name: str, test_fraction: float = 0.2):
  """(images uint8 N x 8 x 8 x 1, labels int) of the fixed "train"/"test" split."""
  if name not in ("train", "test"):
    raise ConfigError(f"Unknown digits split {name!r}; use train or test.")
  pixels, labels, test = _dataset(test_fraction)
  keep = test if name == "test" else ~test
  return pixels[keep], labels[keep]


class Source:
  """(image, label) pairs of in-memory arrays."""

  def __init__(self, pixels, labels):
    self.pixels, self.labels = pixels, labels

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return self.pixels[i], int(self.labels[i])


class Input(images.ImageInput):

  def __init__(self, config, *, seed, process_index, process_count):
    super().__init__(
        config, lambda name: Source(*split(name, config.test_fraction)),
        [str(d) for d in range(10)], seed=seed,
        process_index=process_index, process_count=process_count)
