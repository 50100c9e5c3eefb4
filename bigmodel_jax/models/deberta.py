"""DeBERTa v2 / v3 encoder (He et al. 2021) with logical axis names.

BERT's post-LayerNorm layers with disentangled attention: the scores add to
content-to-content (queries . keys) content-to-position (queries against
the keys' projection of relative-position embeddings) and position-to-content
(keys against their queries' projection), all scaled by 1/sqrt(3 head_dim).
Relative positions i - j are log-bucketed beyond `position_buckets` / 2
up to `max_relative_positions`; the relative embeddings (2 x buckets rows)
are LayerNormed, and with `share_att_key` projected by the layer's own query
and key projections (v2/v3). No absolute positions enter the input unless
`position_biased_input`; `type_vocab_size` 0 has no segment embeddings;
`conv_kernel_size` > 0 adds v2-xlarge's convolution beside the first layer.
Padding is masked for queries and keys, and zeroed after the embeddings.

Heads by `head`: "none" (hidden states), "mlm" (dense + GELU + LayerNorm,
decoder tied to the word embeddings) or "classifier" (`pool` "cls": the
ContextPooler, dense + GELU on the first token, then linear). With
`emd_steps` > 0 the MLM head first runs the enhanced mask decoder of the
paper: the last layer again, `emd_steps` times, with queries that start at
the last hidden states plus absolute position embeddings, over keys and
values of the layer before (transformers' checkpoints drop it: 0 there).

  model = deberta.make(deberta.model_config("v3-base", vocab_size=128100))
  hidden = model.apply({"params": params}, tokens)     # (B, T, emb_dim)
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
from bigmodel_jax.hf import deberta as deberta_hf, layout as hf_layout
from bigmodel_jax.layers import attention
from bigmodel_jax.layers.linear import Dense, normal_init, zeros_init
from bigmodel_jax.models import bert

_V2_XL = dict(conv_kernel_size=3, conv_act="gelu")
# Microsoft's releases (vocabulary 128,100: 128K SentencePiece + specials).
VARIANTS = {
    "v3-xsmall": dict(num_layers=12, emb_dim=384, num_heads=6, mlp_dim=1536),
    "v3-small": dict(num_layers=6, emb_dim=768, num_heads=12, mlp_dim=3072),
    "v3-base": dict(num_layers=12, emb_dim=768, num_heads=12, mlp_dim=3072),
    "v3-large": dict(num_layers=24, emb_dim=1024, num_heads=16,
                     mlp_dim=4096),
    "v2-xlarge": dict(num_layers=24, emb_dim=1536, num_heads=24,
                      mlp_dim=6144, **_V2_XL),
    "v2-xxlarge": dict(num_layers=48, emb_dim=1536, num_heads=24,
                       mlp_dim=6144, **_V2_XL),
}
LORA_TARGETS = bert.LORA_TARGETS
POSITION_ATTENTION = ("c2p", "p2c")


@dataclasses.dataclass(frozen=True)
class Config:
  """The DeBERTa fields and their defaults (the only ones): see the doc."""
  vocab_size: int  # From the data.
  num_layers: int
  emb_dim: int
  num_heads: int
  mlp_dim: int
  embed_dim: int | None = None  # Embedding width, projected to emb_dim.
  max_positions: int = 512
  position_biased_input: bool = False
  type_vocab_size: int = families.bounded(0, 0)
  position_buckets: int = families.bounded(256, 0)  # 0: no buckets.
  max_relative_positions: int | None = None  # None: max_positions.
  position_attention: str = "c2p,p2c"  # Of POSITION_ATTENTION.
  share_att_key: bool = True
  norm_rel_embeddings: bool = True
  conv_kernel_size: int = families.bounded(0, 0)
  conv_act: str = "tanh"
  layer_norm_eps: float = 1e-7
  pad_id: int = families.bounded(0, 0)
  dropout: float = families.bounded(0.1, 0, 1)
  head: str = "none"  # "none", "mlm" or "classifier".
  emd_steps: int = families.bounded(0, 0)  # Enhanced mask decoder passes.
  pool: str = "cls"  # Classifier input: "cls" or "mean".
  num_classes: int | None = None  # "classifier": from the data.
  lora_rank: int = families.bounded(0, 0)
  lora_alpha: float = 16.0
  lora_targets: str = "query,value"  # Of LORA_TARGETS.
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  attention_impl: str | None = None

  @property
  def span(self) -> int:
    """Relative distances the embeddings tell apart on each side."""
    return self.position_buckets or self.max_relative_positions or (
        self.max_positions)


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("deberta", Config, VARIANTS, variant,
                                 overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  fields = families.config_fields(config, Config, {
      "head": ("none", "mlm", "classifier"), "pool": ("cls", "mean"),
      "conv_act": ("gelu", "tanh")})
  families.check_heads(fields)
  families.check_lora_targets(fields, LORA_TARGETS)
  unknown = set(fields.get("position_attention", "").split(",")) - {
      "", *POSITION_ATTENTION}
  if unknown:
    raise ConfigError(f"config.model.position_attention has {sorted(unknown)}"
                      f"; choose from {POSITION_ATTENTION}.")
  if fields["head"] == "classifier" and not fields.get("num_classes"):
    raise ConfigError("config.model.num_classes is not set (normally from "
                      "the data) for head='classifier'.")
  return Model(Config(**fields))


def log_buckets(relative: np.ndarray, buckets: int, max_position: int
                ) -> np.ndarray:
  """DeBERTa's relative positions: exact within buckets / 2, then
  logarithmic up to `max_position` (computed in float32 as the reference
  does, so the buckets are the same integers)."""
  mid = buckets // 2
  sign = np.sign(relative)
  distance = np.where(np.abs(relative) < mid, mid - 1, np.abs(relative))
  log_pos = np.ceil(np.log(distance.astype(np.float32) / np.float32(mid)) /
                    np.log(np.float32((max_position - 1) / mid)) *
                    np.float32(mid - 1)) + mid
  return np.where(distance <= mid, relative, log_pos * sign).astype(np.int32)


def relative_positions(cfg: Config, length: int) -> np.ndarray:
  """(T, T) relative positions i - j as the embeddings index them."""
  relative = np.arange(length)[:, None] - np.arange(length)[None, :]
  if cfg.position_buckets:
    relative = log_buckets(relative, cfg.position_buckets,
                           cfg.max_relative_positions or cfg.max_positions)
  return relative


def _dense(cfg: Config) -> Dense:
  return Dense(True, cfg.dtype, cfg.param_dtype, lora_rank=cfg.lora_rank,
               lora_alpha=cfg.lora_alpha,
               lora_targets=tuple(cfg.lora_targets.split(",")))


class _Shared:
  """A family's `dense` that makes each named projection once, so the
  relative embeddings go through the layer's own query and key."""

  def __init__(self, dense: Dense):
    self.dense, self.made = dense, {}

  def __call__(self, features, names, name):
    if name not in self.made:
      self.made[name] = self.dense(features, names, name)
    return self.made[name]


class Layer(nn.Module):
  """Post-LN layer with disentangled attention of x (or of `queries`, the
  enhanced mask decoder's, over x)."""
  config: Config
  train: bool = False

  @nn.compact
  def __call__(self, x, mask, relative, rel_embeddings, queries=None):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout, deterministic=not self.train)
    head_dim = cfg.emb_dim // cfg.num_heads
    kinds = [k for k in cfg.position_attention.split(",") if k]
    dense = _Shared(_dense(cfg))
    heads = attention.Heads(cfg.num_heads, head_dim, kv_axis="heads")
    scale = 1 / np.sqrt(head_dim * (1 + len(kinds)))

    def position_scores(q, k):
      """(B, H, T, S): content-to-position plus position-to-content."""
      span, score = cfg.span, 0
      features, names = (cfg.num_heads, head_dim), ("embed", "heads", "kv")
      if "c2p" in kinds:
        key = dense(features, names, "key" if cfg.share_att_key else
                    "pos_key")(rel_embeddings)
        c2p = jnp.einsum("bthd,rhd->bhtr", q, key)
        index = np.clip(relative + span, 0, 2 * span - 1)
        score += jnp.take_along_axis(c2p, index[None, None], -1) * scale
      if "p2c" in kinds:
        query = dense(features, names, "query" if cfg.share_att_key else
                      "pos_query")(rel_embeddings)
        p2c = jnp.einsum("bshd,rhd->bhsr", k, query)
        index = np.clip(-relative + span, 0, 2 * span - 1)
        score += jnp.swapaxes(
            jnp.take_along_axis(p2c, index[None, None], -1), -1, -2) * scale
      return score

    source = x if queries is None else queries
    y = attention.attention(
        self, source, dense, heads, out_dim=cfg.emb_dim,
        context=None if queries is None else x, mask=mask,
        bias=position_scores if kinds else None, scale=scale,
        implementation=cfg.attention_impl)
    return bert.post_norm(cfg, source, y, dense, dropout)


class Model(nn.Module):
  """tokens (B, T) int [, segments (B, T)] -> hidden states or head outputs."""
  config: Config

  @nn.compact
  def __call__(self, tokens, segments=None, *, train: bool = False,
               embed: bool = False, features: bool = False):
    """As `bert.Model`: the head's outputs; with `embed`, the pooled hidden
    states at unit length; with `features`, the last hidden states."""
    cfg = self.config
    valid = tokens != cfg.pad_id
    width = cfg.embed_dim or cfg.emb_dim
    dropout = nn.Dropout(cfg.dropout, deterministic=not train)
    words = nn.Embed(cfg.vocab_size, width, dtype=cfg.dtype,
                     param_dtype=cfg.param_dtype, name="word_embeddings",
                     embedding_init=normal_init(0.02, ("vocab", "embed")))
    x = words(tokens)
    positions = None
    if cfg.position_biased_input or cfg.emd_steps:
      positions = self.param("position_embeddings",
                             normal_init(0.02, ("position", "embed")),
                             (cfg.max_positions, width), cfg.param_dtype)
    if cfg.position_biased_input:
      x = x + positions[:tokens.shape[1]].astype(cfg.dtype)
    if cfg.type_vocab_size:
      types = self.param("token_type_embeddings",
                         normal_init(0.02, (None, "embed")),
                         (cfg.type_vocab_size, width), cfg.param_dtype)
      segments = jnp.zeros_like(tokens) if segments is None else segments
      x = x + jnp.take(types, segments, axis=0).astype(cfg.dtype)
    if cfg.embed_dim:
      x = Dense(False, cfg.dtype, cfg.param_dtype)(
          (cfg.emb_dim,), ("embed", "mlp"), "embed_proj")(x)
    x = bert.layer_norm(cfg, "embeddings_ln")(x) * valid[..., None]
    x = dropout(x)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    relative = relative_positions(cfg, tokens.shape[1])
    rel_embeddings = self.param("rel_embeddings",
                                normal_init(0.02, ("position", "embed")),
                                (2 * cfg.span, cfg.emb_dim), cfg.param_dtype)
    if cfg.norm_rel_embeddings:
      rel_embeddings = bert.layer_norm(cfg, "rel_ln")(rel_embeddings)
    rel_embeddings = dropout(rel_embeddings)
    mask = valid[:, None, :, None] & valid[:, None, None, :]
    embedded, layers, states = x, [], [x]
    for i in range(cfg.num_layers):
      layers.append(Layer(cfg, train, name=f"layer_{i}"))
      x = layers[-1](x, mask, relative, rel_embeddings)
      if i == 0 and cfg.conv_kernel_size:
        x = self._convolved(embedded, x, valid, dropout)
      states.append(x)
    if features:
      return x
    if embed:
      vectors = (x[:, 0] if cfg.pool == "cls" else
                 bert.mean_pool(x, tokens, cfg.pad_id))
      return vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    if cfg.head == "mlm":
      queries = x
      for _ in range(cfg.emd_steps):  # The enhanced mask decoder.
        queries = layers[-1](
            states[-2], mask, relative, rel_embeddings,
            queries=queries + positions[:tokens.shape[1]].astype(cfg.dtype))
      y = _dense(cfg)((width,), ("embed", "mlp"), "mlm_transform")(queries)
      y = bert.layer_norm(cfg, "mlm_ln")(jax.nn.gelu(y, approximate=False))
      bias = self.param("mlm_bias", zeros_init(("vocab",)),
                        (cfg.vocab_size,), cfg.param_dtype)
      return (words.attend(y) + bias).astype(jnp.float32)
    if cfg.head == "classifier":
      first = (x[:, 0] if cfg.pool == "cls" else
               bert.mean_pool(x, tokens, cfg.pad_id))
      pooled = jax.nn.gelu(_dense(cfg)((cfg.emb_dim,), ("embed", "mlp"),
                                       "pooler")(dropout(first)),
                           approximate=False)
      return _dense(cfg)((cfg.num_classes,), ("mlp", "classes"), "classifier")(
          dropout(pooled)).astype(jnp.float32)
    return x

  def _convolved(self, embedded, x, valid, dropout):
    """v2-xlarge's convolution of the embeddings over length, added to the
    first layer's output: LN(x + act(conv(embedded))), padding zeroed."""
    cfg = self.config
    k = cfg.conv_kernel_size
    kernel = self.param("conv_kernel", normal_init(0.02, (None, "embed",
                                                          "mlp")),
                        (k, cfg.emb_dim, cfg.emb_dim), cfg.param_dtype)
    bias = self.param("conv_bias", zeros_init(("mlp",)), (cfg.emb_dim,),
                      cfg.param_dtype)
    out = jax.lax.conv_general_dilated(
        embedded, kernel.astype(cfg.dtype), (1,), [((k - 1) // 2, k // 2)],
        dimension_numbers=("NWC", "WIO", "NWC")) + bias.astype(cfg.dtype)
    out = jnp.where(valid[..., None], out, 0)
    out = {"gelu": lambda v: jax.nn.gelu(v, approximate=False),
           "tanh": jnp.tanh}[cfg.conv_act](dropout(out))
    return bert.layer_norm(cfg, "conv_ln")(x + out) * valid[..., None]


def default_task(config) -> str:
  return bert.default_task(config)


num_params = families.num_params


def flops_per_item(model: Model, params, args) -> float:
  """Training FLOPs per token: BERT's 6N + 12 L H T, plus the position
  scores: per layer and token, 2 x 2 x (2 span) x H each way, x 3."""
  cfg = model.config
  length = args[0].shape[1]
  kinds = len([k for k in cfg.position_attention.split(",") if k])
  return (bert.flops_per_item(model, params, args) +
          12 * kinds * cfg.num_layers * cfg.emb_dim * min(2 * cfg.span,
                                                          2 * length))


def trainable_presets(config) -> dict:
  """As BERT's: "head", "topK", "lora"."""
  return families.layer_presets(config.num_layers, r"^(pooler|classifier|mlm_)")


def from_hf(model_dir: str, variant: str = "v3-base", **overrides):
  """(config block, params as numpy) of a Hugging Face DeBERTa-v2 checkpoint
  (v2 and v3 share transformers' DebertaV2 classes)."""
  config = model_config(variant, **{**deberta_hf.config_fields(model_dir),
                                    **overrides})
  return config, load_hf(model_dir, config)["params"]


def load_hf(model_dir: str, config) -> dict:
  """Variables (numpy) of a Hugging Face checkpoint for our `config.model`
  block, whose architecture must be the checkpoint's; a head it lacks, or
  of another class count, keeps its init."""
  ours = make(config).config
  hf_layout.check_fields(dataclasses.asdict(ours),
                         deberta_hf.config_fields(model_dir), model_dir)
  shapes = families.variable_shapes(Model(ours), (1, 8), jnp.int32)
  return {"params": deberta_hf.read_params(model_dir, ours,
                                           shapes["params"])}


def export_hf(variables, config, class_names) -> hf_layout.HFExport:
  """The Hugging Face directory of our model (see `deberta_hf.export`)."""
  return deberta_hf.export(variables["params"], make(config).config,
                           class_names)


capabilities = bert.capabilities
adapt_params = None
