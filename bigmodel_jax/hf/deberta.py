"""Hugging Face DeBERTa-v2 checkpoints (v2 and v3) <-> our DeBERTa
parameters, by a declarative table (see `hf_layout`).

  deberta_hf.config_fields("path/to/model")   # config.json -> our fields
  params = deberta_hf.read_params("path/to/model", cfg, shapes)
  hf = deberta_hf.export(params, cfg, class_names)  # a whole directory

`cfg` is a `deberta.Config`. Heads are optional rows (a checkpoint without
them loads its encoder). MLM heads load from either of transformers'
layouts (`cls.predictions.*`, or the original `lm_predictions.lm_head.*`
of Microsoft's checkpoints) and export as the first; the replaced-token
detection head of v3 discriminators (`mask_predictions.*`) is not read.
"""
import numpy as np

from bigmodel_jax import families
from bigmodel_jax.errors import ConfigError, NotExportable
from bigmodel_jax.hf import bert as bert_hf, layout as hf_layout

CONFIG_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "emb_dim",
    "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim", "max_position_embeddings": "max_positions",
    "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
    "pad_token_id": "pad_id", "position_biased_input": "position_biased_input",
    "share_att_key": "share_att_key",
}
OPTIONAL = ("pooler.", "classifier.", "cls.")
# The original MLM head's names -> transformers' (legacy) ones.
ORIGINAL_MLM = {"lm_predictions.lm_head.dense.": "cls.predictions.transform."
                "dense.", "lm_predictions.lm_head.LayerNorm.":
                "cls.predictions.transform.LayerNorm.",
                "lm_predictions.lm_head.bias": "cls.predictions.bias"}
# config.json settings we have no equivalent of: key -> the values we do.
SUPPORTED = {"relative_attention": (True,), "hidden_act": ("gelu",),
             "pooler_hidden_act": ("gelu",), "conv_groups": (1,)}




def rules(cfg) -> list[tuple[str, tuple, int]]:
  """The layout of a `deberta.Config` (names without the "deberta."
  prefix that *For* models add to the encoder)."""
  out = [("embeddings.word_embeddings.weight", ("word_embeddings",
                                                 "embedding"), 0)]
  if cfg.position_biased_input:
    out.append(("embeddings.position_embeddings.weight",
                ("position_embeddings",), 0))
  if cfg.type_vocab_size:
    out.append(("embeddings.token_type_embeddings.weight",
                ("token_type_embeddings",), 0))
  if cfg.embed_dim:
    out.append(("embeddings.embed_proj.weight", ("embed_proj", "kernel"), 1))
  out += hf_layout.norm("embeddings.LayerNorm", ("embeddings_ln",))
  out.append(("encoder.rel_embeddings.weight", ("rel_embeddings",), 0))
  if cfg.norm_rel_embeddings:
    out += hf_layout.norm("encoder.LayerNorm", ("rel_ln",))
  if cfg.conv_kernel_size:
    out += [("encoder.conv.conv.weight", ("conv_kernel",), "conv1d"),
            ("encoder.conv.conv.bias", ("conv_bias",), 0)]
    out += hf_layout.norm("encoder.conv.LayerNorm", ("conv_ln",))
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.layer.{i}.", f"layer_{i}"
    out += hf_layout.encoder_layer(
        hf, ours, "attention.self.", (("attention.output.LayerNorm",
                                        "attn_ln"),
                                       ("output.LayerNorm", "mlp_ln")),
        suffix="_proj")
    if not cfg.share_att_key:
      for kind, name in (("c2p", "pos_key"), ("p2c", "pos_query")):
        if kind in cfg.position_attention:
          out += hf_layout.linear(f"{hf}attention.self.{name}_proj",
                                  (ours, name))
  if cfg.head == "mlm":
    out += hf_layout.linear("cls.predictions.transform.dense",
                            ("mlm_transform",))
    out += hf_layout.norm("cls.predictions.transform.LayerNorm", ("mlm_ln",))
    out.append(("cls.predictions.bias", ("mlm_bias",), 0))
  if cfg.head == "classifier":
    out += hf_layout.linear("pooler.dense", ("pooler",))
    out += hf_layout.linear("classifier", ("classifier",))
  return out


def config_fields(model_dir: str) -> dict:
  """Our `config.model` fields that an HF DeBERTa-v2 config.json sets;
  ConfigError naming a setting we have no equivalent of."""
  hf = hf_layout.read_config(model_dir, "deberta-v2")
  for key, allowed in SUPPORTED.items():
    if key in hf and hf[key] not in allowed:
      raise ConfigError(f"{model_dir}: {key}={hf[key]!r} has no equivalent "
                        f"here (supported: {list(allowed)}).")
  if hf.get("attention_head_size", hf["hidden_size"] // hf[
      "num_attention_heads"]) * hf["num_attention_heads"] != hf["hidden_size"]:
    raise ConfigError(f"{model_dir}: attention_head_size x heads != "
                      "hidden_size has no equivalent here.")
  fields = {ours: hf[key] for key, ours in CONFIG_KEYS.items() if key in hf}
  kinds = hf.get("pos_att_type") or []
  kinds = kinds.split("|") if isinstance(kinds, str) else kinds
  fields["position_attention"] = ",".join(
      k for k in ("c2p", "p2c") if k in kinds)
  fields["position_buckets"] = max(hf.get("position_buckets", -1), 0)
  relative = hf.get("max_relative_positions", -1)
  fields["max_relative_positions"] = relative if relative > 0 else None
  fields["norm_rel_embeddings"] = "layer_norm" in hf.get(
      "norm_rel_ebd", "none").lower()
  fields["conv_kernel_size"] = hf.get("conv_kernel_size", 0)
  if fields["conv_kernel_size"]:
    fields["conv_act"] = hf.get("conv_act", "tanh")
  embedding = hf.get("embedding_size", hf["hidden_size"])
  fields["embed_dim"] = embedding if embedding != hf["hidden_size"] else None
  return fields


def read_tensors(model_dir: str) -> dict:
  """A checkpoint's tensors under the names of `rules` (no "deberta."
  prefix; an original MLM head under transformers' names)."""
  tensors = hf_layout.read_tensors(model_dir, "deberta.")
  for original, name in ORIGINAL_MLM.items():
    for key in [k for k in tensors if k.startswith(original)]:
      tensors[name + key[len(original):]] = tensors.pop(key)
  return tensors


def read_params(model_dir: str, cfg, shapes) -> dict:
  """Params (numpy, our `shapes`) of a DeBERTa-v2 checkpoint."""
  return hf_layout.from_hf(read_tensors(model_dir), rules(cfg), shapes,
                           OPTIONAL)


def to_tensors(params, cfg) -> dict:
  """HF-named tensors (numpy, no "deberta." prefix); LoRA merged."""
  return hf_layout.to_hf(families.merged(params, cfg), rules(cfg))


def export(params, cfg, class_names) -> hf_layout.HFExport:
  """DebertaV2Model, DebertaV2ForMaskedLM or
  DebertaV2ForSequenceClassification; settings transformers lacks (the
  enhanced mask decoder, mean pooling) are refused by name."""
  if cfg.emd_steps:
    raise NotExportable(f"model.emd_steps={cfg.emd_steps}: transformers' "
                        "DeBERTa has no enhanced mask decoder.")
  if cfg.head == "classifier" and cfg.pool != "cls":
    raise NotExportable("model.pool='mean': DebertaV2ForSequenceClassification"
                        " pools the first token.")
  tensors = to_tensors(params, cfg)
  config = {
      "model_type": "deberta-v2", "hidden_act": "gelu",
      "pooler_hidden_act": "gelu", "pooler_hidden_size": cfg.emb_dim,
      "pooler_dropout": 0.0, "hidden_dropout_prob": cfg.dropout,
      "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
      "relative_attention": True, "legacy": True, "dtype": "float32",
      "pos_att_type": [k for k in ("c2p", "p2c")
                       if k in cfg.position_attention],
      "position_buckets": cfg.position_buckets or -1,
      "max_relative_positions": cfg.max_relative_positions or -1,
      "norm_rel_ebd": "layer_norm" if cfg.norm_rel_embeddings else "none",
      "embedding_size": cfg.embed_dim or cfg.emb_dim,
      **{key: getattr(cfg, ours) for key, ours in CONFIG_KEYS.items()}}
  if cfg.conv_kernel_size:
    config.update(conv_kernel_size=cfg.conv_kernel_size,
                  conv_act=cfg.conv_act)
  arch = "DebertaV2" + {"none": "Model", "mlm": "ForMaskedLM",
                        "classifier": "ForSequenceClassification"}[cfg.head]
  if cfg.head != "none":
    tensors = {k if k.startswith(OPTIONAL) else f"deberta.{k}": v
               for k, v in tensors.items()}
  if cfg.head == "classifier":
    config.update(hf_layout.labels(class_names, cfg.num_classes),
                  problem_type="single_label_classification")
  return hf_layout.HFExport(
      config={**config, "architectures": [arch]}, tensors=tensors,
      reference=lambda d, batch: bert_hf.reference(arch, d, batch,
                                                  cfg.pad_id),
      outputs=lambda out: (hf_layout.classifier_outputs(out)
                           if cfg.head == "classifier" else
                           {"logits" if cfg.head == "mlm" else
                            "hidden_states": np.asarray(out)}),
      tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast",
                        "model_max_length": cfg.max_positions},
      usage=(f"model = transformers.{arch}.from_pretrained(DIR)\n"
             "tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)"))

