"""GPT decoder (GPT-2 / nanoGPT layout) with logical axis names and a KV cache.

Token + learned position embeddings, pre-LayerNorm blocks, causal multi-head
attention through `jax.nn.dot_product_attention`, GELU MLP, output projection
tied to the token embedding.

  model = gpt.make(gpt.model_config("nano", vocab_size=65, block_size=64))
  logits = model.apply({"params": params}, tokens)          # (B, T, vocab)
"""
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from bigmodel_jax.models import layers

# Model sizes. "nano" and "baby" are nanoGPT's Shakespeare CPU / GPU models.
VARIANTS = {
    "nano": dict(num_layers=4, num_heads=4, emb_dim=128),
    "baby": dict(num_layers=6, num_heads=6, emb_dim=384),
    "124M": dict(num_layers=12, num_heads=12, emb_dim=768),
    "350M": dict(num_layers=24, num_heads=16, emb_dim=1024),
    "774M": dict(num_layers=36, num_heads=20, emb_dim=1280),
    "1.5B": dict(num_layers=48, num_heads=25, emb_dim=1600),
}


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  if variant not in VARIANTS:
    raise ValueError(f"Unknown GPT variant {variant!r}; have {list(VARIANTS)}.")
  defaults = dict(
      block_size=1024,
      mlp_ratio=4,
      dropout=0.0,
      use_bias=False,
      attention_impl=ml_collections.config_dict.placeholder(str),
  )
  return layers.config_block("gpt", "vocab_size", defaults, VARIANTS[variant],
                             overrides)


@dataclasses.dataclass(frozen=True)
class Config:
  vocab_size: int
  num_layers: int
  num_heads: int
  emb_dim: int
  block_size: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  use_bias: bool = False
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  attention_impl: str | None = None  # None (XLA picks), "xla" or "cudnn".


def make(config: ml_collections.ConfigDict) -> "Model":
  """Builds the Linen module from a `config.model` block."""
  return Model(Config(**layers.config_fields(config, "vocab_size")))


def _layer_norm(cfg: Config, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=1e-5, use_bias=cfg.use_bias, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=layers.zeros_init(("norm",)))


def _dense(cfg: Config, features, names: tuple, std: float, name: str):
  return layers.Linear(tuple(np.atleast_1d(features)), names, std,
                       cfg.use_bias, cfg.dtype, cfg.param_dtype, name=name)


class Attention(nn.Module):
  """Causal self-attention; with `decode=True` reads and extends a KV cache."""
  config: Config

  @nn.compact
  def __call__(self, x, cache_index, *, decode: bool):
    cfg = self.config
    heads = (cfg.num_heads, cfg.emb_dim // cfg.num_heads)
    act_names = ("batch", "length", "act_heads", "act_kv")
    q, k, v = (
        nn.with_logical_constraint(
            _dense(cfg, heads, ("embed", "heads", "kv"), 0.02, name)(x),
            act_names) for name in ("query", "key", "value"))
    if decode:
      k, v, mask = self._update_cache(k, v, cache_index)
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    else:
      out = jax.nn.dot_product_attention(
          q, k, v, is_causal=True, implementation=cfg.attention_impl)
    out = nn.with_logical_constraint(out, act_names)
    return _dense(cfg, cfg.emb_dim, ("heads", "kv", "embed"), _out_std(cfg),
                  "out")(out)

  def _update_cache(self, k, v, index):
    """Writes k, v at `index`; returns the whole cache and the causal mask."""
    batch, length, heads, head_dim = k.shape
    size = self.config.block_size
    shape = (batch, size, heads, head_dim)
    cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
    start = (0, index, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, start)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, start)
    query_pos = index + jnp.arange(length)
    mask = jnp.arange(size)[None, :] <= query_pos[:, None]
    return cached_k.value, cached_v.value, mask[None, None]


def _out_std(cfg: Config) -> float:
  """GPT-2's scaled init of the projections that write to the residual."""
  return 0.02 / math.sqrt(2 * cfg.num_layers)


class Block(nn.Module):
  """Pre-LayerNorm transformer block."""
  config: Config

  @nn.compact
  def __call__(self, x, cache_index, *, train: bool, decode: bool):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=not train)
    y = Attention(cfg, name="attn")(
        _layer_norm(cfg, "ln_1")(x), cache_index, decode=decode)
    x = x + dropout(y)
    y = _dense(cfg, cfg.mlp_ratio * cfg.emb_dim, ("embed", "mlp"), 0.02,
               "fc")(_layer_norm(cfg, "ln_2")(x))
    y = nn.with_logical_constraint(jax.nn.gelu(y),
                                   ("batch", "length", "act_mlp"))
    y = _dense(cfg, cfg.emb_dim, ("mlp", "embed"), _out_std(cfg), "proj")(y)
    x = x + dropout(y)
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class Model(nn.Module):
  """GPT language model: tokens (B, T) int -> logits (B, T, vocab) float32."""
  config: Config

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, decode: bool = False):
    """With `decode=True`, tokens continue the sequence held in the cache."""
    cfg = self.config
    length = tokens.shape[1]
    if decode:
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      start = index.value
      index.value = start + length
    else:
      start = 0
    wte = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, name="wte",
                   embedding_init=layers.normal_init(0.02, ("vocab", "embed")))
    wpe = self.param("wpe", layers.normal_init(0.02, ("position", "embed")),
                     (cfg.block_size, cfg.emb_dim), cfg.param_dtype)
    positions = jax.lax.dynamic_slice_in_dim(wpe, start, length)
    x = wte(tokens) + positions.astype(cfg.dtype)
    x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    for i in range(cfg.num_layers):
      x = Block(cfg, name=f"block_{i}")(x, start, train=train, decode=decode)
    logits = wte.attend(_layer_norm(cfg, "ln_f")(x)).astype(jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))

  def num_params(self, params, *, embeddings: bool = False) -> int:
    """Parameter count; like nanoGPT, excludes position embeddings by default."""
    total = sum(x.size for x in jax.tree.leaves(params))
    return total if embeddings else total - params["wpe"].size

  def flops_per_item(self, params, input_shape) -> float:
    """Training FLOPs per token, nanoGPT / PaLM: 6N + 12 L H Q T."""
    cfg = self.config
    return (6 * self.num_params(params) +
            12 * cfg.num_layers * cfg.emb_dim * input_shape[1])
