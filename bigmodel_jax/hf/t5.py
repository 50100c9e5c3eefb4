"""Hugging Face T5ForConditionalGeneration checkpoints <-> our T5, by a
declarative table (see `hf_layout`).

  fields = t5_hf.config_fields(config_json)
  params = t5_hf.read_params("path/to/model", cfg, shapes)
  hf = t5_hf.export(params, cfg)                  # a whole directory

T5 v1.0 (ReLU, logits from the shared embedding scaled by d_model^-0.5)
and v1.1 ("gated-gelu", a separate `lm_head`) both import and export.
transformers 5 reads `tie_word_embeddings` only as "scale the logits" and
ties `lm_head` to the embedding unless the checkpoint holds a different
one: a directory it wrote for a v1.1 model (tied, unscaled) imports as our
untied model with the embedding as its output layer, and our v1.1 export
writes its own `lm_head`, which stays untied.
"""
import dataclasses

import numpy as np

from bigmodel_jax import families
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.hf import gpt as gpt_hf, layout as hf_layout

CONFIG_KEYS = {"vocab_size": "vocab_size", "d_model": "emb_dim",
               "d_kv": "head_dim", "d_ff": "mlp_dim",
               "num_layers": "num_layers",
               "num_decoder_layers": "num_decoder_layers",
               "num_heads": "num_heads",
               "relative_attention_num_buckets": "relative_buckets",
               "relative_attention_max_distance": "relative_max_distance",
               "pad_token_id": "pad_id", "eos_token_id": "eos_id"}
MLP = {"relu": "relu", "gated-gelu": "geglu", "gated-gelu_new": "geglu"}


def _stack_rules(cfg, stack: str, decoder: bool) -> list:
  """The rows of the encoder's or decoder's blocks, bias and final norm."""
  out = [(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias."
          "weight", (stack, "relative_bias", "embedding"), 0),
         (f"{stack}.final_layer_norm.weight", (stack, "ln_f", "scale"), 0)]
  layers = cfg.decoder_layers if decoder else cfg.num_layers
  parts = [("SelfAttention", "self_attn")] + (
      [("EncDecAttention", "cross_attn")] if decoder else [])
  for i in range(layers):
    hf, ours = f"{stack}.block.{i}.layer.", (stack, f"block_{i}")
    for j, (hf_name, name) in enumerate(parts):
      out += [(f"{hf}{j}.{hf_name}.{p}.weight", (*ours, name, our, "kernel"),
               2 if our == "out" else 1)
              for p, our in (("q", "query"), ("k", "key"), ("v", "value"),
                             ("o", "out"))]
      out.append((f"{hf}{j}.layer_norm.weight",
                  (*ours, "ln_" + name.split("_")[0], "scale"), 0))
    mlp = f"{hf}{len(parts)}."
    wi = ([("wi_0", "gate"), ("wi_1", "fc")] if cfg.mlp == "geglu" else
          [("wi", "fc")])
    out += [(f"{mlp}DenseReluDense.{p}.weight", (*ours, our, "kernel"), 1)
            for p, our in wi + [("wo", "proj")]]
    out.append((f"{mlp}layer_norm.weight", (*ours, "ln_mlp", "scale"), 0))
  return out


def rules(cfg) -> list:
  """The layout of a `t5.Config` (untied: with `lm_head`)."""
  out = [("shared.weight", ("shared", "embedding"), 0)]
  out += _stack_rules(cfg, "encoder", False) + _stack_rules(cfg, "decoder",
                                                            True)
  if not cfg.tie_embeddings:
    out.append(("lm_head.weight", ("lm_head", "kernel"), 1))
  return out


def _stacks(tree, cfg, convert) -> dict:
  """`convert(subtree, cfg)` applied to the encoder and decoder (scanned
  layers stacked or unstacked with their own layer counts)."""
  out = dict(tree)
  for stack, layers in (("encoder", cfg.num_layers),
                        ("decoder", cfg.decoder_layers)):
    out[stack] = convert(dict(tree[stack]), dataclasses.replace(
        cfg, num_layers=layers))
  return out


def config_fields(hf: dict) -> dict:
  """Our `config.model` fields that a T5 config.json sets."""
  projection = hf.get("feed_forward_proj", "relu")
  if projection not in MLP:
    raise ConfigError(f"T5 feed_forward_proj={projection!r} has no "
                      f"equivalent here; have {sorted(MLP)}.")
  fields = {ours: hf[key] for key, ours in CONFIG_KEYS.items() if key in hf}
  fields["num_decoder_layers"] = fields.get("num_decoder_layers") or (
      fields["num_layers"])
  return {**fields, "mlp": MLP[projection],
          "tie_embeddings": _scaled(hf)}


def _scaled(hf: dict) -> bool:
  """Whether the checkpoint's logits come from the embedding, scaled (v1.0;
  transformers 5 writes `scale_decoder_outputs`, older ones only
  `tie_word_embeddings`)."""
  return bool(hf.get("scale_decoder_outputs",
                     hf.get("tie_word_embeddings", True)))


def read_params(model_dir: str, hf: dict, cfg, shapes) -> dict:
  """Params (numpy, our `shapes`) of an HF T5 checkpoint; a tied but
  unscaled one gets the embedding as its `lm_head`."""
  tensors = hf_layout.read_tensors(model_dir)
  if not cfg.tie_embeddings and "lm_head.weight" not in tensors:
    if hf.get("tie_word_embeddings", True) is False:
      raise ConfigError(f"{model_dir} has an untied output layer but no "
                        "lm_head.weight.")
    tensors["lm_head.weight"] = tensors["shared.weight"]
  table = _stacks(shapes, cfg, lambda tree, c: gpt_hf.unscanned(
      tree, c, index=lambda s, i: tuple(s[1:])))
  params = hf_layout.from_hf(tensors, rules(cfg), table)
  return _stacks(params, cfg, gpt_hf.scanned)


def export(params, cfg) -> hf_layout.HFExport:
  """The T5ForConditionalGeneration directory of a `t5.Config`; an untied
  one (v1.1) writes `lm_head.weight` and `tie_word_embeddings: false`,
  which transformers reads as unscaled logits from that separate layer."""
  params = _stacks(families.merged(params, cfg), cfg, gpt_hf.unscanned)
  config = {"model_type": "t5", "architectures":
            ["T5ForConditionalGeneration"],
            **{key: getattr(cfg, ours) for key, ours in CONFIG_KEYS.items()
               if key != "num_decoder_layers"},
            "num_decoder_layers": cfg.decoder_layers,
            "feed_forward_proj": "relu" if cfg.mlp == "relu" else "gated-gelu",
            "dropout_rate": cfg.dropout, "layer_norm_epsilon": 1e-6,
            "is_encoder_decoder": True,
            "tie_word_embeddings": cfg.tie_embeddings,
            "decoder_start_token_id": cfg.pad_id,
            "dtype": "float32"}
  return hf_layout.HFExport(
      config=config, tensors=hf_layout.to_hf(params, rules(cfg)),
      tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast",
                        "model_max_length": cfg.source_len},
      reference=lambda d, batch: _reference(d, batch, cfg.pad_id),
      outputs=lambda logits: {"logits": np.asarray(logits)},
      usage=("model = transformers.T5ForConditionalGeneration."
             "from_pretrained(DIR)\n"
             "tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)"))


def _reference(model_dir: str, batch: dict, pad_id: int) -> dict:
  """transformers' logits of a seq2seq batch (decoder inputs: the targets
  shifted right, as the seq2seq task makes them)."""
  import torch
  import transformers
  model = transformers.T5ForConditionalGeneration.from_pretrained(
      model_dir).eval()
  sources, targets = hf_layout.torch_inputs(batch, "inputs", "targets")
  with torch.no_grad():
    return {"logits": model(input_ids=sources,
                            attention_mask=(sources != pad_id).long(),
                            labels=targets).logits.numpy()}
