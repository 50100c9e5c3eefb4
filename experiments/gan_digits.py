"""GANs on scikit-learn's 8x8 digits (ships offline): a DCGAN, its
class-conditional variant, and the MLP GAN.

  python -m bigmodel_jax.train --config experiments/gan_digits.py:cpu \\
      --workdir runs/gan_digits
  # Quality measured by a trained digits classifier every 500 steps
  # (Fréchet distance of its features, class coverage, confidence):
  python -m bigmodel_jax.train --config experiments/resnet_digits.py:cpu \\
      --workdir runs/resnet_digits
  python -m bigmodel_jax.train \\
      --config experiments/gan_digits.py:cond:runs/resnet_digits \\
      --workdir runs/gan_digits_cond
  python scripts/gan_samples.py --workdir runs/gan_digits_cond --out cond.png

Variants: `cpu` (DCGAN), `cond` (class-conditional DCGAN: the prompt of
a generation names the digit), `mlp` (MLP generator and discriminator).
A second field, a classifier run's workdir, adds the `generated_images`
evaluator (generated/...). The "gan" task alternates discriminator and
generator updates (Adam, b1 = 0.5 as in DCGAN) with the R1 penalty on
real images (weight 10, Mescheder et al. 2018).
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import gan

VARIANTS = {"cpu": "dcgan", "cond": "dcgan-cond", "mlp": "mlp"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, _, classifier = (arg or "cpu").partition(":")
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; use one of "
                     f"{list(VARIANTS)}[:CLASSIFIER_WORKDIR].")
  config = config_blocks.base(total_steps=3000, log_every_steps=100,
                              eval_every_steps=500, checkpoint_every_steps=500)
  config.input = config_blocks.image_input(
      "sklearn_digits", batch_size=64, image_size=8, channels=1,
      train_pp="value_range(-1, 1)", eval_pp="value_range(-1, 1)",
      train_split="train", eval_split="test", test_fraction=0.2)
  config.model = gan.model_config(VARIANTS[variant],
                                  image_size=config.input.image_size,
                                  channels=config.input.channels)
  config.optimizer = config_blocks.adamw(
      learning_rate=2e-4, warmup_steps=10, b1=0.5, weight_decay=0.0,
      grad_clip_norm=1e9)
  config.gan.r1_weight = 10.0  # Without it the discriminator wins (docs).
  if classifier:
    config.evals.generated = ml_collections.ConfigDict(dict(
        name="generated_images", classifier=classifier, split="test",
        num_samples=1000, every_steps=500))
  return config
