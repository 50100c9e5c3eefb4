"""An image captioner: an image encoder and a GPT decoder that attends to it.

  config.model = captioner.model_config("tiny")
  logits = model.apply(v, tokens, images)          # (B, T, padded vocab)
  logits, cache = model.apply(v, prompt, decode=True, lengths=lengths,
                              images=images, mutable=["cache"])   # prefill

The encoder is a family's model by name (`config.model.image.name`: vit)
called with `features="tokens"`; the decoder is `gpt` with
`cross_attention`, its blocks attending to every encoder token after their
self-attention (the shared blocks' cross-attention). Decoding keeps the
encoder's tokens in the cache ("context", a "batch" axis like the KV
cache): the prefill call that brings `images` encodes them once, and the
decode steps after it attend to what the cache holds, so servers batch
captioning like any decoding (the "image_prompt" part). Without images
(shaping a cache) it encodes a blank image of the input's size.
"""
import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax import families
from bigmodel_jax.errors import ConfigError

VARIANTS = {
    "tiny": dict(
        image=("vit", "Ti/4", dict(emb_dim=64, num_layers=4, num_heads=4,
                                   mlp_dim=128, num_classes=1)),
        text=("gpt", "nano", dict(num_layers=2, num_heads=2, emb_dim=64,
                                  block_size=32, cross_attention=True))),
    "base": dict(  # ViT-B/16 and GPT-2 124M: the VisionEncoderDecoder shape.
        image=("vit", "B/16", dict(num_classes=1)),
        text=("gpt", "124M", dict(cross_attention=True))),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The captioner's fields: its two parts and what the data decides."""
  image: Any  # The encoder's config block.
  text: Any  # The decoder's: a gpt block with cross_attention.
  vocab_size: int  # From the data.
  pad_id: int = families.bounded(None, 0)  # From the data: not scored.
  image_size: int | None = None  # From the data: a blank image of it
  channels: int | None = None  # shapes the decoding cache.


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block of a variant (parts as their families'
  blocks)."""
  if variant not in VARIANTS:
    raise ConfigError(f"Unknown CAPTIONER variant {variant!r}; have "
                      f"{list(VARIANTS)}.")
  fields = {k: families.part_block(*v) for k, v in VARIANTS[variant].items()}
  return families.config_block("captioner", Config, fields, overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  fields = families.config_fields(config, Config)
  if fields["text"].name != "gpt" or not fields["text"].cross_attention:
    raise ConfigError("config.model.text must be a gpt block with "
                      "cross_attention=True (the decoder attends to the "
                      "image).")
  return Model(
      Config(**{**fields, "image": fields["image"].name,
                "text": fields["text"].name}),
      encoder=families.part(fields["image"]),
      decoder=families.part(fields["text"],
                            vocab_size=fields["vocab_size"]))


class Model(nn.Module):
  """(tokens (B, T), images (B, H, W, C)) -> logits (B, T, padded vocab)."""
  config: Config
  encoder: nn.Module
  decoder: nn.Module

  @nn.compact
  def __call__(self, tokens, images=None, *, train: bool = False,
               decode: bool = False, lengths=None):
    """With `decode`, `images` (prefill) are encoded into the cache and
    later steps (images None) attend to the cached encoding."""
    cfg = self.config
    if decode:
      if images is None and not self.has_variable("cache", "context"):
        images = jnp.zeros((tokens.shape[0], cfg.image_size, cfg.image_size,
                            cfg.channels), jnp.float32)  # Shapes the cache.
      encoded = (None if images is None else
                 self.encoder(images, features="tokens"))
      cached = self.variable("cache", "context", nn.with_logical_partitioning(
          jnp.zeros, ("batch", "length", "act_embed")),
          None if encoded is None else encoded.shape, jnp.float32)
      if encoded is not None:
        cached.value = encoded.astype(jnp.float32)
      context = cached.value
    else:
      if images is None:
        raise ConfigError("The captioner needs images (or a decoding cache "
                          "that holds them).")
      context = self.encoder(images, train=train, features="tokens")
    return self.decoder(tokens, train=train, decode=decode, lengths=lengths,
                        context=context)


def default_task(config) -> str:
  del config
  return "captioning"


num_params = families.num_params
flops_per_item = families.xla_flops_per_item
adapt_params = None
trainable_presets = None
load_hf = None  # Hugging Face's equivalent, VisionEncoderDecoderModel,
export_hf = None  # is not mapped yet.


def capabilities(config) -> dict:
  """It decodes with a KV cache (the decoder's block size) from an image
  given at prefill."""
  return {"decode": config.text.block_size, "image_prompt": None,
          "pixels": None}
