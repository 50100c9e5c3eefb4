"""BERT-family encoder (BERT, MiniLM; ALBERT switches) with logical axis names.

Post-LayerNorm blocks as in the original BERT; token + position + segment
embeddings; bidirectional attention that ignores padding (`pad_id`). Heads
by `head`: "none" (hidden states), "mlm" (transform + LayerNorm + decoder
tied to the word embeddings; with `nsp`, also next-sentence logits from the
pooler: {"logits": ..., "nsp": ...}) or "classifier" (tanh pooler on the
first token + linear; `pool="mean"` pools the mean of the real tokens
instead). RoBERTa ("roberta-*" variants): `position_offset` counts the
positions of real tokens from padding_idx + 1 (`pad_id` 1, one segment
type), trained with `nsp=False` and dynamic masking (data). ALBERT
("albert-*"): `embed_dim` factorises the embeddings, `share_layers` reuses
one layer's parameters at every depth. LoRA: `lora_rank` > 0 adds low-rank adapters to
the `lora_targets` projections of every layer. `trainable_presets` names the
parameter subsets that `optimizer.trainable` can train (head, topK, lora).

  model = bert.make(bert.model_config("base", vocab_size=30522))
  hidden = model.apply({"params": params}, tokens)     # (B, T, emb_dim)
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax.errors import ConfigError
from bigmodel_jax import families
from bigmodel_jax.hf import bert as bert_hf, layout as hf_layout
from bigmodel_jax.layers import attention
from bigmodel_jax.layers.linear import Dense, normal_init, zeros_init
from bigmodel_jax.layers.mlp import mlp
from bigmodel_jax.layers.norm import norm

# The settings that make a size RoBERTa (positions from pad_id + 1 = 2, 512
# of them usable) or ALBERT (factorised embeddings, one shared layer).
ROBERTA = dict(pad_id=1, position_offset=2, max_positions=514,
               type_vocab_size=1, layer_norm_eps=1e-5)
ALBERT = dict(embed_dim=128, share_layers=True)
# Sizes of Google's BERT release (Turc et al. 2019 for tiny/mini/small),
# Microsoft's MiniLM-L6-H384 (all-MiniLM-L6-v2), Facebook's RoBERTa and
# Google's ALBERT v2 (published with their vocabularies: 50,265 and 30,000).
VARIANTS = {
    "tiny": dict(num_layers=2, emb_dim=128, num_heads=2, mlp_dim=512),
    "mini": dict(num_layers=4, emb_dim=256, num_heads=4, mlp_dim=1024),
    "small": dict(num_layers=4, emb_dim=512, num_heads=8, mlp_dim=2048),
    "base": dict(num_layers=12, emb_dim=768, num_heads=12, mlp_dim=3072),
    "large": dict(num_layers=24, emb_dim=1024, num_heads=16, mlp_dim=4096),
    "minilm-L6-H384": dict(num_layers=6, emb_dim=384, num_heads=12,
                           mlp_dim=1536),
    "roberta-base": dict(num_layers=12, emb_dim=768, num_heads=12,
                         mlp_dim=3072, **ROBERTA),
    "roberta-large": dict(num_layers=24, emb_dim=1024, num_heads=16,
                          mlp_dim=4096, **ROBERTA),
    "albert-base": dict(num_layers=12, emb_dim=768, num_heads=12,
                        mlp_dim=3072, **ALBERT),
    "albert-xxlarge": dict(num_layers=12, emb_dim=4096, num_heads=64,
                           mlp_dim=16384, **ALBERT),
}

# Projections of a layer that can carry LoRA adapters (`lora_targets`).
LORA_TARGETS = ("query", "key", "value", "out", "fc", "proj")


@dataclasses.dataclass(frozen=True)
class Config:
  """The BERT fields and their defaults (the only ones): see the module doc."""
  vocab_size: int  # From the data.
  num_layers: int
  emb_dim: int
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None  # None: emb_dim // num_heads.
  max_positions: int = 512  # Rows of the position table.
  type_vocab_size: int = 2
  pad_id: int = families.bounded(0, 0)
  position_offset: int = families.bounded(0, 0)  # RoBERTa: pad_id + 1.
  dropout: float = families.bounded(0.1, 0, 1)
  layer_norm_eps: float = 1e-12
  embed_dim: int | None = None  # ALBERT: factorised embedding size.
  share_layers: bool = False  # ALBERT: one set of layer parameters.
  head: str = "none"  # "none", "mlm" or "classifier".
  nsp: bool | None = None  # "mlm": next-sentence head (from the data).
  pool: str = "cls"  # Classifier input: "cls" (first token) or "mean".
  num_classes: int | None = None  # "classifier": from the data.
  lora_rank: int = families.bounded(0, 0)  # > 0: LoRA adapters of it.
  lora_alpha: float = 16.0
  lora_targets: str = "query,value"  # Of LORA_TARGETS.
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  attention_impl: str | None = None


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("bert", Config, VARIANTS, variant, overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  fields = families.config_fields(config, Config, {
      "head": ("none", "mlm", "classifier"), "pool": ("cls", "mean")})
  families.check_heads(fields, fields.get("head_dim"))
  families.check_lora_targets(fields, LORA_TARGETS)
  if fields["head"] == "classifier" and not fields.get("num_classes"):
    raise ConfigError("config.model.num_classes is not set (normally from "
                     "the data) for head='classifier'.")
  return Model(Config(**fields))


def _dense(cfg: Config) -> Dense:
  """Biased projections; in the layers, a LoRA target gets adapters."""
  return Dense(True, cfg.dtype, cfg.param_dtype, lora_rank=cfg.lora_rank,
               lora_alpha=cfg.lora_alpha,
               lora_targets=tuple(cfg.lora_targets.split(",")))


def layer_norm(cfg, name: str) -> nn.Module:
  """A LayerNorm of a config with layer_norm_eps, dtype and param_dtype."""
  return norm("layernorm", name, eps=cfg.layer_norm_eps, dtype=cfg.dtype,
              param_dtype=cfg.param_dtype)


def post_norm(cfg, residual, attended, dense, dropout,
              activation: str = "gelu_exact"):
  """The rest of a post-LN layer (BERT's, DeBERTa's, Transformer-XL's) after
  its attention: x = LN(residual + attended); LN(x + mlp(x)), in the calling
  module."""
  x = layer_norm(cfg, "attn_ln")(residual + dropout(attended))
  y = mlp(x, dense, cfg.mlp_dim, cfg.emb_dim, activation)
  x = layer_norm(cfg, "mlp_ln")(x + dropout(y))
  return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


class Layer(nn.Module):
  """Post-LN encoder layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""
  config: Config
  train: bool = False

  @nn.compact
  def __call__(self, x, mask):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=not self.train)
    heads = attention.Heads(cfg.num_heads,
                            cfg.head_dim or cfg.emb_dim // cfg.num_heads,
                            kv_axis="heads")
    y = attention.attention(self, x, _dense(cfg), heads, out_dim=cfg.emb_dim,
                            mask=attention.padding_mask(mask),
                            implementation=cfg.attention_impl)
    return post_norm(cfg, x, y, _dense(cfg), dropout)


class Model(nn.Module):
  """tokens (B, T) int [, segments (B, T)] -> hidden states or head outputs."""
  config: Config

  @nn.compact
  def __call__(self, tokens, segments=None, *, train: bool = False,
               embed: bool = False, features: bool = False):
    """The head's outputs; with `embed`, the pooled hidden states (`pool`)
    at unit length instead (sentence embeddings, whatever the head); with
    `features`, the last layer's hidden states (B, T, emb_dim) (a text
    tower: `two_towers`)."""
    cfg = self.config
    mask = tokens != cfg.pad_id
    width = cfg.embed_dim or cfg.emb_dim
    words = nn.Embed(cfg.vocab_size, width, dtype=cfg.dtype,
                     param_dtype=cfg.param_dtype, name="word_embeddings",
                     embedding_init=normal_init(0.02, ("vocab",
                                                              "embed")))
    positions = self.param("position_embeddings",
                           normal_init(0.02, ("position", "embed")),
                           (cfg.max_positions, width), cfg.param_dtype)
    types = self.param("token_type_embeddings",
                       normal_init(0.02, (None, "embed")),
                       (cfg.type_vocab_size, width), cfg.param_dtype)
    segments = jnp.zeros_like(tokens) if segments is None else segments
    x = (words(tokens) +
         _positions(positions, mask, cfg.position_offset).astype(cfg.dtype) +
         jnp.take(types, segments, axis=0).astype(cfg.dtype))
    x = layer_norm(cfg, "embeddings_ln")(x)
    x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
    if cfg.embed_dim:
      x = _dense(cfg)((cfg.emb_dim,), ("embed", "mlp"), "embed_proj")(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    shared = Layer(cfg, train, name="layer") if cfg.share_layers else None
    for i in range(cfg.num_layers):
      x = (shared or Layer(cfg, train, name=f"layer_{i}"))(x, mask)
    if features:
      return x
    if embed:
      vectors = (x[:, 0] if cfg.pool == "cls" else
                 mean_pool(x, tokens, cfg.pad_id))
      return vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    if cfg.head == "mlm":
      y = _dense(cfg)((width,), ("embed", "mlp"), "mlm_transform")(x)
      y = layer_norm(cfg, "mlm_ln")(jax.nn.gelu(y, approximate=False))
      bias = self.param("mlm_bias", zeros_init(("vocab",)),
                        (cfg.vocab_size,), cfg.param_dtype)
      logits = (words.attend(y) + bias).astype(jnp.float32)
      if not cfg.nsp:
        return logits
      return {"logits": logits,
              "nsp": self._classify(x[:, 0], 2, "nsp", train)}
    if cfg.head == "classifier":
      first = x[:, 0] if cfg.pool == "cls" else mean_pool(x, tokens,
                                                          cfg.pad_id)
      return self._classify(first, cfg.num_classes, "classifier", train)
    return x

  def _classify(self, pooled, num_classes: int, name: str, train: bool):
    """BERT's pooler (dense + tanh) and dropout, then a linear layer."""
    cfg = self.config
    pooled = jnp.tanh(_dense(cfg)((cfg.emb_dim,), ("embed", "mlp"),
                             "pooler")(pooled))
    pooled = nn.Dropout(cfg.dropout, deterministic=not train)(pooled)
    return _dense(cfg)((num_classes,), ("mlp", "classes"),
                  name)(pooled).astype(jnp.float32)


def _positions(table, mask, offset: int):
  """Position embeddings (B, T, D): rows 0.. (BERT), or with `offset`
  (RoBERTa) rows offset.. for the real tokens and offset - 1 for padding."""
  if not offset:
    return table[:mask.shape[1]][None]
  ids = jnp.where(mask, jnp.cumsum(mask, axis=1) - 1 + offset, offset - 1)
  return jnp.take(table, ids, axis=0)


def default_task(config) -> str:
  if config.head == "none":
    raise ConfigError("A BERT with head='none' has no task to train; set "
                     "config.model.head to 'mlm' or 'classifier'.")
  return {"mlm": "mlm", "classifier": "classification"}[config.head]


num_params = families.num_params


def flops_per_item(model: Model, params, args) -> float:
  """Training FLOPs per token: 6N + 12 L H Q T (bidirectional)."""
  cfg = model.config
  return (6 * num_params(params) +
          12 * cfg.num_layers * cfg.emb_dim * args[0].shape[1])


def mean_pool(hidden, tokens, pad_id: int = 0):
  """Mean of the hidden states of real (non-padding) tokens: (B, D)."""
  mask = (tokens != pad_id)[..., None].astype(hidden.dtype)
  return (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1)


def trainable_presets(config) -> dict:
  """Names for `optimizer.trainable`: regexes over "/"-joined parameter
  paths. "head": the task head only; "topK": the top K layers and the head;
  "lora": the LoRA adapters and the head."""
  return families.layer_presets(
      0 if config.share_layers else config.num_layers,
      r"^(pooler|classifier|mlm_|nsp/)")


def from_hf(model_dir: str, variant: str = "base", **overrides):
  """(config block, params as numpy) of a Hugging Face BERT checkpoint."""
  config = model_config(variant, **{**bert_hf.config_fields(model_dir),
                                    **overrides})
  return config, load_hf(model_dir, config)["params"]


def load_hf(model_dir: str, config) -> dict:
  """Variables (numpy) of a Hugging Face checkpoint for our `config.model`
  block, whose architecture must be the checkpoint's; a head the checkpoint
  lacks, or one of another class count, is left out (it keeps its init)."""
  ours = make(config).config
  hf_layout.check_fields(dataclasses.asdict(ours),
                         bert_hf.config_fields(model_dir), model_dir)
  shapes = families.variable_shapes(Model(ours), (1, 8), jnp.int32)
  return {"params": bert_hf.read_params(model_dir, ours, shapes["params"])}


def export_hf(variables, config, class_names) -> hf_layout.HFExport:
  """The Hugging Face directory of our model (see `bert_hf.export`)."""
  return bert_hf.export(variables["params"], make(config).config, class_names)


def capabilities(config) -> dict:
  """Every BERT embeds (`apply(..., embed=True)`); explaining reads its
  token embeddings ("word_embeddings") and attention."""
  del config
  return {"embed": None, "token_embeddings": "word_embeddings",
          "attention": None}


adapt_params = None  # Hugging Face checkpoints need no fitting.
