"""Recurrent language models: stacked LSTM or GRU cells over tokens.

  tokens (B, T) -> embedding -> `num_layers` cells, each scanned over time
  (`nn.scan`) -> logits (B, T, vocab)

The cells are PyTorch's (`torch.nn.LSTM`: gates i, f, g, o; `torch.nn.GRU`:
gates r, z, n, the reset gate applied to the hidden projection), with both
of their biases, so weights copy across (tests/test_rnn.py). A layer
projects its whole input sequence in one matmul; the scan does only the
hidden projection. Dropout (Zaremba et al. 2014) is on every non-recurrent
connection: the embeddings, between layers and before the head. Packed
documents: with `segments` (B, T) the state restarts at zeros where a new
segment begins (order is the recurrence's: `positions` are not used).

Decoding (the "decode" capability): the cache is each layer's state,
"layer_{i}/h" (and "c" for LSTM), (B, hidden_dim) named ("batch",
"act_mlp"). A prefill of right-padded rows keeps each row's state at its
`lengths`-th token; later calls continue from it, a step at a time. The
capability's value, `block_size`, is the longest window decoding reads in
one call (`decoding.generate` restarts from the last half beyond it, the
server's requests fit in it); the state itself has no length limit.

  model = rnn.make(rnn.model_config("char-lstm", vocab_size=65))
  logits = model.apply({"params": params}, tokens)    # (B, T, vocab_size)
"""
import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax import families
from bigmodel_jax.layers.linear import Linear, normal_init

# Gates per cell, and the state each carries.
GATES = {"lstm": 4, "gru": 3}
STATE = {"lstm": ("h", "c"), "gru": ("h",)}

VARIANTS = {
    # GPT "nano"'s parameters (0.80M on tiny_shakespeare's 65 characters):
    # 0.79M and 0.80M.
    "char-lstm": dict(cell="lstm", num_layers=2, hidden_dim=218),
    "char-gru": dict(cell="gru", num_layers=2, hidden_dim=252),
    # Zaremba et al. 2014's Penn Treebank LSTMs (with its 10k words: 19.8M
    # and 66.0M parameters).
    "zaremba-medium": dict(cell="lstm", num_layers=2, hidden_dim=650),
    "zaremba-large": dict(cell="lstm", num_layers=2, hidden_dim=1500),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The RNN fields and their defaults (the only ones): see the module doc."""
  vocab_size: int  # From the data.
  num_layers: int  # From the variant.
  hidden_dim: int
  cell: str = "lstm"  # "lstm" or "gru".
  emb_dim: int | None = None  # None: hidden_dim.
  block_size: int = 1024  # The longest window decoding reads in one call.
  dropout: float = families.bounded(0.0, 0, 1)
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  @property
  def embed_size(self) -> int:
    return self.emb_dim or self.hidden_dim


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant: every field explicit."""
  return families.variant_config("rnn", Config, VARIANTS, variant, overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  return Model(Config(**families.config_fields(config, Config, {
      "cell": tuple(GATES)})))


def _lstm(gates, hidden_gates, state):
  """torch.nn.LSTM's cell: gates (B, 4, H) of the input and the hidden
  state, each with its bias."""
  _, c = state
  i, f, g, o = jnp.unstack((gates + hidden_gates).astype(jnp.float32),
                           axis=1)
  c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
  h = nn.sigmoid(o) * jnp.tanh(c)
  return (h, c)


def _gru(gates, hidden_gates, state):
  """torch.nn.GRU's cell: the reset gate scales the hidden projection
  (bias included) of the candidate."""
  (h,) = state
  x_r, x_z, x_n = jnp.unstack(gates.astype(jnp.float32), axis=1)
  h_r, h_z, h_n = jnp.unstack(hidden_gates.astype(jnp.float32), axis=1)
  r, z = nn.sigmoid(x_r + h_r), nn.sigmoid(x_z + h_z)
  n = jnp.tanh(x_n + r * h_n)
  return ((1 - z) * n + z * h,)


CELLS = {"lstm": _lstm, "gru": _gru}


def _projection(cfg: Config, name: str) -> Linear:
  """(B, ..., in) -> gates (B, ..., gates, hidden_dim), with a bias."""
  return Linear((GATES[cfg.cell], cfg.hidden_dim), ("embed", "gates", "mlp"),
                use_bias=True, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                init="lecun_normal", name=name)


class Step(nn.Module):
  """One time step of a layer: (state, (input gates, keep, reset)) ->
  (state, output). Rows where `keep` is False (padding past their length)
  keep their state; rows where `reset` holds start from zeros."""
  config: Config

  @nn.compact
  def __call__(self, state, inputs):
    cfg = self.config
    gates, keep, reset = inputs
    state = tuple(jnp.where(reset[:, None], 0.0, s) for s in state)
    hidden_gates = _projection(cfg, "hidden")(state[0].astype(cfg.dtype))
    new = CELLS[cfg.cell](gates, hidden_gates, state)
    new = tuple(jnp.where(keep[:, None], n, s) for n, s in zip(new, state))
    return new, new[0].astype(cfg.dtype)


class Layer(nn.Module):
  """A cell scanned over time: x (B, T, in) -> hidden states (B, T, H)."""
  config: Config

  @nn.compact
  def __call__(self, x, keep, reset, decode: bool):
    cfg = self.config
    rows = x.shape[0]
    gates = _projection(cfg, "input")(x)
    if decode:
      cache = [self.variable("cache", name, nn.with_logical_partitioning(
          jnp.zeros, ("batch", "act_mlp")), (rows, cfg.hidden_dim),
                             jnp.float32) for name in STATE[cfg.cell]]
      state = tuple(v.value for v in cache)
    else:
      state = (jnp.zeros((rows, cfg.hidden_dim), jnp.float32),) * len(
          STATE[cfg.cell])
    scan = nn.scan(Step, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    state, out = scan(cfg, name="recurrent")(state, (gates, keep, reset))
    if decode:
      for variable, value in zip(cache, state):
        variable.value = value
    return out


class Model(nn.Module):
  """RNN language model: tokens (B, T) int -> logits (B, T, vocab_size)."""
  config: Config

  @nn.compact
  def __call__(self, tokens, segments=None, positions=None, *,
               train: bool = False, decode: bool = False, lengths=None):
    """With `decode=True`, tokens continue each row's state in the cache
    (right-padded rows: `lengths` (B,) real tokens each); `segments` (B, T)
    restart the state at each new document."""
    del positions  # A recurrence knows the order.
    cfg = self.config
    rows, length = tokens.shape
    keep = (jnp.ones((rows, length), bool) if lengths is None else
            jnp.arange(length) < lengths[:, None])
    reset = jnp.zeros((rows, length), bool)
    if segments is not None:
      reset = reset.at[:, 1:].set(segments[:, 1:] != segments[:, :-1])
    dropout = nn.Dropout(cfg.dropout, deterministic=not train)
    x = nn.Embed(cfg.vocab_size, cfg.embed_size, dtype=cfg.dtype,
                 param_dtype=cfg.param_dtype, name="wte",
                 embedding_init=normal_init(1.0, ("vocab", "embed")))(tokens)
    for i in range(cfg.num_layers):
      x = Layer(cfg, name=f"layer_{i}")(dropout(x), keep, reset, decode)
      x = nn.with_logical_constraint(x, ("batch", "length", "act_mlp"))
    logits = Linear((cfg.vocab_size,), ("embed", "vocab"), use_bias=True,
                    dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    init="lecun_normal", name="head")(dropout(x))
    return nn.with_logical_constraint(logits.astype(jnp.float32),
                                      ("batch", "length", "act_vocab"))


default_task = families.lm_task


num_params = families.num_params


def flops_per_item(model: Model, params, args) -> float:
  """Training FLOPs per token: 6 per weight that multiplies (the
  embedding table is looked up, not multiplied)."""
  del model, args
  return 6 * (families.num_params(params) - params["wte"]["embedding"].size)


def capabilities(config) -> dict:
  """Decodes with its recurrent state (windows of `block_size`); explaining
  reads its token embeddings ("wte")."""
  return {"decode": config.block_size, "token_embeddings": "wte"}


# transformers has no recurrent language model: exports are jax.export's.
load_hf = export_hf = adapt_params = trainable_presets = None
