"""Vision Transformer (ViT) image classifier with logical axis names.

Non-overlapping patches -> linear embedding + learned positions -> pre-LN
transformer encoder -> class token or global average pool -> linear head
(zero-initialised, as in big_vision); `features=True` returns the pooled
features instead (an image tower: `two_towers`), `features="tokens"` every
token's (an encoder: `captioner`). CLIP's vision tower is
this with `pre_norm` (a LayerNorm before the blocks), `mlp="quick_gelu"`,
`norm_eps=1e-5` and no patch-embedding bias. Variants are "SIZE/PATCH": Ti/16, S/16,
B/16, L/16, B/32, ...; any size with any patch size.

  model = vit.make(vit.model_config("B/16", num_classes=1000))
  logits = model.apply({"params": params}, images)   # (B, H, W, C) -> (B, classes)
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax.errors import ConfigError
from bigmodel_jax import families
from bigmodel_jax.hf import layout as hf_layout, vit as vit_hf
from bigmodel_jax.layers import attention
from bigmodel_jax.layers.linear import Dense, normal_init, zeros_init
from bigmodel_jax.layers.mlp import ACTIVATIONS, mlp
from bigmodel_jax.layers.norm import norm

# Transformer sizes of the ViT paper (and DeiT's Ti / S).
SIZES = {
    "Ti": dict(emb_dim=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(emb_dim=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B": dict(emb_dim=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(emb_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "H": dict(emb_dim=1280, num_layers=32, num_heads=16, mlp_dim=5120),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The ViT fields and their defaults (the only ones): see the module doc."""
  num_classes: int  # From the data.
  patch_size: int  # From the variant.
  emb_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None  # None: emb_dim // num_heads.
  pool: str = "token"  # "token" (class token) or "gap" (global average pool).
  mlp: str = "gelu"  # Of layers.mlp.ACTIVATIONS.
  norm_eps: float = 1e-6
  pre_norm: bool = False  # A LayerNorm ("ln_pre") before the blocks (CLIP).
  patch_bias: bool = True
  dropout: float = families.bounded(0.0, 0, 1)
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  attention_impl: str | None = None


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for "SIZE/PATCH", e.g. "B/16"."""
  size, _, patch = variant.partition("/")
  if size not in SIZES or not patch.isdigit():
    raise ConfigError(f"Unknown ViT variant {variant!r}; use SIZE/PATCH with "
                     f"SIZE in {list(SIZES)}, e.g. 'B/16'.")
  return families.config_block("vit", Config, {"patch_size": int(patch)},
                             SIZES[size], overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  fields = families.config_fields(config, Config, {"pool": ("token", "gap"),
                                                   "mlp": ACTIVATIONS})
  families.check_heads(fields, fields.get("head_dim"))
  return Model(Config(**fields))


def _dense(cfg: Config) -> Dense:
  """Dense layers with bias; big_vision's initialisers."""
  return Dense(True, cfg.dtype, cfg.param_dtype, init="xavier_uniform")


def _layer_norm(cfg: Config, name: str) -> nn.Module:
  return norm("layernorm", name, eps=cfg.norm_eps, dtype=cfg.dtype,
              param_dtype=cfg.param_dtype)


class EncoderBlock(nn.Module):
  """Pre-LN block: bidirectional multi-head attention, then the MLP."""
  config: Config

  @nn.compact
  def __call__(self, x, *, train: bool):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=not train)
    heads = attention.Heads(cfg.num_heads,
                            cfg.head_dim or cfg.emb_dim // cfg.num_heads,
                            kv_axis="heads")
    y = attention.attention(self, _layer_norm(cfg, "ln_1")(x), _dense(cfg),
                            heads, out_dim=cfg.emb_dim,
                            implementation=cfg.attention_impl)
    x = x + dropout(y)
    y = mlp(_layer_norm(cfg, "ln_2")(x), _dense(cfg), cfg.mlp_dim,
            cfg.emb_dim, cfg.mlp)
    x = x + dropout(y)
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


def patchify(images, patch: int):
  """(B, H, W, C) -> (B, H/p * W/p, p * p * C) non-overlapping patches."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ConfigError(f"Image size {h}x{w} is not divisible by patch {patch}.")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch * patch * c)


def resample_posemb(posemb, num_positions: int):
  """Bilinearly resizes an (N, D) square grid of position embeddings."""
  old, new = round(posemb.shape[0] ** 0.5), round(num_positions ** 0.5)
  if old * old != posemb.shape[0] or new * new != num_positions:
    raise ConfigError(f"Cannot resample {posemb.shape[0]} positions to "
                     f"{num_positions}: both must be square grids.")
  grid = posemb.reshape(old, old, -1)
  return jax.image.resize(grid, (new, new, grid.shape[-1]),
                          "bilinear").reshape(num_positions, -1)


class Model(nn.Module):
  """ViT: images (B, H, W, C) float -> logits (B, num_classes) float32, or
  with `features` the pooled features (B, emb_dim) (no head), or with
  `features="tokens"` every token's (B, N, emb_dim)."""
  config: Config

  @nn.compact
  def __call__(self, images, *, train: bool = False,
               features: bool | str = False):
    cfg = self.config
    embed = Dense(cfg.patch_bias, cfg.dtype, cfg.param_dtype,
                  init="xavier_uniform")
    x = embed((cfg.emb_dim,), ("patch", "embed"), "embedding",
              "lecun_normal")(patchify(images, cfg.patch_size))
    posemb = self.param("posemb", normal_init(0.02, ("position",
                                                            "embed")),
                        x.shape[1:], cfg.param_dtype)
    x = x + posemb.astype(cfg.dtype)
    if cfg.pool == "token":
      cls = self.param("cls", zeros_init((None, None, "embed")),
                       (1, 1, cfg.emb_dim), cfg.param_dtype)
      x = jnp.concatenate(
          [jnp.broadcast_to(cls.astype(cfg.dtype), (x.shape[0], 1,
                                                    cfg.emb_dim)), x], 1)
    if cfg.pre_norm:
      x = _layer_norm(cfg, "ln_pre")(x)
    x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    for i in range(cfg.num_layers):
      x = EncoderBlock(cfg, name=f"block_{i}")(x, train=train)
    x = _layer_norm(cfg, "ln_f")(x)
    if features == "tokens":
      return x
    x = x[:, 0] if cfg.pool == "token" else x.mean(1)
    if features:
      return x
    logits = _dense(cfg)((cfg.num_classes,), ("embed", "classes"), "head",
                         "zeros")(x)
    return logits.astype(jnp.float32)


def adapt_params(loaded: dict, target) -> dict:
  """Fits pretrained params to a model of another image size or class count:
  resamples position embeddings; a head of another shape starts from zero."""
  params = dict(loaded)
  if params["posemb"].shape != target["posemb"].shape:
    params["posemb"] = resample_posemb(params["posemb"],
                                       target["posemb"].shape[0])
  return families.restart_mismatched_head(params, target)


def load_hf(model_dir: str, config) -> dict:
  """Variables (numpy) of a Hugging Face ViT checkpoint for our `config.model`
  block, whose architecture must be the checkpoint's; at the checkpoint's
  image size (`adapt_params` resamples the positions) and without a head of
  another class count."""
  hf = hf_layout.read_config(model_dir, "vit")
  ours = make(config).config
  hf_layout.check_fields(dataclasses.asdict(ours), vit_hf.config_fields(hf),
                         model_dir)
  size = hf["image_size"]
  shapes = families.variable_shapes(
      Model(ours), (1, size, size, hf["num_channels"]), jnp.float32)
  return {"params": vit_hf.read_params(model_dir, ours, shapes["params"])}


def export_hf(variables, config, class_names) -> hf_layout.HFExport:
  """The Hugging Face directory of our model (see `vit_hf.export`)."""
  return vit_hf.export(variables["params"], make(config).config, class_names)


default_task = families.classification_task
num_params = families.num_params
flops_per_item = families.xla_flops_per_item
trainable_presets = None  # None yet.


def capabilities(config) -> dict:
  """Gradients reach its pixels; explaining reads its attention; it gives
  pooled features."""
  del config
  return {"pixels": None, "attention": None, "image_features": None}
