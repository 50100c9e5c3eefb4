"""Generative adversarial network: an MLP generator and discriminator.

  generator:     latent z (B, latent_dim) -> images (B, H, W, C) in [-1, 1]
  discriminator: images (B, H, W, C) -> real/fake logits (B,)

Each network is `num_layers` hidden layers of `hidden_dim` units with
LeakyReLU(0.2), DCGAN's N(0, 0.02) initialisation, and a linear output (tanh
for the generator). The parameters are {"generator": ..., "discriminator":
...}; the "gan" task (tasks/gan.py) updates them in turn.

  model = gan.make(gan.model_config("mlp", image_size=8, channels=1))
  images = model.apply({"params": params}, z, method="generate")
"""
import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax import families
from bigmodel_jax.layers.linear import Linear

VARIANTS = {
    "mlp": dict(hidden_dim=256, num_layers=2),
    "mlp-small": dict(hidden_dim=64, num_layers=2),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The GAN fields and their defaults (the only ones): see the module doc."""
  image_size: int  # Of the input's images (square).
  channels: int
  hidden_dim: int  # From the variant.
  num_layers: int
  latent_dim: int = 64
  dtype: Any = "float32"
  param_dtype: Any = "float32"


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("gan", Config, VARIANTS, variant, overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  return Model(Config(**families.config_fields(config, Config)))


class MLP(nn.Module):
  """Hidden layers with LeakyReLU, then a linear output of `features`."""
  config: Config
  features: int
  in_name: str
  out_name: str

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    # Alternate the hidden axes' names so no kernel repeats a mesh axis.
    names = [self.in_name] + ["mlp" if i % 2 == 0 else "embed"
                              for i in range(cfg.num_layers)]
    for i in range(cfg.num_layers):
      x = Linear((cfg.hidden_dim,), (names[i], names[i + 1]), 0.02,
                        True, cfg.dtype, cfg.param_dtype, name=f"hidden_{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    return Linear((self.features,), (names[-1], self.out_name), 0.02,
                         True, cfg.dtype, cfg.param_dtype, name="out")(x)


class Model(nn.Module):
  """`generate(z)`, `discriminate(images)`; calling it does both."""
  config: Config

  def setup(self):
    cfg = self.config
    pixels = cfg.image_size * cfg.image_size * cfg.channels
    self.generator = MLP(cfg, pixels, "embed", "patch")
    self.discriminator = MLP(cfg, 1, "patch", "classes")

  def generate(self, z):
    cfg = self.config
    images = jnp.tanh(self.generator(z).astype(jnp.float32))
    return images.reshape(z.shape[0], cfg.image_size, cfg.image_size,
                          cfg.channels)

  def discriminate(self, images):
    flat = images.reshape(images.shape[0], -1)
    return self.discriminator(flat)[:, 0].astype(jnp.float32)

  def __call__(self, images, z, *, train: bool = False):
    """{"logits": the discriminator's on `images`, "images": generated
    from the latents `z`}."""
    del train  # No dropout or batch statistics.
    return {"logits": self.discriminate(images), "images": self.generate(z)}


def default_task(config) -> str:
  del config
  return "gan"


num_params = families.num_params


def flops_per_item(model: Model, params, args) -> float:
  """About 6 x parameters per image: each network's forward and backward."""
  del model, args
  return 6.0 * num_params(params)


load_hf = export_hf = adapt_params = trainable_presets = None  # None yet.
capabilities = None  # Nothing beyond its call.
