"""word2vec (Mikolov et al. 2013): an input and an output vector per word,
trained by negative sampling (the "word2vec" task, `data/word_contexts.py`).

  context (B, C) word ids -> the mean input vector h of its words (ids 0
  and 1, padding and unknown words, left out); skip-gram's context is the
  centre word (C = 1), CBOW's its window.
  candidates (B, K + 1) ids -> logits h . output[candidate]

Initialised as gensim does: input vectors uniform in +-0.5 / embed_dim,
output vectors zero. The input vectors are the word vectors:

  model.apply(v, ids, embed=True)        # unit mean vectors (B, D): a text
                                         # with no vocabulary word gives 0
  model.apply(v, ids, method="vectors")  # the raw vectors of ids (B,)
"""
import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax import families

VARIANTS = {"100d": dict(embed_dim=100), "tiny": dict(embed_dim=16)}
FIRST_WORD = 2  # Ids below are padding and unknown words (dataio/words.py).


@dataclasses.dataclass(frozen=True)
class Config:
  """The word2vec fields and their defaults (the only ones)."""
  vocab_size: int  # From the data.
  embed_dim: int = 100
  dtype: Any = "float32"
  param_dtype: Any = "float32"


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a variant ("100d", "tiny")."""
  return families.variant_config("word2vec", Config, VARIANTS, variant,
                                 overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  return Model(Config(**families.config_fields(config, Config)))


class Model(nn.Module):
  """Two tables (vocab, embed); see the module doc."""
  config: Config

  def setup(self):
    cfg = self.config
    scale = 0.5 / cfg.embed_dim
    self.input = self.param("input", nn.with_logical_partitioning(
        lambda key, shape, dtype: nn.initializers.uniform(2 * scale)(
            key, shape, dtype) - scale, ("vocab", "embed")),
                            (cfg.vocab_size, cfg.embed_dim), cfg.param_dtype)
    self.output = self.param("output", nn.with_logical_partitioning(
        nn.initializers.zeros, ("vocab", "embed")),
                             (cfg.vocab_size, cfg.embed_dim), cfg.param_dtype)

  def _mean(self, context):
    """The mean input vector of each row's words (0 where it has none)."""
    known = (context >= FIRST_WORD).astype(self.config.dtype)[..., None]
    vectors = jnp.asarray(self.input, self.config.dtype)[context] * known
    mean = vectors.sum(1) / jnp.maximum(known.sum(1), 1)
    return nn.with_logical_constraint(mean, ("batch", "act_embed"))

  def vectors(self, ids):
    """The input vectors of ids (B,)."""
    return jnp.asarray(self.input, jnp.float32)[ids]

  def __call__(self, context, candidates=None, *, embed: bool = False,
               train: bool = False):
    del train  # No dropout.
    mean = self._mean(context).astype(jnp.float32)
    if embed:
      norm = jnp.linalg.norm(mean, axis=-1, keepdims=True)
      return mean / jnp.maximum(norm, 1e-12)
    output = jnp.asarray(self.output, self.config.dtype)[candidates]
    return jnp.einsum("bd,bkd->bk", mean.astype(self.config.dtype),
                      output).astype(jnp.float32)


def default_task(config) -> str:
  del config
  return "word2vec"


num_params = families.num_params
flops_per_item = families.xla_flops_per_item
load_hf = export_hf = adapt_params = trainable_presets = None  # None exist.


def capabilities(config) -> dict:
  """It embeds texts (mean word vector) and its vectors are word vectors."""
  del config
  return {"embed": None, "word_vectors": None}
