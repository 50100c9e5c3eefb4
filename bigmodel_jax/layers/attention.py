"""Multi-head attention, one for every family.

  out = attention(module, x, dense, heads, mask=..., causal=True, ...)

Self-attention over x, or cross-attention over `context`; bidirectional or
causal; `mask` (B, 1, T, S) booleans (padding, packed segments: see
`padding_mask`, `segment_mask`); `bias` (B|1, H, T, S) added to the scores
(relative positions), or a function of the projected queries and keys
(B, T|S, H, D) that gives it (DeBERTa's disentangled attention); `scale`
of the scores (default 1/sqrt(head_dim)); `rotate` applied to queries and
keys (RoPE); grouped
key/value heads (GQA / MQA). The "query", "key", "value" and "out"
projections are made by the family's `dense` (layers.linear.Dense: LoRA,
initialisers) in the calling `module`, so each family keeps its parameter
paths. With `cache_start` (B,) the keys and values are written into
`module`'s "cache" collection at each row's position and the queries
attend over it (decoding); its variables carry logical axis names, so
servers shard them by the rules like any activation. Applied with
`mutable=["intermediates"]`, it also sows its attention weights as
"attention" (`attribution.py`).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

ACT = ("batch", "length", "act_heads", "act_kv")
CACHE = ("batch", "act_heads", "length", "act_kv")


@dataclasses.dataclass(frozen=True)
class Heads:
  """Query heads, their size, key/value heads and the kernels' axis name
  of the key/value heads."""
  num_heads: int
  head_dim: int
  kv_heads: int | None = None  # None: num_heads.
  kv_axis: str = "kv_heads"

  @property
  def kv(self) -> int:
    return self.kv_heads or self.num_heads


def padding_mask(valid):
  """(B, S) booleans of real keys -> an attention mask (B, 1, 1, S)."""
  return valid[:, None, None, :]


def segment_mask(segments):
  """(B, T) segment ids -> a mask (B, 1, T, T) within segments."""
  return (segments[:, :, None] == segments[:, None, :])[:, None]


def attention(module: nn.Module, x, dense, heads: Heads, *, out_dim: int,
              context=None, mask=None, bias=None, scale=None,
              causal: bool = False, rotate=None, cache_start=None,
              cache_size: int = 0, implementation=None):
  """Attention of x (B, T, D) over itself or `context` (B, S, D'); see the
  module doc. Returns (B, T, out_dim)."""
  source = x if context is None else context
  q = dense((heads.num_heads, heads.head_dim), ("embed", "heads", "kv"),
            "query")(x)
  k, v = (dense((heads.kv, heads.head_dim), ("embed", heads.kv_axis, "kv"),
                name)(source) for name in ("key", "value"))
  if rotate is not None:
    q, k = rotate(q), rotate(k)
  q, k, v = (nn.with_logical_constraint(t, ACT) for t in (q, k, v))
  if callable(bias):
    bias = bias(q, k)
  if cache_start is not None:
    out = _cached(module, q, k, v, cache_start, cache_size, mask, bias, scale)
  elif explaining(module):
    probs = probabilities(q, k, mask, bias, causal, scale)
    module.sow("intermediates", "attention", probs)
    out = jnp.einsum("bhts,bshd->bthd", probs.astype(v.dtype),
                     jnp.repeat(v, q.shape[2] // v.shape[2], axis=2))
  else:
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                       scale=scale, is_causal=causal,
                                       implementation=implementation)
  out = nn.with_logical_constraint(out, ACT)
  return dense((out_dim,), ("heads", "kv", "embed"), "out")(out)


def cache_start(module: nn.Module, rows: int, length: int, size: int,
                lengths=None):
  """Where each of `rows` rows writes its `length` new tokens in a KV cache
  of `size` positions (B,): the row's own count of cached tokens, kept in
  `module`'s "cache" collection as "index" and advanced by `lengths` (real
  tokens of right-padded rows; None: all `length`). Idle rows are clamped
  so they never write past the cache."""
  index = module.variable("cache", "index", nn.with_logical_partitioning(
      jnp.zeros, ("batch",)), (rows,), jnp.int32)
  start = jnp.minimum(index.value, size - length)
  index.value = start + (length if lengths is None else lengths)
  return start


def explaining(module: nn.Module) -> bool:
  """Whether `module` runs for `attribution.py`: "intermediates" mutable
  outside init (so sown values never become variables of a run)."""
  return (module.is_mutable_collection("intermediates") and
          not module.is_initializing())


def probabilities(q, k, mask=None, bias=None, causal: bool = False,
                  scale=None):
  """(B, heads, T, S) attention weights, as `dot_product_attention` computes
  them inside: explaining a model reads them (sown as "attention" in
  "intermediates" when that collection is mutable)."""
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)  # GQA groups.
  scores = jnp.einsum("bthd,bshd->bhts", q, k,
                      preferred_element_type=jnp.float32)
  scores = _scaled(scores, q.shape[-1], scale)
  if bias is not None:
    scores = scores + bias
  keep = jnp.ones(scores.shape, bool)
  if mask is not None:
    keep = keep & mask
  if causal:
    keep = keep & jnp.tril(jnp.ones(scores.shape[-2:], bool))
  return jax.nn.softmax(jnp.where(keep, scores, -1e30), -1)


def _scaled(scores, head_dim: int, scale):
  """Scores times `scale`, by default divided by sqrt(head_dim)."""
  return scores / np.sqrt(head_dim) if scale is None else scores * scale


def _cached(module, q, k, v, start, size: int, mask, bias, scale):
  """Writes each row's k, v at its own cache position `start` (B,) and
  attends causally over the cache. The cache is heads-major
  (B, kv_heads, size, D), so a one-position step reads it without
  transposing it."""
  batch, length, kv_heads, head_dim = k.shape
  shape = (batch, kv_heads, size, head_dim)
  zeros = nn.with_logical_partitioning(jnp.zeros, CACHE)
  cached_k = module.variable("cache", "cached_key", zeros, shape, k.dtype)
  cached_v = module.variable("cache", "cached_value", zeros, shape, v.dtype)
  write = jax.vmap(lambda cache, new, i: jax.lax.dynamic_update_slice(
      cache, new.swapaxes(0, 1), (0, i, 0)))
  cached_k.value = write(cached_k.value, k, start)
  cached_v.value = write(cached_v.value, v, start)
  query = q.reshape(batch, length, kv_heads, -1, head_dim)  # Groups (GQA).
  scores = jnp.einsum("btkgd,bksd->bkgts", query, cached_k.value,
                      preferred_element_type=jnp.float32)
  seen = jnp.arange(size) <= (start[:, None] + jnp.arange(length))[..., None]
  if mask is not None:
    seen = seen & mask.reshape(batch, length, size)
  scores = _scaled(scores, head_dim, scale)
  if bias is not None:
    scores = scores + bias.reshape(bias.shape[0], kv_heads, -1, length, size)
  scores = jnp.where(seen[:, None, None], scores, -1e30)
  weights = jax.nn.softmax(scores, -1).astype(v.dtype)
  out = jnp.einsum("bkgts,bksd->btkgd", weights, cached_v.value)
  return out.reshape(q.shape)
