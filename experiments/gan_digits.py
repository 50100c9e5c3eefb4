"""An MLP GAN on scikit-learn's 8x8 digits (ships offline).

  python -m bigmodel_jax.train --config experiments/gan_digits.py:cpu \\
      --workdir runs/gan_digits

The "gan" task alternates discriminator and generator updates (Adam,
b1 = 0.5 as in DCGAN); the labels are ignored. `val/d_accuracy` near 0.5
means the discriminator can no longer tell generated digits from real ones.
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import gan


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if (arg or "cpu") != "cpu":
    raise ValueError(f"Unknown variant {arg!r}; use cpu.")
  config = config_blocks.base(total_steps=2000, log_every_steps=100,
                              eval_every_steps=500, checkpoint_every_steps=500)
  config.input = config_blocks.image_input(
      "sklearn_digits", batch_size=64, image_size=8, channels=1,
      train_pp="value_range(-1, 1)", eval_pp="value_range(-1, 1)",
      train_split="train", eval_split="test", test_fraction=0.2)
  config.model = gan.model_config("mlp", image_size=config.input.image_size,
                                  channels=config.input.channels)
  config.optimizer = config_blocks.adamw(
      learning_rate=2e-4, warmup_steps=10, b1=0.5, weight_decay=0.0,
      grad_clip_norm=1e9)
  return config
