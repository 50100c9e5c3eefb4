"""T5 encoder-decoder (Raffel et al. 2020; v1.0 and v1.1) with logical axis
names, built from the shared attention and MLP layers.

Pre-norm blocks with RMSNorm (no bias, no mean), attention without the
1/sqrt(d) scale and without biases, and relative position buckets: one
bias table per stack (bidirectional in the encoder, causal in the decoder),
computed once and added in every layer. v1.0 has a ReLU MLP and reads its
logits from the shared embedding, scaled by emb_dim^-0.5
(`tie_embeddings`); v1.1 a gated GELU ("geglu") and a separate output
layer. The decoder's blocks attend to the encoder after their
self-attention. Layers are unrolled or scanned, with remat, as GPT's
(`gpt.blocks`); LoRA adapters on `lora_targets`.

  model = t5.make(t5.model_config("small", vocab_size=32128))
  logits = model.apply(v, decoder_inputs, sources)   # (B, T, vocab)
  logits, cache = model.apply(v, [[pad_id]], sources, decode=True,
                              lengths=..., mutable=["cache"])    # prefill

`sources` (B, S) are the encoder's token ids (`pad_id` is padding, masked);
decoder inputs start with `pad_id` (T5's decoder start). Decoding keeps the
encoder's output and its padding in the cache ("context", "context_valid"):
the prefill call that brings `sources` encodes them once, the steps after
it attend to what the cache holds (the "source_prompt" part), so servers
batch text-to-text requests like any decoding.
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
from bigmodel_jax.hf import layout as hf_layout, t5 as t5_hf
from bigmodel_jax.layers import attention
from bigmodel_jax.layers.linear import Dense, Linear, normal_init
from bigmodel_jax.layers.mlp import mlp
from bigmodel_jax.layers.norm import norm
from bigmodel_jax.models import gpt

_V1_1 = dict(mlp="geglu", tie_embeddings=False)

# The released sizes (Raffel et al. 2020, table 14; T5 v1.1: gated GELU, a
# separate output layer, no dropout in pretraining) and "tiny" for CPUs.
VARIANTS = {
    "tiny": dict(num_layers=2, num_heads=4, emb_dim=64, head_dim=16,
                 mlp_dim=128, **_V1_1),
    "small": dict(num_layers=6, num_heads=8, emb_dim=512, mlp_dim=2048),
    "base": dict(num_layers=12, num_heads=12, emb_dim=768, mlp_dim=3072),
    "large": dict(num_layers=24, num_heads=16, emb_dim=1024, mlp_dim=4096),
    "3B": dict(num_layers=24, num_heads=32, emb_dim=1024, head_dim=128,
               mlp_dim=16384),
    "11B": dict(num_layers=24, num_heads=128, emb_dim=1024, head_dim=128,
                mlp_dim=65536),
    "v1_1-small": dict(num_layers=8, num_heads=6, emb_dim=512, mlp_dim=1024,
                       **_V1_1),
    "v1_1-base": dict(num_layers=12, num_heads=12, emb_dim=768, mlp_dim=2048,
                      **_V1_1),
    "v1_1-large": dict(num_layers=24, num_heads=16, emb_dim=1024,
                       mlp_dim=2816, **_V1_1),
    "v1_1-xl": dict(num_layers=24, num_heads=32, emb_dim=2048, mlp_dim=5120,
                    **_V1_1),
    "v1_1-xxl": dict(num_layers=24, num_heads=64, emb_dim=4096,
                     mlp_dim=10240, **_V1_1),
}

LORA_TARGETS = ("query", "key", "value", "out", "fc", "gate", "proj")


@dataclasses.dataclass(frozen=True)
class Config:
  """The T5 fields and their defaults (the only ones): see the module doc."""
  vocab_size: int  # From the data.
  num_layers: int  # Encoder layers (and decoder layers unless set).
  num_heads: int
  emb_dim: int
  mlp_dim: int
  head_dim: int = 64
  num_decoder_layers: int | None = None  # None: num_layers.
  mlp: str = "relu"  # "relu" (v1.0) or "geglu" (v1.1).
  tie_embeddings: bool = True  # Logits from the shared embedding, scaled.
  relative_buckets: int = 32
  relative_max_distance: int = 128
  dropout: float = families.bounded(0.0, 0, 1)
  pad_id: int = families.bounded(0, 0)  # Padding and the decoder's start;
  eos_id: int = families.bounded(1, 0)  # the end of a text (data's).
  source_len: int | None = None  # From the data: the encoder's input and
  target_len: int | None = None  # the decoder's cache lengths.
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  scan_layers: bool = False
  remat: str = "none"  # See gpt.REMAT_POLICIES.
  lora_rank: int = families.bounded(0, 0)
  lora_alpha: float = 16.0
  lora_targets: str = "query,value"  # Of LORA_TARGETS.

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("t5", Config, VARIANTS, variant, overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  fields = families.config_fields(config, Config, {
      "mlp": ("relu", "geglu"), "remat": tuple(gpt.REMAT_POLICIES)})
  families.check_lora_targets(fields, LORA_TARGETS)
  return Model(Config(**fields))


def relative_buckets(relative, bidirectional: bool, buckets: int,
                     max_distance: int):
  """T5's bucket of each relative position (key - query): exact for small
  distances, logarithmic up to `max_distance`; the sign has its own half
  of the buckets when `bidirectional`, else later keys share bucket 0."""
  out = 0
  if bidirectional:
    buckets //= 2
    out = (relative > 0).astype(jnp.int32) * buckets
    distance = jnp.abs(relative)
  else:
    distance = -jnp.minimum(relative, 0)
  exact = buckets // 2
  large = exact + (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) /
                           exact) / math.log(max_distance / exact) *
                   (buckets - exact)).astype(jnp.int32)
  return out + jnp.where(distance < exact, distance,
                         jnp.minimum(large, buckets - 1))


class RelativeBias(nn.Module):
  """(B|1, T) query and (S,) key positions -> the (B|1, heads, T, S) bias."""
  config: Config
  bidirectional: bool

  @nn.compact
  def __call__(self, queries, keys):
    cfg = self.config
    table = self.param("embedding", normal_init(
        cfg.emb_dim ** -0.5, ("position", "heads")),
                       (cfg.relative_buckets, cfg.num_heads), cfg.param_dtype)
    buckets = relative_buckets(keys[None, None, :] - queries[..., None],
                               self.bidirectional, cfg.relative_buckets,
                               cfg.relative_max_distance)
    return jnp.take(table, buckets, 0).transpose(0, 3, 1, 2).astype(
        cfg.dtype)


def _dense(cfg: Config):
  """T5's projections: no biases, fan-in initialisation (the query's also
  over head_dim, as the scores are not scaled)."""
  base = Dense(False, cfg.dtype, cfg.param_dtype, init="lecun_normal",
               std=(cfg.emb_dim * cfg.head_dim) ** -0.5,
               lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
               lora_targets=tuple(cfg.lora_targets.split(",")))
  return lambda features, names, name: base(
      features, names, name, "normal" if name == "query" else None)


def _norm(cfg: Config, name: str) -> nn.Module:
  return norm("rmsnorm", name, eps=1e-6, dtype=cfg.dtype,
              param_dtype=cfg.param_dtype)


class Attention(nn.Module):
  """Unscaled attention over x or `context`, with T5's bias and masks."""
  config: Config

  @nn.compact
  def __call__(self, x, **kwargs):
    cfg = self.config
    return attention.attention(
        self, x, _dense(cfg), attention.Heads(cfg.num_heads, cfg.head_dim),
        out_dim=cfg.emb_dim, scale=1.0, **kwargs)


class EncoderBlock(nn.Module):
  """Self-attention over the sources (padding: `where["mask"]`), then the
  MLP; (x, where) -> (x, None). In the decoder (`DecoderBlock`) the
  self-attention is causal with a KV cache and the encoder's output
  ("context", "context_mask") is attended to before the MLP."""
  config: Config
  train: bool = False
  decode: bool = False
  decoder = False

  @nn.compact
  def __call__(self, x, where):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=not self.train)
    seen = (dict(causal=True, cache_start=where["start"],
                 cache_size=cfg.target_len or 0) if self.decoder else
            dict(mask=where["mask"]))
    x = x + dropout(Attention(cfg, name="self_attn")(
        _norm(cfg, "ln_self")(x), bias=where["bias"], **seen))
    if self.decoder:
      x = x + dropout(Attention(cfg, name="cross_attn")(
          _norm(cfg, "ln_cross")(x), context=where["context"],
          mask=where["context_mask"]))
    x = x + dropout(mlp(_norm(cfg, "ln_mlp")(x), _dense(cfg), cfg.mlp_dim,
                        cfg.emb_dim, cfg.mlp))
    return nn.with_logical_constraint(x, (
        "batch", "length" if self.decoder else "act_seq", "act_embed")), None


class DecoderBlock(EncoderBlock):
  decoder = True


class Stack(nn.Module):
  """The encoder or the decoder: embedded tokens through its blocks and
  its final norm. `where` gains the stack's relative bias; `queries`: the
  positions of x's tokens, `keys` those attended to."""
  config: Config
  block: Any
  train: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, where: dict, queries, keys):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=not self.train)
    where = {**where, "bias": RelativeBias(
        cfg, not self.block.decoder, name="relative_bias")(queries, keys)}
    x = dropout(x)
    layers = cfg.decoder_layers if self.block.decoder else cfg.num_layers
    for block in gpt.blocks(dataclasses.replace(cfg, num_layers=layers),
                            self.train, self.decode, block=self.block):
      x, _ = block(x, where)
    return dropout(_norm(cfg, "ln_f")(x))


class Model(nn.Module):
  """(decoder inputs (B, T), sources (B, S)) -> logits (B, T, vocab)."""
  config: Config

  @nn.compact
  def __call__(self, tokens, sources=None, *, train: bool = False,
               decode: bool = False, lengths=None):
    """With `decode`, `sources` (prefill) are encoded into the cache and
    later steps (sources None) attend to the cached encoding; each row's
    tokens continue its own decoder cache (`lengths`: right padding)."""
    cfg = self.config
    shared = nn.Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, name="shared",
                      embedding_init=normal_init(1.0, ("vocab", "embed")))
    if decode:
      context, valid = self._cached_encoding(shared, sources, tokens.shape[0])
      start = attention.cache_start(self, tokens.shape[0], tokens.shape[1],
                                    cfg.target_len, lengths)
      queries = start[:, None] + jnp.arange(tokens.shape[1])
      keys = jnp.arange(cfg.target_len)
    else:
      if sources is None:
        raise ConfigError("T5 needs `sources` (the encoder's token ids), or "
                          "a decoding cache that holds their encoding.")
      context, valid = self._encode(shared, sources, train), sources != (
          cfg.pad_id)
      start, queries = None, jnp.arange(tokens.shape[1])[None]
      keys = queries[0]
    x = Stack(cfg, DecoderBlock, train, decode, name="decoder")(
        shared(tokens), {"start": start, "context": context,
                         "context_mask": attention.padding_mask(valid)},
        queries, keys)
    if cfg.tie_embeddings:
      logits = shared.attend(x * cfg.emb_dim ** -0.5)
    else:
      logits = Linear((cfg.vocab_size,), ("embed", "vocab"), cfg.emb_dim ** -0.5,
                      False, cfg.dtype, cfg.param_dtype, name="lm_head")(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32),
                                      ("batch", "length", "act_vocab"))

  def _encode(self, shared, sources, train: bool):
    positions = jnp.arange(sources.shape[1])
    return Stack(self.config, EncoderBlock, train, name="encoder")(
        shared(sources), {"mask": attention.padding_mask(
            sources != self.config.pad_id)}, positions[None], positions)

  def _cached_encoding(self, shared, sources, rows: int):
    """The encoder's output and padding, written to the cache when
    `sources` come (prefill; zeros of `source_len` shape a new cache)."""
    cfg = self.config
    if sources is None and not self.has_variable("cache", "context"):
      if not cfg.source_len:
        raise ConfigError("config.model.source_len is not set (normally "
                          "from the data): it sizes the decoding cache.")
      sources = jnp.full((rows, cfg.source_len), cfg.pad_id, jnp.int32)
    encoded = None if sources is None else self._encode(shared, sources,
                                                        False)
    shape = None if sources is None else sources.shape
    context = self.variable("cache", "context", nn.with_logical_partitioning(
        jnp.zeros, ("batch", "length", "act_embed")),
                            shape and shape + (cfg.emb_dim,), cfg.dtype)
    valid = self.variable("cache", "context_valid",
                          nn.with_logical_partitioning(
                              jnp.zeros, ("batch", "length")), shape, bool)
    if encoded is not None:
      context.value, valid.value = encoded, sources != cfg.pad_id
    return context.value, valid.value


def default_task(config) -> str:
  del config
  return "seq2seq"


num_params = families.num_params
flops_per_item = families.xla_flops_per_item
adapt_params = None


def trainable_presets(config) -> dict:
  """"lora": the LoRA adapters only."""
  del config
  return {"lora": r"lora_"}


def capabilities(config) -> dict:
  """It decodes targets of up to `target_len` tokens from sources given at
  prefill (the "source_prompt" part)."""
  return {"decode": config.target_len, "source_prompt": config.source_len,
          "attention": None}


def param_shapes(cfg: Config) -> dict:
  """The shapes of the params, unbuilt."""
  tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
  return jax.tree.map(lambda x: x.shape, nn.unbox(jax.eval_shape(
      Model(cfg).init, jax.random.key(0), tokens, tokens))["params"])


def load_hf(model_dir: str, config) -> dict:
  """Variables (numpy) of a Hugging Face T5 checkpoint for our
  `config.model` block, whose architecture must be the checkpoint's."""
  hf = hf_layout.read_config(model_dir, "t5")
  cfg = make(config).config
  hf_layout.check_fields({**dataclasses.asdict(cfg),
                          "num_decoder_layers": cfg.decoder_layers},
                         t5_hf.config_fields(hf), model_dir)
  return {"params": t5_hf.read_params(model_dir, hf, cfg, param_shapes(cfg))}


def export_hf(variables, config, class_names) -> hf_layout.HFExport:
  """The Hugging Face directory of our model (see `t5_hf.export`)."""
  del class_names
  return t5_hf.export(variables["params"], make(config).config)
