"""GPT-family decoder (GPT-2, GPT-3, LLaMA shapes) with logical axis names.

One module, options from the config: learned or rotary (RoPE) positions,
LayerNorm or RMSNorm, GELU (tanh or erf) or SwiGLU MLP, multi-head /
grouped-query / multi-query attention (`num_kv_heads`) through
`jax.nn.dot_product_attention` (`attention_impl`: None, "xla" or "cudnn"), tied
or untied output embedding, biases on or off, vocabulary padded to a multiple
of `vocab_multiple` (the padded logits are masked). Layers are unrolled or
stacked with `nn.scan` (`scan_layers`: compile time flat in depth), with a
rematerialisation policy (`remat`: none, full, dots_saveable, minimal). A KV
cache serves decoding. Packed sequences: with `segments` (B, T) ids a token
attends only to earlier tokens of its own segment, and `positions` (B, T)
restart in each. With `cross_attention`, every block also attends to a
`context` (B, S, D') of another model (an image encoder's tokens: the
`captioner` family), after its self-attention. LoRA: `lora_rank` > 0 adds low-rank adapters to the
`lora_targets` projections of every block (trainable preset "lora").

  model = gpt.make(gpt.model_config("124M", vocab_size=50257))
  logits = model.apply({"params": params}, tokens)          # (B, T, padded vocab)
"""
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from bigmodel_jax.errors import ConfigError
from bigmodel_jax import families
from bigmodel_jax.hf import gpt as gpt_hf, layout as hf_layout
from bigmodel_jax.layers import attention
from bigmodel_jax.layers.linear import Dense, Linear, normal_init
from bigmodel_jax.layers.mlp import ACTIVATIONS, mlp
from bigmodel_jax.layers.norm import norm

_GPT2 = dict(use_bias=True, block_size=1024)
_GPT3 = dict(use_bias=True, block_size=2048)
_LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu",
              tie_embeddings=False, block_size=4096, vocab_multiple=1)

# Model sizes. "nano" and "baby" are nanoGPT's Shakespeare CPU / GPU models;
# GPT-2 as released; GPT-3 as in Brown et al. 2020, table 2.1; LLaMA-style
# 1B (Llama 3.2 1B shape) and 7B (Llama 2 7B).
VARIANTS = {
    "nano": dict(num_layers=4, num_heads=4, emb_dim=128, vocab_multiple=1),
    "baby": dict(num_layers=6, num_heads=6, emb_dim=384, vocab_multiple=1),
    "124M": dict(num_layers=12, num_heads=12, emb_dim=768, **_GPT2),
    "350M": dict(num_layers=24, num_heads=16, emb_dim=1024, **_GPT2),
    "774M": dict(num_layers=36, num_heads=20, emb_dim=1280, **_GPT2),
    "1.5B": dict(num_layers=48, num_heads=25, emb_dim=1600, **_GPT2),
    "gpt3-125M": dict(num_layers=12, num_heads=12, emb_dim=768, **_GPT3),
    "gpt3-350M": dict(num_layers=24, num_heads=16, emb_dim=1024, **_GPT3),
    "gpt3-760M": dict(num_layers=24, num_heads=16, emb_dim=1536, **_GPT3),
    "gpt3-1.3B": dict(num_layers=24, num_heads=32, emb_dim=2048, **_GPT3),
    "gpt3-2.7B": dict(num_layers=32, num_heads=32, emb_dim=2560, **_GPT3),
    "gpt3-6.7B": dict(num_layers=32, num_heads=32, emb_dim=4096, **_GPT3),
    "gpt3-13B": dict(num_layers=40, num_heads=40, emb_dim=5140, head_dim=128,
                     **_GPT3),
    "gpt3-175B": dict(num_layers=96, num_heads=96, emb_dim=12288, **_GPT3),
    "llama-1B": dict(num_layers=16, num_heads=32, num_kv_heads=8,
                     emb_dim=2048, mlp_dim=8192, rope_theta=500000.0,
                     **{**_LLAMA, "tie_embeddings": True}),
    "llama-7B": dict(num_layers=32, num_heads=32, emb_dim=4096,
                     mlp_dim=11008, **_LLAMA),
}

# Projections of a block that can carry LoRA adapters (`lora_targets`).
LORA_TARGETS = ("query", "key", "value", "out", "fc", "gate", "proj")

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    # MaxText's "minimal": keep matmul outputs without batch dimensions.
    "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The GPT fields and their defaults (the only ones): see the module doc."""
  vocab_size: int  # From the data.
  num_layers: int  # From the variant.
  num_heads: int
  emb_dim: int
  block_size: int = 1024
  mlp_ratio: int = 4
  mlp_dim: int | None = None  # None: mlp_ratio * emb_dim.
  head_dim: int | None = None  # None: emb_dim // num_heads.
  num_kv_heads: int | None = None  # None: num_heads (MHA); 1: MQA.
  position: str = "learned"  # "learned" or "rope".
  rope_theta: float = 10000.0
  norm: str = "layernorm"  # "layernorm" or "rmsnorm".
  mlp: str = "gelu"  # "gelu" (tanh, GPT-2's), "gelu_exact" (erf) or "swiglu".
  tie_embeddings: bool = True
  vocab_multiple: int = 128  # The embedding table is padded to a multiple.
  dropout: float = families.bounded(0.0, 0, 1)
  use_bias: bool = False
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  attention_impl: str | None = None  # None (XLA picks), "xla" or "cudnn".
  scan_layers: bool = False
  remat: str = "none"  # See REMAT_POLICIES.
  lora_rank: int = families.bounded(0, 0)  # > 0: LoRA adapters of it.
  lora_alpha: float = 16.0
  lora_targets: str = "query,value"  # Of LORA_TARGETS.
  cross_attention: bool = False  # Blocks also attend to a `context`.

  @property
  def padded_vocab(self) -> int:
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @property
  def head_size(self) -> int:
    return self.head_dim or self.emb_dim // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def hidden(self) -> int:
    return self.mlp_dim or self.mlp_ratio * self.emb_dim


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("gpt", Config, VARIANTS, variant, overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  """Builds the Linen module from a `config.model` block."""
  fields = families.config_fields(config, Config, {
      "position": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"),
      "mlp": ACTIVATIONS, "remat": tuple(REMAT_POLICIES)})
  families.check_heads(fields, fields.get("head_dim"))
  families.check_lora_targets(fields, LORA_TARGETS)
  cfg = Config(**fields)
  if cfg.num_heads % cfg.kv_heads:
    raise ConfigError(f"num_heads={cfg.num_heads} is not a multiple of "
                     f"num_kv_heads={cfg.kv_heads}.")
  return Model(cfg)


def _norm(cfg: Config, name: str) -> nn.Module:
  return norm(cfg.norm, name, eps=1e-5, use_bias=cfg.use_bias,
              dtype=cfg.dtype, param_dtype=cfg.param_dtype)


def _dense(cfg: Config) -> Dense:
  """The block's projections: LoRA on the targets, GPT-2's scaled init on
  those writing to the residual stream."""
  return Dense(cfg.use_bias, cfg.dtype, cfg.param_dtype,
               lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
               lora_targets=tuple(cfg.lora_targets.split(",")),
               scaled=("out", "proj"), scaled_std=_out_std(cfg))


def rope(x, positions, theta: float):
  """Rotary position embedding of x (B, T, heads, D) at `positions` (T,) or
  (B, T), rotating the two halves of each head (GPT-NeoX / LLaMA layout)."""
  half = x.shape[-1] // 2
  freqs = theta ** (-np.arange(half, dtype=np.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freqs  # (..., T, half)
  sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin],
                         -1).astype(x.dtype)


class Attention(nn.Module):
  """Causal self-attention (MHA/GQA/MQA), within segments when `where`
  holds a mask; with `decode=True` reads and extends a KV cache."""
  config: Config

  @nn.compact
  def __call__(self, x, where: dict, *, decode: bool):
    cfg = self.config
    rotate = (functools.partial(rope, positions=where["positions"],
                                theta=cfg.rope_theta)
              if cfg.position == "rope" else None)
    return attention.attention(
        self, x, _dense(cfg), attention.Heads(cfg.num_heads, cfg.head_size,
                                              cfg.kv_heads),
        out_dim=cfg.emb_dim, mask=where["mask"], causal=True, rotate=rotate,
        cache_start=where["start"] if decode else None,
        cache_size=cfg.block_size, implementation=cfg.attention_impl)


class CrossAttention(nn.Module):
  """Attention of every position over the whole `context` (B, S, D')."""
  config: Config

  @nn.compact
  def __call__(self, x, context):
    cfg = self.config
    return attention.attention(
        self, x, _dense(cfg), attention.Heads(cfg.num_heads, cfg.head_size),
        out_dim=cfg.emb_dim, context=context.astype(cfg.dtype),
        implementation=cfg.attention_impl)


def _residual(decode: bool) -> tuple:
  """Logical axes of the residual stream between blocks. Its length axis is
  "act_seq": sharding it (sequence parallelism, e.g. over "tensor") splits
  the norms, residual adds and the activations a layer keeps for the
  backward pass; attention and the MLP gather it back. Decoding steps
  (often one position) keep it whole."""
  return ("batch", "length" if decode else "act_seq", "act_embed")


def _out_std(cfg: Config) -> float:
  """GPT-2's scaled init of the projections that write to the residual."""
  return 0.02 / math.sqrt(2 * cfg.num_layers)


class Block(nn.Module):
  """Pre-norm transformer block: (x, where) -> (x, None), scan-compatible;
  `where`: "start" (cache index per row), "positions", "mask" (None: causal
  only)."""
  config: Config
  train: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, where):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=not self.train)
    x = x + dropout(Attention(cfg, name="attn")(
        _norm(cfg, "ln_1")(x), where, decode=self.decode))
    if cfg.cross_attention:
      x = x + dropout(CrossAttention(cfg, name="cross")(
          _norm(cfg, "ln_x")(x), where["context"]))
    x = x + dropout(mlp(_norm(cfg, "ln_2")(x), _dense(cfg), cfg.hidden,
                        cfg.emb_dim, cfg.mlp))
    if attention.explaining(self):  # The logit lens reads it.
      self.sow("intermediates", "residual", x)
    return nn.with_logical_constraint(x, _residual(self.decode)), None


def blocks(cfg, train: bool, decode: bool, block=Block):
  """The layer stack of `block` (a module class of (cfg, train, decode):
  (x, where) -> (x, None)): remat per config (`remat`), then stacked with
  `nn.scan` (`scan_layers`) or a list of `num_layers`."""
  if cfg.remat != "none":
    block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat],
                     prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    stack = nn.scan(block, variable_axes={"params": 0, "cache": 0,
                                          "intermediates": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=nn.broadcast, length=cfg.num_layers,
                    metadata_params={nn.PARTITION_NAME: "layers"})
    return [stack(cfg, train, decode, name="blocks")]
  return [block(cfg, train, decode, name=f"block_{i}")
          for i in range(cfg.num_layers)]


class Model(nn.Module):
  """GPT language model: tokens (B, T) int -> logits (B, T, padded vocab)."""
  config: Config

  @nn.compact
  def __call__(self, tokens, segments=None, positions=None, *,
               train: bool = False, decode: bool = False, lengths=None,
               features: bool = False, context=None):
    """With `features`, the final norm's outputs (B, T, emb_dim) instead of
    logits (a text tower: `two_towers`); `context` (B, S, D'): what
    `cross_attention` blocks attend to. With `decode=True`, tokens continue the sequence held in the cache
    (right-padded rows: `lengths` (B,) real tokens each); `segments` (B, T)
    keep packed documents apart, `positions` (B, T) (by default 0, 1, ...)
    place their tokens."""
    cfg = self.config
    length = tokens.shape[1]
    if decode:  # Each row continues from its own position.
      start = attention.cache_start(self, tokens.shape[0], length,
                                    cfg.block_size, lengths)
      if positions is None:
        positions = start[:, None] + jnp.arange(length)
    else:
      start = None
    wte = nn.Embed(cfg.padded_vocab, cfg.emb_dim, dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, name="wte",
                   embedding_init=normal_init(0.02, ("vocab", "embed")))
    x = wte(tokens)
    if cfg.position == "learned":
      wpe = self.param("wpe", normal_init(0.02, ("position", "embed")),
                       (cfg.block_size, cfg.emb_dim), cfg.param_dtype)
      x = x + (wpe[:length] if positions is None else
               wpe[positions]).astype(cfg.dtype)
    x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, _residual(decode))
    if cfg.cross_attention and context is None:
      raise ConfigError("model.cross_attention needs a `context` to attend to.")
    where = {"start": start, "mask": None, "context": context, "positions": (
        jnp.arange(length) if positions is None else positions)}
    if segments is not None:
      where["mask"] = attention.segment_mask(segments)
    for block in blocks(cfg, train, decode):
      x, _ = block(x, where)
    x = _norm(cfg, "ln_f")(x)
    if features:
      return x
    if cfg.tie_embeddings:
      # Flat tokens, as in `Linear`: one contraction for the gradient.
      logits = wte.attend(x.reshape(-1, x.shape[-1])).reshape(
          x.shape[:-1] + (cfg.padded_vocab,))
    else:
      logits = Linear((cfg.padded_vocab,), ("embed", "vocab"), 0.02, False,
                      cfg.dtype, cfg.param_dtype, name="lm_head")(x)
    logits = logits.astype(jnp.float32)
    if cfg.padded_vocab != cfg.vocab_size:  # Padding ids are never predicted.
      logits = jnp.where(jnp.arange(cfg.padded_vocab) < cfg.vocab_size,
                         logits, -1e9)
    return nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))


default_task = families.lm_task


def num_params(params, *, embeddings: bool = False) -> int:
  """Parameter count; like nanoGPT, excludes position embeddings by default."""
  total = families.num_params(params)
  return total if embeddings or "wpe" not in params else (
      total - params["wpe"].size)


def _attention_flops(cfg: Config, args) -> float:
  return 12 * cfg.num_layers * cfg.num_heads * cfg.head_size * args[0].shape[1]


def trainable_presets(config) -> dict:
  """Names for `optimizer.trainable`: "lora", the LoRA adapters only."""
  del config
  return {"lora": r"lora_"}


def flops_per_item(model: Model, params, args) -> float:
  """Training FLOPs per token, nanoGPT / PaLM: 6N + 12 L H Q T."""
  return 6 * num_params(params) + _attention_flops(model.config, args)


def flops_per_item_causal(model: Model, params, args) -> float:
  """MaxText's convention: causal attention does half the score work."""
  return (6 * num_params(params) +
          _attention_flops(model.config, args) / 2)


def load_hf(model_dir: str, config) -> dict:
  """Variables (numpy) of a Hugging Face GPT-2 or LLaMA checkpoint for our
  `config.model` block, whose architecture must be the checkpoint's."""
  hf = hf_layout.read_config(model_dir, ("gpt2", "llama"))
  cfg = make(config).config
  ours = {**dataclasses.asdict(cfg), "mlp_dim": cfg.hidden,
          "head_dim": cfg.head_size, "num_kv_heads": cfg.kv_heads}
  hf_layout.check_fields(ours, {"vocab_size": hf["vocab_size"],
                                **gpt_hf.config_fields(hf)}, model_dir)
  shapes = families.variable_shapes(Model(cfg), (1, 8), jnp.int32)
  return {"params": gpt_hf.read_params(model_dir, cfg, shapes["params"])}


def export_hf(variables, config, class_names) -> hf_layout.HFExport:
  """The Hugging Face directory of our model (see `gpt_hf.export`)."""
  del class_names
  return gpt_hf.export(variables["params"], make(config).config)


def capabilities(config) -> dict:
  """GPT decodes with its KV cache, up to `block_size` tokens; explaining
  reads its token embeddings ("wte"), attention and logit lens ("ln_f")."""
  return {"decode": config.block_size, "token_embeddings": "wte",
          "attention": None, "lens": "ln_f"}


adapt_params = None  # Hugging Face checkpoints need no fitting.
