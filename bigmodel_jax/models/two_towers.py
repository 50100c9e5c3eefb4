"""Two towers: an image family and a text family composed by name, with
projections into one embedding space (CLIP, big_vision's two_towers).

  config.model = two_towers.model_config("tiny")        # or "clip-B/32", ...
  config.model.text = bert.model_config("tiny", head="none")  # any text family
  out = model.apply(v, images, tokens)   # {"image", "text"}: unit (B, E);
                                         # "scale": the logits' temperature
  vectors = model.apply(v, tokens, embed=True)  # or images: one tower

Each tower is a family's own model (`config.model.image.name`,
`config.model.text.name`) called with `features=True`: the image tower
returns pooled features (B, D); the text tower its hidden states (B, T, D),
pooled here at the first `eos_id` (CLIP; the input's end token) or the
first token (`text_pool="first"`, BERT's [CLS]). A linear projection without
bias maps each into `embed_dim`; `logit_scale` (log of the inverse
temperature, CLIP's 2.659) is learned and its exponent capped at 100.

CLIP is a ViT with `pre_norm`, quick GELU, `norm_eps=1e-5` and no patch
bias, and a causal GPT with biases and quick GELU: `hf/clip.py` imports and
exports `CLIPModel` for towers of that kind and refuses others by name.
"""
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax import families
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.hf import clip as clip_hf, layout as hf_layout
from bigmodel_jax.layers.linear import Linear

_CLIP_IMAGE = dict(pre_norm=True, mlp="quick_gelu", norm_eps=1e-5,
                   patch_bias=False)
_CLIP_TEXT = dict(use_bias=True, mlp="quick_gelu", vocab_multiple=1,
                  block_size=77)


def _clip(image: str, text_layers: int, text_heads: int, text_width: int,
          embed_dim: int) -> dict:
  """A CLIP variant: the ViT size/patch and the text transformer's shape."""
  return dict(
      image=("vit", image, _CLIP_IMAGE),
      text=("gpt", "nano", dict(num_layers=text_layers, num_heads=text_heads,
                                emb_dim=text_width, **_CLIP_TEXT)),
      embed_dim=embed_dim)


# Radford et al. 2021, table 19; "tiny" is the digits recipe's CPU model.
VARIANTS = {
    "tiny": dict(
        image=("vit", "Ti/4", dict(emb_dim=64, num_layers=4, num_heads=4,
                                   mlp_dim=128, **_CLIP_IMAGE)),
        text=("gpt", "nano", dict(num_layers=2, num_heads=2, emb_dim=64,
                                  **_CLIP_TEXT)),
        embed_dim=64),
    "clip-B/32": _clip("B/32", 12, 8, 512, 512),
    "clip-B/16": _clip("B/16", 12, 8, 512, 512),
    "clip-L/14": _clip("L/14", 12, 12, 768, 768),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The two-tower fields and their defaults: see the module doc."""
  image: Any  # The image tower's config block (with its family's name).
  text: Any  # The text tower's (its vocab_size: `vocab_size`).
  vocab_size: int  # From the data.
  embed_dim: int
  eos_id: int | None = families.bounded(None, 0)  # From the data.
  text_pool: str = "eos"  # "eos" or "first".
  logit_scale_init: float = math.log(1 / 0.07)


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block of a variant (towers as their families'
  blocks)."""
  if variant not in VARIANTS:
    raise ConfigError(f"Unknown TWO_TOWERS variant {variant!r}; have "
                      f"{list(VARIANTS)}.")
  fields = dict(VARIANTS[variant])
  fields["image"] = families.part_block(*fields["image"])
  fields["text"] = families.part_block(*fields["text"])
  return families.config_block("two_towers", Config, fields, overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  fields = families.config_fields(config, Config,
                                  {"text_pool": ("eos", "first")})
  if fields["text_pool"] == "eos" and fields.get("eos_id") is None:
    raise ConfigError("config.model.text_pool='eos' needs model.eos_id (the "
                      "input's end token), or use text_pool='first'.")
  return Model(
      Config(**{**fields, "image": fields["image"].name,
                "text": fields["text"].name}),
      image_tower=families.part(fields["image"], num_classes=1),  # No head.
      text_tower=families.part(fields["text"],
                               vocab_size=fields["vocab_size"]))


def _unit(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class Model(nn.Module):
  """(images (B, H, W, C), tokens (B, T)) -> {"image", "text": unit (B, E),
  "scale"}; with `embed` and one input, that tower's unit vectors."""
  config: Config
  image_tower: nn.Module
  text_tower: nn.Module

  def setup(self):
    cfg = self.config
    self.image_proj = Linear((cfg.embed_dim,), ("embed", None),
                             self.image_tower.config.emb_dim ** -0.5)
    self.text_proj = Linear((cfg.embed_dim,), ("embed", None),
                            self.text_tower.config.emb_dim ** -0.5)
    self.logit_scale = self.param(
        "logit_scale", nn.with_logical_partitioning(
            nn.initializers.constant(cfg.logit_scale_init), ()), ())

  def embed_images(self, images, train: bool = False):
    return _unit(self.image_proj(self.image_tower(images, train=train,
                                                  features=True)))

  def embed_texts(self, tokens, train: bool = False):
    x = self.text_tower(tokens, train=train, features=True)
    if self.config.text_pool == "eos":
      at = jnp.argmax(tokens == self.config.eos_id, axis=1)
    else:
      at = jnp.zeros(tokens.shape[:1], jnp.int32)
    pooled = jnp.take_along_axis(x, at[:, None, None], axis=1)[:, 0]
    return _unit(self.text_proj(pooled))

  def __call__(self, *inputs, train: bool = False, embed: bool = False):
    if embed:
      if len(inputs) != 1:
        raise ConfigError("embed=True takes one input: token ids or images.")
      (x,) = inputs
      return (self.embed_texts(x, train) if jnp.issubdtype(x.dtype,
                                                           jnp.integer)
              else self.embed_images(x, train))
    images, tokens = inputs
    scale = jnp.minimum(jnp.exp(self.logit_scale), 100.0)
    return {"image": self.embed_images(images, train),
            "text": self.embed_texts(tokens, train), "scale": scale}


def default_task(config) -> str:
  del config
  return "contrastive"


num_params = families.num_params
flops_per_item = families.xla_flops_per_item
adapt_params = None
trainable_presets = None


def capabilities(config) -> dict:
  """It embeds texts and images into one space."""
  del config
  return {"embed": None, "pixels": None}


def load_hf(model_dir: str, config) -> dict:
  """Variables (numpy) of a Hugging Face CLIPModel checkpoint for our
  `config.model` block, whose towers must be the checkpoint's."""
  hf = hf_layout.read_config(model_dir, "clip")
  model = make(config)
  clip_hf.check(model, hf, model_dir)
  vision = hf["vision_config"]
  size, channels = vision["image_size"], vision.get("num_channels", 3)
  shapes = jax.tree.map(lambda x: x.shape, nn.unbox(jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32),
      jax.ShapeDtypeStruct((1, 8), jnp.int32))))
  return {"params": clip_hf.read_params(model_dir, model, shapes["params"])}


def export_hf(variables, config, class_names) -> hf_layout.HFExport:
  """The CLIPModel directory of our model (see `clip_hf.export`)."""
  del class_names
  return clip_hf.export(variables["params"], make(config))
