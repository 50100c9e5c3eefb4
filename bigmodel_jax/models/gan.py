"""Generative adversarial networks: MLP or DCGAN generator and
discriminator, optionally class-conditional.

  generator:     latent z (B, latent_dim)[, labels (B,)] -> images
                 (B, H, W, C) in [-1, 1]
  discriminator: images (B, H, W, C)[, labels (B,)] -> real/fake logits (B,)

kind="mlp": each network is `num_layers` hidden layers of `hidden_dim`
units with LeakyReLU(0.2) and a linear output (tanh for the generator).
kind="dcgan" (Radford et al. 2016, without batch normalisation): the
generator projects z to a (H/4, W/4, 2 * features) map and doubles it
twice with 4x4 stride-2 transposed convolutions (ReLU; tanh out); the
discriminator mirrors it with stride-2 convolutions (LeakyReLU(0.2)) and a
linear output. Both kinds use DCGAN's N(0, 0.02) initialisation.

`conditional=True` (a class-conditional GAN, `num_classes` from the data):
the generator reads z joined with a learned embedding of the label, the
discriminator adds the projection of its features on the label's
embedding (Miyato & Koyama 2018). An unconditional model ignores labels.
The parameters are {"generator": ..., "discriminator": ...}; the "gan" task
(tasks/gan.py) updates them in turn.

  model = gan.make(gan.model_config("dcgan", image_size=8, channels=1))
  images = model.apply({"params": params}, z, labels, method="generate")
"""
import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax import families
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.layers.linear import Linear, normal_init

VARIANTS = {
    "mlp": dict(hidden_dim=256, num_layers=2),
    "mlp-small": dict(hidden_dim=64, num_layers=2),
    "dcgan": dict(kind="dcgan", hidden_dim=256, num_layers=1),
    "dcgan-cond": dict(kind="dcgan", hidden_dim=256, num_layers=1,
                       conditional=True),
}
CONV_NAMES = (None, None, "conv_in", "conv_out")


@dataclasses.dataclass(frozen=True)
class Config:
  """The GAN fields and their defaults (the only ones): see the module doc."""
  image_size: int  # Of the input's images (square).
  channels: int
  hidden_dim: int  # From the variant.
  num_layers: int
  kind: str = "mlp"  # "mlp" or "dcgan".
  features: int = 64  # dcgan: the channels of the largest feature map.
  conditional: bool = False
  num_classes: int | None = None  # From the data; read when conditional.
  latent_dim: int = 64
  dtype: Any = "float32"
  param_dtype: Any = "float32"


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("gan", Config, VARIANTS, variant, overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  cfg = Config(**families.config_fields(config, Config,
                                        {"kind": ("mlp", "dcgan")}))
  if cfg.kind == "dcgan" and cfg.image_size % 4:
    raise ConfigError(f"model.image_size={cfg.image_size}: a DCGAN doubles "
                      "a quarter-size map twice; it needs a multiple of 4.")
  if cfg.conditional and not cfg.num_classes:
    raise ConfigError("model.conditional needs model.num_classes (an input "
                      "with labels fills it).")
  return Model(cfg)


def _conv_kwargs(cfg: Config, name: str) -> dict:
  return dict(kernel_size=(4, 4), strides=(2, 2), padding="SAME",
              dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
              kernel_init=nn.with_logical_partitioning(
                  nn.initializers.normal(0.02), CONV_NAMES),
              bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                     ("conv_out",)))


def _linear(cfg: Config, features: int, names: tuple, name: str):
  return Linear((features,), names, 0.02, True, cfg.dtype, cfg.param_dtype,
                name=name)


def _hidden(cfg: Config, x, in_name: str):
  """The MLP kind's hidden layers (LeakyReLU), inside a compact method:
  (features, their axis name). Axis names alternate, so no kernel repeats a
  mesh axis."""
  names = [in_name] + ["mlp" if i % 2 == 0 else "embed"
                       for i in range(cfg.num_layers)]
  for i in range(cfg.num_layers):
    x = nn.leaky_relu(_linear(cfg, cfg.hidden_dim, (names[i], names[i + 1]),
                              f"hidden_{i}")(x), 0.2)
  return x, names[-1]


def _label_embedding(cfg: Config, size: int, labels):
  return nn.Embed(cfg.num_classes, size, dtype=cfg.dtype,
                  param_dtype=cfg.param_dtype, name="label_embedding",
                  embedding_init=normal_init(0.02, ("classes", "embed")))(
                      labels)


class Generator(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, z, labels):
    """Latents (and labels) -> images in [-1, 1]."""
    cfg = self.config
    if cfg.conditional:
      z = jnp.concatenate([z, _label_embedding(cfg, cfg.latent_dim, labels)],
                          -1)
    z = z.astype(cfg.dtype)
    if cfg.kind == "dcgan":
      side, width = cfg.image_size // 4, 2 * cfg.features
      x = nn.relu(_linear(cfg, side * side * width, ("embed", "patch"),
                          "project")(z))
      x = x.reshape(z.shape[0], side, side, width)
      x = nn.relu(nn.ConvTranspose(cfg.features,
                                   **_conv_kwargs(cfg, "deconv_0"))(x))
      x = nn.ConvTranspose(cfg.channels, **_conv_kwargs(cfg, "deconv_1"))(x)
    else:
      x, last = _hidden(cfg, z, "embed")
      pixels = cfg.image_size * cfg.image_size * cfg.channels
      x = _linear(cfg, pixels, (last, "patch"), "out")(x)
    return jnp.tanh(x.astype(jnp.float32)).reshape(
        z.shape[0], cfg.image_size, cfg.image_size, cfg.channels)


class Discriminator(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, images, labels):
    """Images (and labels) -> real/fake logits (B,)."""
    cfg = self.config
    x = images.astype(cfg.dtype)
    if cfg.kind == "dcgan":
      x = nn.leaky_relu(nn.Conv(cfg.features,
                                **_conv_kwargs(cfg, "conv_0"))(x), 0.2)
      x = nn.leaky_relu(nn.Conv(2 * cfg.features,
                                **_conv_kwargs(cfg, "conv_1"))(x), 0.2)
      x = nn.leaky_relu(_linear(cfg, cfg.hidden_dim, ("patch", "mlp"),
                                "hidden")(x.reshape(x.shape[0], -1)), 0.2)
      last = "mlp"
    else:
      x, last = _hidden(cfg, x.reshape(x.shape[0], -1), "patch")
    logits = _linear(cfg, 1, (last, "classes"), "out")(x)[:, 0]
    if cfg.conditional:  # The projection discriminator's class term.
      logits = logits + jnp.sum(
          _label_embedding(cfg, x.shape[-1], labels) * x, -1)
    return logits.astype(jnp.float32)


class Model(nn.Module):
  """`generate(z, labels)`, `discriminate(images, labels)` (labels: None,
  or read when conditional); calling it does both."""
  config: Config

  def setup(self):
    self.generator = Generator(self.config)
    self.discriminator = Discriminator(self.config)

  def generate(self, z, labels=None):
    return self.generator(z, labels)

  def discriminate(self, images, labels=None):
    return self.discriminator(images, labels)

  def __call__(self, images, z, labels=None, *, train: bool = False):
    """{"logits": the discriminator's on `images`, "images": generated
    from the latents `z`}, both with `labels` when conditional."""
    del train  # No dropout or batch statistics.
    return {"logits": self.discriminate(images, labels),
            "images": self.generate(z, labels)}


def default_task(config) -> str:
  del config
  return "gan"


num_params = families.num_params


def flops_per_item(model: Model, params, args) -> float:
  """About 6 x parameters per image: each network's forward and backward."""
  del model, args
  return 6.0 * num_params(params)


load_hf = export_hf = adapt_params = trainable_presets = None  # None yet.


def capabilities(config) -> dict:
  """It generates images from latents (and labels when conditional)."""
  return {"image_generation": config.latent_dim,
          **({"class_conditional": None} if config.get("conditional")
             else {})}
