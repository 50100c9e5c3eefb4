"""Hugging Face GPT-2 and LLaMA checkpoints <-> our GPT, by declarative tables.

  GPT-2  GPT2LMHeadModel: learned positions, LayerNorm, GELU (tanh), biases,
         tied embeddings; fused query/key/value (`c_attn`) and Conv1D
         weights stored (in, out).
  LLaMA  LlamaForCausalLM: RoPE (rotating halves, as ours), RMSNorm, SwiGLU,
         no biases, grouped-query attention, tied or untied output.

Our embedding table is padded to `vocab_multiple` rows: export writes the
first `vocab_size`, import pads with zeros (padding ids are never predicted).
Scanned layers (`scan_layers`) are unstacked for export and stacked on import.
A GPT-2-shaped model without biases (`use_bias=False`, nanoGPT's choice) is
GPT-2 with zero biases: export writes them, import checks they are zero.
LLaMA's `attention_bias` and `mlp_bias` are our `use_bias`.
"""
import dataclasses

import numpy as np

from bigmodel_jax.errors import ConfigError, NotExportable
from bigmodel_jax import families
from bigmodel_jax.hf import layout as hf_layout

GPT2_CONFIG = {"n_layer": "num_layers", "n_head": "num_heads",
               "n_embd": "emb_dim", "n_positions": "block_size"}
LLAMA_CONFIG = {"num_hidden_layers": "num_layers",
                "num_attention_heads": "num_heads",
                "num_key_value_heads": "num_kv_heads", "hidden_size": "emb_dim",
                "intermediate_size": "mlp_dim", "head_dim": "head_dim",
                "max_position_embeddings": "block_size",
                "tie_word_embeddings": "tie_embeddings"}


GPT2_ACTIVATION = {"gelu": "gelu_new", "gelu_exact": "gelu",  # Ours: HF's.
                   "quick_gelu": "quick_gelu"}
# HF's activation_function -> ours (gelu_pytorch_tanh is gelu_new, fused).
_FROM_GPT2_ACTIVATION = {"gelu_pytorch_tanh": "gelu",
                         **{hf: ours for ours, hf in GPT2_ACTIVATION.items()}}


def _gpt2_mlp(activation: str) -> str:
  """Our `model.mlp` for a GPT-2 config's `activation_function`."""
  if activation not in _FROM_GPT2_ACTIVATION:
    raise ConfigError(f"GPT-2 activation_function={activation!r} has no "
                      f"equivalent here; have {sorted(_FROM_GPT2_ACTIVATION)}.")
  return _FROM_GPT2_ACTIVATION[activation]


def kind(cfg) -> str:
  """"gpt2" or "llama": the HF architecture a `gpt.Config` is; raises
  NotExportable naming the settings that fit neither."""
  if cfg.cross_attention:
    raise NotExportable("model.cross_attention: a decoder that attends to an "
                        "encoder has no causal-LM equivalent on its own.")
  if ((cfg.position, cfg.norm) == ("learned", "layernorm") and
      cfg.mlp in GPT2_ACTIVATION and cfg.tie_embeddings and
      cfg.kv_heads == cfg.num_heads and
      cfg.head_size * cfg.num_heads == cfg.emb_dim):
    return "gpt2"
  if (cfg.position, cfg.norm, cfg.mlp) == ("rope", "rmsnorm", "swiglu"):
    return "llama"
  raise NotExportable(
      f"model.position={cfg.position!r}, norm={cfg.norm!r}, mlp={cfg.mlp!r} "
      f"(tie_embeddings={cfg.tie_embeddings}, num_kv_heads="
      f"{cfg.num_kv_heads}) match neither GPT-2 (learned, layernorm, gelu "
      "or gelu_exact, tied, multi-head) nor LLaMA (rope, rmsnorm, swiglu).")


def rules(cfg) -> list:
  """The layout (see `hf_layout`); GPT-2's Conv1D weights are kind -k:
  (in, out) as ours, input = our first k axes. GPT-2's fused `c_attn` is
  our per-layer "qkv" (built by `_fuse`). Bias rows only with `use_bias`
  (GPT-2 always has biases: export writes zeros for a model without)."""
  def linear(hf, path, k):
    return [(f"{hf}.weight", (*path, "kernel"), k)] + (
        [(f"{hf}.bias", (*path, "bias"), 0)] if cfg.use_bias else [])

  def norm(hf, path):
    return [(f"{hf}.weight", (*path, "scale"), 0)] + (
        [(f"{hf}.bias", (*path, "bias"), 0)] if cfg.use_bias and
        cfg.norm == "layernorm" else [])

  if kind(cfg) == "gpt2":
    out = [("transformer.wte.weight", ("wte", "embedding"), 0),
           ("transformer.wpe.weight", ("wpe",), 0)]
    out += norm("transformer.ln_f", ("ln_f",))
    for i in range(cfg.num_layers):
      hf, ours = f"transformer.h.{i}.", f"block_{i}"
      for hf_name, path, k in (
          ("attn.c_attn", ("attn", "qkv"), -1),
          ("attn.c_proj", ("attn", "out"), -2),
          ("mlp.c_fc", ("fc",), -1), ("mlp.c_proj", ("proj",), -1)):
        out += linear(f"{hf}{hf_name}", (ours, *path), k)
      out += norm(f"{hf}ln_1", (ours, "ln_1")) + norm(f"{hf}ln_2",
                                                      (ours, "ln_2"))
    return out
  out = [("model.embed_tokens.weight", ("wte", "embedding"), 0)]
  out += norm("model.norm", ("ln_f",))
  if not cfg.tie_embeddings:
    out.append(("lm_head.weight", ("lm_head", "kernel"), 1))
  for i in range(cfg.num_layers):
    hf, ours = f"model.layers.{i}.", f"block_{i}"
    for p, name in (("q", "query"), ("k", "key"), ("v", "value"),
                    ("o", "out")):
      out += linear(f"{hf}self_attn.{p}_proj", (ours, "attn", name),
                    2 if name == "out" else 1)
    for p, name in (("gate", "gate"), ("up", "fc"), ("down", "proj")):
      out += linear(f"{hf}mlp.{p}_proj", (ours, name), 1)
    out += norm(f"{hf}input_layernorm", (ours, "ln_1"))
    out += norm(f"{hf}post_attention_layernorm", (ours, "ln_2"))
  return out


# --- Our tree <-> the table's tree ---------------------------------------------
def unscanned(tree, cfg, index=lambda x, i: np.asarray(x)[i]) -> dict:
  """Params (or shapes, with `index`) with scanned layers as block_0 ..."""
  if not cfg.scan_layers:
    return dict(tree)
  out = {k: v for k, v in tree.items() if k != "blocks"}
  for i in range(cfg.num_layers):
    out[f"block_{i}"] = _map(lambda x, i=i: index(x, i), tree["blocks"])
  return out


def scanned(params, cfg) -> dict:
  """The inverse of `unscanned`."""
  if not cfg.scan_layers:
    return params
  blocks = [params.pop(f"block_{i}") for i in range(cfg.num_layers)]
  params["blocks"] = _map(lambda *xs: np.stack(xs), *blocks)
  return params


def _map(fn, *trees):
  if isinstance(trees[0], dict):
    return {k: _map(fn, *(t[k] for t in trees)) for k in trees[0]}
  return fn(*trees)


def _fuse(params, cfg) -> dict:
  """GPT-2: each layer's query/key/value as one (D, 3D) "qkv" projection."""
  for i in range(cfg.num_layers):
    attn = dict(params[f"block_{i}"]["attn"])
    parts = [attn.pop(n) for n in ("query", "key", "value")]
    attn["qkv"] = {"kernel": np.concatenate([np.asarray(p["kernel"]).reshape(
        cfg.emb_dim, -1) for p in parts], 1)}
    if cfg.use_bias:
      attn["qkv"]["bias"] = np.concatenate([np.asarray(p["bias"]).reshape(-1)
                                            for p in parts])
    params[f"block_{i}"] = {**params[f"block_{i}"], "attn": attn}
  return params


def _split(params, cfg, shapes) -> dict:
  """The inverse of `_fuse`, to our (D, heads, head_dim) shapes."""
  for i in range(cfg.num_layers):
    attn = params[f"block_{i}"]["attn"]
    qkv = attn.pop("qkv")
    for j, name in enumerate(("query", "key", "value")):
      target, part = shapes[f"block_{i}"]["attn"][name], slice(
          j * cfg.emb_dim, (j + 1) * cfg.emb_dim)
      attn[name] = {key: qkv[key][..., part].reshape(target[key])
                    for key in qkv}
  return params


def _table_shapes(layer_shapes, cfg) -> dict:
  """Unstacked shapes as the table sees them: GPT-2's qkv fused, the
  vocabulary unpadded."""
  shapes = dict(layer_shapes)
  shapes["wte"] = {"embedding": (cfg.vocab_size, cfg.emb_dim)}
  if "lm_head" in shapes:
    shapes["lm_head"] = {"kernel": (cfg.emb_dim, cfg.vocab_size)}
  if kind(cfg) == "gpt2":
    for i in range(cfg.num_layers):
      block = shapes[f"block_{i}"]
      shapes[f"block_{i}"] = {**block, "attn": {
          "out": block["attn"]["out"],
          "qkv": {"kernel": (cfg.emb_dim, 3 * cfg.emb_dim),
                  "bias": (3 * cfg.emb_dim,)}}}  # Bias read if use_bias.
  return shapes


# --- Import and export ----------------------------------------------------------
def config_fields(hf: dict) -> dict:
  """Our `config.model` fields that an HF GPT-2 / LLaMA config.json sets."""
  if hf["model_type"] == "gpt2":
    fields = {ours: hf[key] for key, ours in GPT2_CONFIG.items()}
    return {**fields, "mlp_dim": hf.get("n_inner") or 4 * hf["n_embd"],
            "position": "learned", "norm": "layernorm",
            "mlp": _gpt2_mlp(hf.get("activation_function", "gelu_new")),
            "tie_embeddings": True}  # use_bias: see `read_params`.
  fields = {ours: hf[key] for key, ours in LLAMA_CONFIG.items() if key in hf}
  rope = hf.get("rope_parameters") or {}
  biases = {hf.get("attention_bias", False), hf.get("mlp_bias", False)}
  if len(biases) > 1:
    raise ConfigError("LLaMA checkpoints with attention_bias != mlp_bias have "
                      "no equivalent here (model.use_bias sets both).")
  return {**fields, "rope_theta": float(rope.get("rope_theta",
                                                 hf.get("rope_theta", 1e4))),
          "position": "rope", "norm": "rmsnorm", "mlp": "swiglu",
          "use_bias": biases.pop()}


def read_params(model_dir: str, cfg, shapes) -> dict:
  """Params (numpy, our `shapes`) of an HF GPT-2 / LLaMA checkpoint."""
  tensors = hf_layout.read_tensors(model_dir)
  if kind(cfg) == "gpt2":  # GPT2Model checkpoints lack the prefix.
    tensors = {k if k.startswith("transformer.") else f"transformer.{k}": v
               for k, v in tensors.items()}
    if not cfg.use_bias:
      nonzero = [k for k, v in tensors.items()
                 if k.endswith(".bias") and np.any(v)]
      if nonzero:
        raise ConfigError(f"{model_dir} has nonzero biases ({nonzero[0]}, "
                          "...); set config.model.use_bias=True.")
  layer_shapes = unscanned(shapes, cfg, index=lambda s, i: tuple(s[1:]))
  params = hf_layout.from_hf(tensors, rules(cfg),
                             _table_shapes(layer_shapes, cfg))
  if kind(cfg) == "gpt2":
    params = _split(params, cfg, layer_shapes)
  pad = cfg.padded_vocab - cfg.vocab_size
  params["wte"]["embedding"] = np.pad(params["wte"]["embedding"],
                                      ((0, pad), (0, 0)))
  if "lm_head" in params:
    params["lm_head"]["kernel"] = np.pad(params["lm_head"]["kernel"],
                                         ((0, 0), (0, pad)))
  return scanned(params, cfg)


def export(params, cfg) -> hf_layout.HFExport:
  """The GPT2LMHeadModel / LlamaForCausalLM directory of a `gpt.Config`."""
  arch = kind(cfg)
  params = unscanned(families.merged(params, cfg), cfg)
  params["wte"] = {"embedding": np.asarray(
      params["wte"]["embedding"])[:cfg.vocab_size]}
  if "lm_head" in params:
    params["lm_head"] = {"kernel": np.asarray(
        params["lm_head"]["kernel"])[:, :cfg.vocab_size]}
  if arch == "gpt2":
    params = _fuse(params, cfg)
  tensors = hf_layout.to_hf(params, rules(cfg))
  if arch == "gpt2":  # GPT-2 always has biases: zeros are ours without.
    for name, _, _ in rules(dataclasses.replace(cfg, use_bias=True)):
      if name.endswith(".bias") and name not in tensors:
        width = tensors[name.removesuffix("bias") + "weight"].shape[-1]
        tensors[name] = np.zeros(width, np.float32)
  common = {"vocab_size": cfg.vocab_size, "dtype": "float32",
            "bos_token_id": None, "eos_token_id": None}
  if arch == "gpt2":
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
              **{key: getattr(cfg, ours) for key, ours in GPT2_CONFIG.items()},
              "n_inner": cfg.hidden,
              "activation_function": GPT2_ACTIVATION[cfg.mlp],
              "layer_norm_epsilon": 1e-5, "resid_pdrop": cfg.dropout,
              "embd_pdrop": cfg.dropout, "attn_pdrop": 0.0,
              "tie_word_embeddings": True, **common}
  else:
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
              "num_hidden_layers": cfg.num_layers,
              "num_attention_heads": cfg.num_heads,
              "num_key_value_heads": cfg.kv_heads, "hidden_size": cfg.emb_dim,
              "intermediate_size": cfg.hidden, "head_dim": cfg.head_size,
              "max_position_embeddings": cfg.block_size,
              "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
              "rms_norm_eps": 1e-5, "rope_theta": cfg.rope_theta,
              "rope_parameters": {"rope_type": "default",
                                  "rope_theta": cfg.rope_theta},
              "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias,
              **common}
  architecture = config["architectures"][0]
  return hf_layout.HFExport(
      config=config, tensors=tensors,
      tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast",
                        "model_max_length": cfg.block_size},
      reference=lambda d, batch: _reference(architecture, d, batch),
      outputs=lambda logits: {"logits": np.asarray(logits)[
          ..., :cfg.vocab_size]},
      usage=(f"model = transformers.{architecture}.from_pretrained(DIR)\n"
             "tokenizer = transformers.AutoTokenizer.from_pretrained(DIR)"))


def _reference(arch: str, model_dir: str, batch: dict) -> dict:
  import torch
  import transformers
  model = getattr(transformers, arch).from_pretrained(model_dir).eval()
  (ids,) = hf_layout.torch_inputs(batch, "inputs")
  with torch.no_grad():
    return {"logits": model(input_ids=ids).logits.numpy()}
