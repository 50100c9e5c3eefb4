"""A narrow ResNet-18 on scikit-learn's 8x8 digits (offline; fixed 80/20 split).

  python -m bigmodel_jax.train --config experiments/resnet_digits.py:cpu \\
      --workdir runs/resnet_digits
  # GroupNorm instead of BatchNorm:
  python -m bigmodel_jax.train --config experiments/resnet_digits.py:cpu \\
      --workdir runs/resnet_digits_gn --config.model.norm=group

The "small" stem (3x3 stride-1 convolution, no max-pool) keeps the 8x8
resolution; BatchNorm statistics are trained, checkpointed and used at eval.
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if (arg or "cpu") != "cpu":
    raise ValueError(f"Unknown variant {arg!r}; use cpu.")
  config = config_blocks.base(total_steps=600, log_every_steps=50,
                        eval_every_steps=200, checkpoint_every_steps=200)
  config.input = config_blocks.image_input(
      "sklearn_digits", batch_size=128, image_size=8, channels=1,
      train_pp="random_crop(8, pad=1)|value_range(-1, 1)",
      eval_pp="value_range(-1, 1)",
      train_split="train", eval_split="test", test_fraction=0.2)
  config.model = resnet.model_config("18", width=16, stem="small")
  config.optimizer = config_blocks.adamw(learning_rate=3e-3, warmup_steps=50,
                                   weight_decay=0.05)
  return config
