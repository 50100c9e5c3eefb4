"""Autoencoders on scikit-learn's 8x8 digits (offline; fixed 80/20 split),
and anomaly detection with one digit never seen in training.

  python -m bigmodel_jax.train --config experiments/vae_digits.py:cpu \\
      --workdir runs/vae_digits
  python scripts/autoencoder_grids.py --workdir runs/vae_digits \\
      --out vae_digits.png
  # Digit 9 held out as the anomaly; scored by negative ELBO and
  # reconstruction error, and a classifier's max-softmax baseline:
  python -m bigmodel_jax.train --config experiments/vae_digits.py:cpu:9 \\
      --workdir runs/vae_anomaly9
  python -m bigmodel_jax.train --config experiments/vae_digits.py:classifier:9 \\
      --workdir runs/classifier_anomaly9

Variants: `cpu` (MLP VAE), `conv` (convolutional VAE), `ae` (a plain
convolutional autoencoder), `beta4` (an MLP beta-VAE, beta 4), and
`classifier` (the narrow ResNet-18 of resnet_digits.py; only with a
held-out digit). A second field DIGIT trains without that digit and adds
the anomaly evaluator on the test split (anomaly/...).
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import autoencoder, resnet

AUTOENCODERS = {"cpu": ("mlp", 1.0), "conv": ("conv", 1.0),
                "ae": ("ae-conv", 1.0), "beta4": ("mlp", 4.0)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, _, digit = (arg or "cpu").partition(":")
  if variant not in (*AUTOENCODERS, "classifier"):
    raise ValueError(f"Unknown variant {variant!r}; use one of "
                     f"{[*AUTOENCODERS, 'classifier']}[:DIGIT].")
  if variant == "classifier" and not digit:
    raise ValueError("The classifier is the anomaly baseline: name the "
                     "held-out digit (classifier:9).")
  classifier = variant == "classifier"
  config = config_blocks.base(total_steps=600 if classifier else 3000,
                              log_every_steps=100, eval_every_steps=500,
                              checkpoint_every_steps=500)
  config.input = config_blocks.image_input(
      "sklearn_digits", batch_size=128, image_size=8, channels=1,
      train_pp=("random_crop(8, pad=1)|value_range(-1, 1)" if classifier
                else "value_range(0, 1)"),
      eval_pp="value_range(-1, 1)" if classifier else "value_range(0, 1)",
      train_split="train", eval_split="test", test_fraction=0.2)
  if classifier:
    config.model = resnet.model_config("18", width=16, stem="small")
    config.optimizer = config_blocks.adamw(
        learning_rate=3e-3, warmup_steps=50, weight_decay=0.05)
  else:
    name, config.vae.beta = AUTOENCODERS[variant]
    config.vae.kl_warmup_steps = 500
    config.model = autoencoder.model_config(
        name, image_size=config.input.image_size,
        channels=config.input.channels)
    config.optimizer = config_blocks.adamw(
        learning_rate=2e-3, warmup_steps=100, weight_decay=0.0)
  if digit:
    config.input.train_without_classes = (int(digit),)
    config.evals.anomaly = ml_collections.ConfigDict(dict(
        name="anomaly", split="test", anomalous_classes=[int(digit)],
        every_steps=0))
  return config
