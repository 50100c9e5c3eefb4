"""Inception-v3 on scikit-learn's 8x8 digits (offline; fixed 80/20 split),
in `resnet_digits.py:cpu`'s place: the same images, augmentation, steps
and schedule.

  python -m bigmodel_jax.train --config experiments/inception_digits.py:cpu \\
      --workdir runs/inception_digits

Every block of the ImageNet network at a quarter of its channels, after the
"small" stem (stride 1, no pooling): Mixed_5 sees the 8x8 grid, the two
grid reductions bring it to 3x3 and 1x1. The auxiliary head needs a 17x17
grid (ImageNet-sized images) and is off.
"""
import os

import ml_collections

from bigmodel_jax import config_loader
from bigmodel_jax.models import inception

RESNET = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "resnet_digits.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if (arg or "cpu") != "cpu":
    raise ValueError(f"Unknown variant {arg!r}; use cpu.")
  config = config_loader.load(f"{RESNET}:cpu")
  config.model = inception.model_config("v3", width=0.25, stem="small")
  return config
