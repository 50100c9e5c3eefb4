"""Autoencoders: a variational autoencoder (Kingma & Welling 2014) or a
plain one, with MLP or convolutional encoder and decoder.

  encoder: images (B, H, W, C) in [0, 1] -> mean, log-variance (B, latent_dim)
  decoder: latents (B, latent_dim) -> pixel logits (B, H, W, C)

The decoder is a Bernoulli likelihood per pixel (its logits); the "vae" task
(tasks/vae.py) turns the outputs into the ELBO. A VAE samples its latent
with the reparameterisation z = mean + exp(logvar / 2) * eps: eps from the
"dropout" rng in training, from a fixed key in evaluation (one sample, the
same for every batch), so scores are deterministic. A plain autoencoder
(`variational=False`) decodes the mean and has no log-variance.

  kind="mlp":  `num_layers` ReLU layers of `hidden_dim` each way.
  kind="conv": 3x3 stride-2 ReLU convolutions of `conv_features` channels
               (each halves the image), a ReLU layer of `hidden_dim`; the
               decoder mirrors it with transposed convolutions. The image
               size must be divisible by 2 ** len(conv_features).

  model = autoencoder.make(autoencoder.model_config("conv", image_size=8,
                                                    channels=1))
  out = model.apply(v, images)   # {"logits", "mean"[, "logvar"]}
  images = model.apply(v, z, method="generate")   # sigmoid of the logits
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax import families
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.layers.linear import Linear

VARIANTS = {
    "mlp": dict(kind="mlp"),
    "conv": dict(kind="conv"),
    "ae-mlp": dict(kind="mlp", variational=False),
    "ae-conv": dict(kind="conv", variational=False),
}
CONV_NAMES = (None, None, "conv_in", "conv_out")


@dataclasses.dataclass(frozen=True)
class Config:
  """The autoencoder fields and their defaults (the only ones): see the
  module doc."""
  image_size: int  # From the data (square images).
  channels: int
  kind: str  # From the variant: "mlp" or "conv".
  variational: bool = True
  latent_dim: int = 8
  hidden_dim: int = 256
  num_layers: int = 2
  conv_features: tuple = (32, 64)
  dtype: Any = "float32"
  param_dtype: Any = "float32"


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("autoencoder", Config, VARIANTS, variant,
                                 overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  fields = families.config_fields(config, Config,
                                  {"kind": ("mlp", "conv")})
  cfg = Config(**{**fields, "conv_features": tuple(fields["conv_features"])})
  scale = 2 ** len(cfg.conv_features)
  if cfg.kind == "conv" and cfg.image_size % scale:
    raise ConfigError(f"model.image_size={cfg.image_size}: a convolutional "
                      f"autoencoder with {len(cfg.conv_features)} stride-2 "
                      f"layers needs a multiple of {scale}.")
  return Model(cfg)


def _linear(cfg: Config, features: int, names: tuple, name: str):
  return Linear((features,), names, init="lecun_normal", use_bias=True,
                dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)


def _conv_kwargs(cfg: Config, name: str) -> dict:
  return dict(kernel_size=(3, 3), strides=(2, 2), padding="SAME",
              dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
              kernel_init=nn.with_logical_partitioning(
                  nn.initializers.lecun_normal(), CONV_NAMES),
              bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                     ("conv_out",)))


def _hidden_layers(cfg: Config, x, first: str):
  """`num_layers` ReLU layers of `hidden_dim` (inside a compact method):
  (output, its axis name). The axis names alternate, so no kernel repeats
  a mesh axis."""
  names = [first] + ["mlp" if i % 2 == 0 else "embed"
                     for i in range(cfg.num_layers)]
  for i in range(cfg.num_layers):
    x = nn.relu(_linear(cfg, cfg.hidden_dim, (names[i], names[i + 1]),
                        f"hidden_{i}")(x))
  return x, names[-1]


class Encoder(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, images):
    cfg = self.config
    x = images.astype(cfg.dtype)
    if cfg.kind == "conv":
      for i, features in enumerate(cfg.conv_features):
        x = nn.relu(nn.Conv(features, **_conv_kwargs(cfg, f"conv_{i}"))(x))
      x = x.reshape(x.shape[0], -1)
      x = nn.relu(_linear(cfg, cfg.hidden_dim, ("patch", "mlp"), "hidden")(x))
      last = "mlp"
    else:
      x, last = _hidden_layers(cfg, x.reshape(x.shape[0], -1), "patch")
    size = 2 * cfg.latent_dim if cfg.variational else cfg.latent_dim
    out = _linear(cfg, size, (last, "latent"), "latent")(x).astype(
        jnp.float32)
    return (jnp.split(out, 2, -1) if cfg.variational else (out, None))


class Decoder(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, z):
    cfg = self.config
    x = z.astype(cfg.dtype)
    if cfg.kind == "conv":
      x = nn.relu(_linear(cfg, cfg.hidden_dim, ("latent", "mlp"), "hidden")(x))
      side = cfg.image_size // 2 ** len(cfg.conv_features)
      first = cfg.conv_features[-1]
      x = nn.relu(_linear(cfg, side * side * first, ("mlp", "patch"),
                          "project")(x))
      x = x.reshape(x.shape[0], side, side, first)
      widths = list(reversed(cfg.conv_features[:-1])) + [cfg.channels]
      for i, features in enumerate(widths):
        x = nn.ConvTranspose(features, **_conv_kwargs(cfg, f"deconv_{i}"))(x)
        x = nn.relu(x) if i < len(widths) - 1 else x
      return x.astype(jnp.float32)
    x, last = _hidden_layers(cfg, x, "latent")
    pixels = cfg.image_size * cfg.image_size * cfg.channels
    x = _linear(cfg, pixels, (last, "patch"), "out")(x)
    return x.astype(jnp.float32).reshape(z.shape[0], cfg.image_size,
                                         cfg.image_size, cfg.channels)


class Model(nn.Module):
  """`encode`, `decode` (logits), `generate` (pixels); the call encodes,
  samples (VAE) and decodes."""
  config: Config

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def encode(self, images):
    return self.encoder(images)

  def decode(self, z):
    return self.decoder(z)

  def generate(self, z, labels=None):
    """Pixels in [0, 1] decoded from latents (labels: not read)."""
    del labels
    return jax.nn.sigmoid(self.decoder(z))

  def __call__(self, images, *, train: bool = False):
    """{"logits": the reconstruction's pixel logits, "mean"[, "logvar"]:
    the latent posterior}."""
    mean, logvar = self.encoder(images)
    if logvar is None:
      return {"logits": self.decoder(mean), "mean": mean}
    rng = self.make_rng("dropout") if train else jax.random.key(0)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
    return {"logits": self.decoder(z), "mean": mean, "logvar": logvar}


def default_task(config) -> str:
  del config
  return "vae"


num_params = families.num_params


flops_per_item = families.xla_flops_per_item


load_hf = export_hf = adapt_params = trainable_presets = None  # None exist.


def capabilities(config) -> dict:
  """It reads images and generates them from latents."""
  return {"pixels": None, "image_generation": config.latent_dim}
