"""Transformer-XL (Dai et al. 2019): a decoder with segment-level recurrence
and relative positions.

  tokens (B, T) -> embedding x sqrt(emb_dim) -> `num_layers` post-LN blocks
  (relative attention, ReLU MLP) -> logits of the tied embedding (B, T, vocab)

Recurrence. Tokens are read in segments of `segment_len` S; at every layer a
segment also attends to the memory: the layer's inputs at the previous
segment's last `mem_len` M positions, without gradient. Over a window of T
tokens read at once this is a mask: position p attends to positions k with

  floor(p / S) S - M  <=  k  <=  p

those before floor(p / S) S (the memory) through a stop-gradient of the
layer's input, the paper's SG(m): their keys and values are this step's
projections of it, and no gradient reaches the segment that made it. A
segment's hidden states are the same read alone or within the window, so the
window's outputs and gradients equal reading its segments one after another
with the memory (tests/test_transformer_xl.py writes that recurrence out from
the paper's equations). A training window holds consecutive segments
(`input.seq_len` = k S); the memory is not carried from one step to the next,
so a batch stays a function of (seed, step), gradient accumulation stays exact
and a checkpoint holds no memory. Evaluation reads its windows the same way.

Relative positions (the paper's section 3.3): the score of p over k is

  ((q_p + u) . k_k + (q_p + v) . W_r R(p - k)) / sqrt(head_dim)

with R sinusoids and u, v per layer and head. u is the query projection's
bias ("attn/query/bias": q + u is the projected query) and "attn/r_bias"
holds v - u: the same function.

Decoding keeps the memory: a token at position p of the KV cache (`block_size`
positions, `layers/attention.py`) attends over the cache to the span it would
see in a window, so cached decoding equals the window's forward pass.

  model = transformer_xl.make(transformer_xl.model_config("char-nano",
                                                          vocab_size=65))
  logits = model.apply({"params": params}, tokens)    # (B, T, vocab_size)
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from bigmodel_jax import families
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.layers import attention
from bigmodel_jax.layers.linear import Dense, Linear, normal_init, zeros_init
from bigmodel_jax.models import bert, gpt

# "char-nano" is GPT "nano"'s size (0.80M parameters on tiny_shakespeare's 65
# characters) with its 64-token segments; the enwik8 models are the paper's
# (table 2: 41M and 277M parameters with enwik8's 204 symbols).
VARIANTS = {
    "char-nano": dict(num_layers=4, num_heads=4, emb_dim=128, mlp_dim=448,
                      segment_len=64, mem_len=64),
    "enwik8-12L": dict(num_layers=12, num_heads=8, emb_dim=512,
                       mlp_dim=2048, segment_len=512, mem_len=512,
                       block_size=4096),
    "enwik8-24L": dict(num_layers=24, num_heads=8, emb_dim=1024,
                       mlp_dim=3072, segment_len=768, mem_len=768,
                       block_size=4096),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The Transformer-XL fields and their defaults (the only ones): see the
  module doc."""
  vocab_size: int  # From the data.
  num_layers: int  # From the variant.
  num_heads: int
  emb_dim: int
  mlp_dim: int
  segment_len: int = families.bounded(64, 1)
  mem_len: int = families.bounded(64, 0)
  head_dim: int | None = None  # None: emb_dim // num_heads.
  block_size: int = 1024  # Positions of the decoding cache.
  layer_norm_eps: float = 1e-5
  dropout: float = families.bounded(0.0, 0, 1)
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  scan_layers: bool = False
  remat: str = "none"  # See gpt.REMAT_POLICIES.

  @property
  def head_size(self) -> int:
    return self.head_dim or self.emb_dim // self.num_heads

  @property
  def span(self) -> int:
    """The farthest a position looks back, plus one: M + S."""
    return self.mem_len + self.segment_len


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("transformer_xl", Config, VARIANTS, variant,
                                 overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  """Builds the Linen module from a `config.model` block."""
  fields = families.config_fields(config, Config,
                                  {"remat": tuple(gpt.REMAT_POLICIES)})
  families.check_heads(fields, fields.get("head_dim"))
  return Model(Config(**fields))


def sinusoids(length: int, dim: int) -> np.ndarray:
  """R(d) for d = 0 .. length - 1: sines then cosines of d / 10000^(2i/dim)."""
  inverse = 1.0 / 10000 ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
  angles = np.arange(length, dtype=np.float32)[:, None] * inverse
  return np.concatenate([np.sin(angles), np.cos(angles)], -1)


def _dense(cfg: Config):
  """The projections: the MLP's and the query's have biases (the query's is
  the paper's u); keys, values and the output have none."""
  plain = Dense(False, cfg.dtype, cfg.param_dtype)
  biased = Dense(True, cfg.dtype, cfg.param_dtype)
  return lambda features, names, name, init=None: (
      biased if name in ("query", "fc", "proj") else plain)(
          features, names, name, init)


class Attention(nn.Module):
  """Relative multi-head attention over `where`'s keys: the layer's input
  (decoding: the cache) and, in a window longer than a segment, its
  stop-gradient copy that serves as the memory."""
  config: Config

  @nn.compact
  def __call__(self, x, where: dict, *, decode: bool):
    cfg = self.config
    heads = attention.Heads(cfg.num_heads, cfg.head_size)
    r = Linear((cfg.num_heads, cfg.head_size), ("embed", "heads", "kv"),
               dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="r")(
                   jnp.asarray(sinusoids(cfg.span, cfg.emb_dim), cfg.dtype))
    r_bias = self.param("r_bias", zeros_init(("heads", "kv")),
                        (cfg.num_heads, cfg.head_size), cfg.param_dtype)

    def positional(q, k):
      """(q + v) . W_r R(p - k), scaled: (B, heads, T, keys)."""
      del k
      scores = jnp.einsum("bthd,rhd->bhtr", q + r_bias.astype(q.dtype), r,
                          preferred_element_type=jnp.float32)
      distance = where["distance"][:, None]  # (B|1, 1, T, keys)
      distance = jnp.broadcast_to(distance,
                                  scores.shape[:3] + distance.shape[-1:])
      return jnp.take_along_axis(scores, distance, -1) / np.sqrt(cfg.head_size)

    return attention.attention(
        self, x, _dense(cfg), heads, out_dim=cfg.emb_dim,
        context=None if decode else _keys(x, where), mask=where["mask"],
        bias=positional, cache_start=where["start"] if decode else None,
        cache_size=cfg.block_size)


class Block(nn.Module):
  """Post-LN block: x = LN(x + attn(x)); LN(x + relu_mlp(x)); (x, where) ->
  (x, None), scan-compatible."""
  config: Config
  train: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, where):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=not self.train)
    y = Attention(cfg, name="attn")(x, where, decode=self.decode)
    return bert.post_norm(cfg, x, y, _dense(cfg), dropout, "relu"), None


def _window(cfg: Config, length: int, segments):
  """Mask and distances of a window read at once (see the module doc): when
  it is longer than a segment, the keys are the memory's (stop-gradient
  copies of the layer's input) then the window's own."""
  p = jnp.arange(length)
  start = p // cfg.segment_len * cfg.segment_len
  mask = (p[None] >= start[:, None]) & (p[None] <= p[:, None])
  keys = p
  if length > cfg.segment_len:
    memory = (p[None] < start[:, None]) & (
        p[None] >= start[:, None] - cfg.mem_len)
    mask, keys = jnp.concatenate([memory, mask], 1), jnp.concatenate([p, p])
  mask = mask[None, None]
  if segments is not None:  # Packed documents stay apart.
    ids = jnp.tile(segments, (1, len(keys) // length))
    mask = mask & (segments[:, :, None] == ids[:, None, :])[:, None]
  return {"mask": mask, "start": None,
          "distance": jnp.clip(p[:, None] - keys, 0, cfg.span - 1)[None]}


def _keys(x, where: dict):
  """What a window's queries attend over: x, after its stop-gradient copy
  (the memory) when the mask has keys for both."""
  if where["mask"].shape[-1] == x.shape[1]:
    return x
  return jnp.concatenate([jax.lax.stop_gradient(x), x], 1)


def _cached(cfg: Config, start, length: int):
  """Mask and distances of `length` tokens at each row's `start` over the
  KV cache's `block_size` positions: the span a window gives them."""
  p = start[:, None] + jnp.arange(length)
  keys = jnp.arange(cfg.block_size)
  first = p // cfg.segment_len * cfg.segment_len - cfg.mem_len
  return {"mask": (keys >= first[..., None])[:, None],
          "distance": jnp.clip(p[..., None] - keys, 0, cfg.span - 1),
          "start": start}


class Model(nn.Module):
  """Transformer-XL language model: tokens (B, T) -> logits (B, T, vocab)."""
  config: Config

  @nn.compact
  def __call__(self, tokens, segments=None, positions=None, *,
               train: bool = False, decode: bool = False, lengths=None):
    """With `decode=True`, tokens continue the sequence held in the cache
    (right-padded rows: `lengths` (B,) real tokens each); `segments` (B, T)
    keep packed documents apart. Positions are relative: `positions` is not
    used."""
    del positions
    cfg = self.config
    length = tokens.shape[1]
    if decode:  # Each row continues from its own position.
      if segments is not None:
        raise ConfigError("Transformer-XL decodes one document per row.")
      where = _cached(cfg, attention.cache_start(
          self, tokens.shape[0], length, cfg.block_size, lengths), length)
    else:
      where = _window(cfg, length, segments)
    wte = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, name="wte",
                   embedding_init=normal_init(0.02, ("vocab", "embed")))
    x = wte(tokens) * np.sqrt(cfg.emb_dim)
    x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    for block in gpt.blocks(cfg, train, decode, Block):
      x, _ = block(x, where)
    logits = wte.attend(x) + self.param(
        "head_bias", zeros_init(("vocab",)), (cfg.vocab_size,),
        cfg.param_dtype)
    return nn.with_logical_constraint(logits.astype(jnp.float32),
                                      ("batch", "length", "act_vocab"))


default_task = families.lm_task
num_params = families.num_params


def flops_per_item(model: Model, params, args) -> float:
  """Training FLOPs per token: XLA's count for a window (the memory's keys
  included), over its length."""
  return families.xla_flops_per_item(model, params, args) / args[0].shape[1]


def capabilities(config) -> dict:
  """Decodes with its KV cache (the memory), up to `block_size` tokens;
  explaining reads its token embeddings ("wte")."""
  return {"decode": config.block_size, "token_embeddings": "wte"}


# transformers dropped its Transformer-XL (deprecated in 4.35): exports are
# jax.export's. The paper's code has no checkpoint layout to import.
load_hf = export_hf = adapt_params = trainable_presets = None
