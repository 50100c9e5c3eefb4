"""Hugging Face BERT checkpoints <-> our BERT parameters, by a declarative table.

  config_block, params = bert_hf.load("path/to/model")   # config.json + model.safetensors
  tensors = bert_hf.export(params, model.config)          # HF names -> arrays

Each row of `rules` names an HF tensor, our parameter path, and whether the
tensor is a (out, in) matrix that we store transposed (and reshaped to our
named axes, e.g. heads). Loading returns host numpy arrays; put them into the
sharded layout with `StateFactory.with_params`, so no device holds a full copy.
"""
import json
import math
import os

import numpy as np

from bigmodel_jax.models import bert

# config.json key -> our config key.
CONFIG_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "emb_dim",
    "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim", "max_position_embeddings": "max_positions",
    "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
    "pad_token_id": "pad_id",
}


def rules(cfg: bert.Config) -> list[tuple[str, tuple, int]]:
  """(HF name, our path, k): k = 0 copies (reshaped), k > 0 transposes an
  (out, in) matrix whose input is our first k axes."""
  out = [("embeddings.word_embeddings.weight",
          ("word_embeddings", "embedding"), 0),
         ("embeddings.position_embeddings.weight", ("position_embeddings",), 0),
         ("embeddings.token_type_embeddings.weight",
          ("token_type_embeddings",), 0),
         ("embeddings.LayerNorm.weight", ("embeddings_ln", "scale"), 0),
         ("embeddings.LayerNorm.bias", ("embeddings_ln", "bias"), 0)]
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.layer.{i}.", f"layer_{i}"
    for name in ("query", "key", "value"):
      out += [(f"{hf}attention.self.{name}.weight", (ours, name, "kernel"), 1),
              (f"{hf}attention.self.{name}.bias", (ours, name, "bias"), 0)]
    for hf_name, our_name, k in (("attention.output.dense", "out", 2),
                                 ("intermediate.dense", "fc", 1),
                                 ("output.dense", "proj", 1)):
      out += [(f"{hf}{hf_name}.weight", (ours, our_name, "kernel"), k),
              (f"{hf}{hf_name}.bias", (ours, our_name, "bias"), 0)]
    for hf_name, our_name in (("attention.output.LayerNorm", "attn_ln"),
                              ("output.LayerNorm", "mlp_ln")):
      out += [(f"{hf}{hf_name}.weight", (ours, our_name, "scale"), 0),
              (f"{hf}{hf_name}.bias", (ours, our_name, "bias"), 0)]
  return out


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def load_config(model_dir: str, variant: str = "base", **overrides):
  """Our `config.model` block from an HF config.json."""
  with open(os.path.join(model_dir, "config.json")) as f:
    hf = json.load(f)
  if hf.get("model_type") != "bert":
    raise ValueError(f"{model_dir}: model_type {hf.get('model_type')!r} is not "
                     "'bert'.")
  fields = {ours: hf[key] for key, ours in CONFIG_KEYS.items() if key in hf}
  return bert.model_config(variant, **{**fields, **overrides})


def load(model_dir: str, **overrides):
  """(config block, params as numpy) of an HF BERT checkpoint directory."""
  from safetensors.numpy import load_file  # Only importing HF weights needs it.
  config = load_config(model_dir, **overrides)
  cfg = bert.make(config).config
  tensors = load_file(os.path.join(model_dir, "model.safetensors"))
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  missing = [name for name, _, _ in rules(cfg) if name not in tensors]
  if missing:
    raise KeyError(f"{model_dir}/model.safetensors lacks {missing[:5]} "
                   f"({len(missing)} tensors).")
  shapes = _our_shapes(cfg)
  params = {}
  for name, path, num_in in rules(cfg):
    value = tensors[name].T if num_in else tensors[name]
    _set(params, path, np.ascontiguousarray(value).reshape(_get(shapes, path)))
  return config, params


def export(params, cfg: bert.Config) -> dict:
  """HF-named tensors (numpy) of our parameters; the inverse of `load`."""
  out = {}
  for name, path, num_in in rules(cfg):
    value = np.asarray(_get(params, path))
    if num_in:
      value = value.reshape(math.prod(value.shape[:num_in]), -1).T
    elif name.endswith(".bias") or "LayerNorm" in name:
      value = value.reshape(-1)
    out[name] = np.ascontiguousarray(value)
  return out


def _our_shapes(cfg: bert.Config):
  import jax
  import jax.numpy as jnp
  from flax import linen as nn
  model = bert.Model(cfg)
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 8), jnp.int32))
  return jax.tree.map(lambda x: x.shape, nn.unbox(abstract)["params"])
