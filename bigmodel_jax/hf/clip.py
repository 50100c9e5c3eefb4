"""Hugging Face CLIPModel <-> our two towers of a CLIP-style ViT and GPT.

The vision tower is `vit` with `pre_norm`, quick GELU and no patch bias;
the text tower is `gpt` (learned positions, LayerNorm, biases, quick GELU,
unrolled layers), pooled at the first end token. As in `hf/vit.py`, HF's
class-token position row is folded into our class token on import and
written as zeros on export. Other towers are refused by name.
"""
import numpy as np

from bigmodel_jax.errors import ConfigError, NotExportable
from bigmodel_jax.hf import layout as hf_layout

ACTIVATION = {"gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu",  # Ours: HF's.
              "quick_gelu": "quick_gelu"}
_IMAGE = dict(pool="token", pre_norm=True, patch_bias=False, head_dim=None)
_TEXT = dict(position="learned", norm="layernorm", use_bias=True,
             scan_layers=False, head_dim=None, num_kv_heads=None,
             lora_rank=0)


def _layer(hf: str, block: tuple, attn: tuple) -> list:
  """One CLIP encoder layer: our `block`'s path and its attention
  projections' (the block itself in ViT, its "attn" in GPT)."""
  out = []
  for name, path, k in (("q_proj", attn + ("query",), 1),
                        ("k_proj", attn + ("key",), 1),
                        ("v_proj", attn + ("value",), 1),
                        ("out_proj", attn + ("out",), 2)):
    out += [(f"{hf}self_attn.{name}.weight", path + ("kernel",), k),
            (f"{hf}self_attn.{name}.bias", path + ("bias",), 0)]
  for name, ours_name, k in (("mlp.fc1", "fc", 1), ("mlp.fc2", "proj", 1),
                             ("layer_norm1", "ln_1", 0),
                             ("layer_norm2", "ln_2", 0)):
    param = "kernel" if k else "scale"
    out += [(f"{hf}{name}.weight", block + (ours_name, param), k),
            (f"{hf}{name}.bias", block + (ours_name, "bias"), 0)]
  return out



def rules(image_layers: int, text_layers: int) -> list:
  """The layout (see `hf_layout`) without class token, positions and
  token embeddings."""
  v, t = "vision_model.", "text_model."
  out = [(f"{v}embeddings.patch_embedding.weight",
          ("image_tower", "embedding", "kernel"), "conv"),
         *hf_layout.norm(f"{v}pre_layrnorm", ("image_tower", "ln_pre")),
         *hf_layout.norm(f"{v}post_layernorm", ("image_tower", "ln_f")),
         *hf_layout.norm(f"{t}final_layer_norm", ("text_tower", "ln_f")),
         (f"{t}embeddings.position_embedding.weight", ("text_tower", "wpe"), 0),
         ("visual_projection.weight", ("image_proj", "kernel"), 1),
         ("text_projection.weight", ("text_proj", "kernel"), 1),
         ("logit_scale", ("logit_scale",), 0)]
  for i in range(image_layers):
    block = ("image_tower", f"block_{i}")
    out += _layer(f"{v}encoder.layers.{i}.", block, block)
  for i in range(text_layers):
    block = ("text_tower", f"block_{i}")
    out += _layer(f"{t}encoder.layers.{i}.", block, block + ("attn",))
  return out


def _towers(model) -> tuple:
  """(image, text) tower configs; NotExportable unless CLIP's kind."""
  cfg = model.config
  image, text = model.image_tower.config, model.text_tower.config
  wrong = {}
  if (cfg.image, cfg.text, cfg.text_pool) != ("vit", "gpt", "eos"):
    wrong["towers"] = (cfg.image, cfg.text, cfg.text_pool)
  else:
    for name, tower, wanted in (("image", image, _IMAGE),
                                ("text", text, _TEXT)):
      wrong.update({f"{name}.{k}": getattr(tower, k)
                    for k, v in wanted.items() if getattr(tower, k) != v})
      if tower.mlp not in ACTIVATION:
        wrong[f"{name}.mlp"] = tower.mlp
  if wrong:
    raise NotExportable(
        f"model {wrong} has no CLIPModel equivalent: CLIP is a vit image "
        "tower (class token, pre_norm, no patch bias) and a gpt text tower "
        "(learned positions, layernorm, biases, unrolled), pooled at eos.")
  return image, text


def _vision_config(image, image_size: int, channels: int) -> dict:
  return {"hidden_size": image.emb_dim, "num_hidden_layers": image.num_layers,
          "num_attention_heads": image.num_heads,
          "intermediate_size": image.mlp_dim, "patch_size": image.patch_size,
          "image_size": image_size, "num_channels": channels,
          "hidden_act": ACTIVATION[image.mlp], "layer_norm_eps": image.norm_eps,
          "attention_dropout": 0.0, "dropout": 0.0}


def _text_config(text, eos_id: int) -> dict:
  return {"hidden_size": text.emb_dim, "num_hidden_layers": text.num_layers,
          "num_attention_heads": text.num_heads,
          "intermediate_size": text.hidden, "vocab_size": text.vocab_size,
          "max_position_embeddings": text.block_size,
          "hidden_act": ACTIVATION[text.mlp], "layer_norm_eps": 1e-5,
          "eos_token_id": eos_id, "bos_token_id": None, "pad_token_id": None,
          "attention_dropout": 0.0, "dropout": 0.0}


# config.json fields CLIPModel's forward pass never reads: not compared.
_UNREAD = ("attention_dropout", "dropout", "bos_token_id", "pad_token_id")


def check(model, hf: dict, model_dir: str) -> None:
  """ConfigError naming the fields where our towers differ from a
  CLIPModel config.json."""
  try:
    image, text = _towers(model)
  except NotExportable as e:
    raise ConfigError(str(e)) from None
  vision, words = hf["vision_config"], hf["text_config"]
  for ours, theirs in (
      (_vision_config(image, vision["image_size"],
                      vision.get("num_channels", 3)), vision),
      (_text_config(text, words.get("eos_token_id")), words),
      ({"projection_dim": model.config.embed_dim}, hf)):
    hf_layout.check_fields(ours, {k: v for k, v in theirs.items()
                                  if k in ours and k not in _UNREAD},
                           model_dir)


def read_params(model_dir: str, model, shapes) -> dict:
  """Params (numpy, our `shapes`) of a CLIPModel checkpoint."""
  image, text = _towers(model)
  tensors = hf_layout.read_tensors(model_dir)
  params = hf_layout.from_hf(tensors, rules(image.num_layers,
                                            text.num_layers), shapes)
  positions = tensors["vision_model.embeddings.position_embedding.weight"]
  params["image_tower"]["cls"] = (
      tensors["vision_model.embeddings.class_embedding"] + positions[0]
  ).reshape(shapes["image_tower"]["cls"])
  params["image_tower"]["posemb"] = positions[1:]
  words = tensors["text_model.embeddings.token_embedding.weight"]
  params["text_tower"]["wte"] = {"embedding": np.pad(
      words, ((0, text.padded_vocab - len(words)), (0, 0)))}
  return params


def export(params, model) -> hf_layout.HFExport:
  """The CLIPModel directory of a two-tower model of CLIP's kind."""
  image, text = _towers(model)
  patch = image.patch_size
  kernel = np.asarray(params["image_tower"]["embedding"]["kernel"])
  channels = kernel.shape[0] // (patch * patch)
  tower = dict(params["image_tower"])
  tower["embedding"] = {"kernel": kernel.reshape(patch, patch, channels,
                                                 image.emb_dim)}
  tensors = hf_layout.to_hf({**params, "image_tower": tower},
                            rules(image.num_layers, text.num_layers))
  posemb = np.asarray(tower["posemb"], np.float32)
  tensors["vision_model.embeddings.position_embedding.weight"] = (
      np.concatenate([np.zeros((1, image.emb_dim), np.float32), posemb]))
  tensors["vision_model.embeddings.class_embedding"] = np.asarray(
      tower["cls"], np.float32).reshape(-1)
  tensors["text_model.embeddings.token_embedding.weight"] = np.asarray(
      params["text_tower"]["wte"]["embedding"], np.float32)[:text.vocab_size]
  # A scalar, as HF has it (`to_hf`'s np.ascontiguousarray makes it (1,)).
  tensors["logit_scale"] = tensors["logit_scale"].reshape(())
  image_size = round(posemb.shape[0] ** 0.5) * patch
  config = {"model_type": "clip", "architectures": ["CLIPModel"],
            "projection_dim": model.config.embed_dim,
            "logit_scale_init_value": model.config.logit_scale_init,
            "vision_config": _vision_config(image, image_size, channels),
            "text_config": _text_config(text, model.config.eos_id),
            "dtype": "float32"}
  return hf_layout.HFExport(
      config=config, tensors=tensors, reference=_reference,
      outputs=lambda out: {"image_embeds": np.asarray(out["image"]),
                           "text_embeds": np.asarray(out["text"])},
      tokenizer_config={"tokenizer_class": "PreTrainedTokenizerFast",
                        "model_max_length": text.block_size},
      usage="model = transformers.CLIPModel.from_pretrained(DIR)")


def _reference(model_dir: str, batch: dict) -> dict:
  import torch
  import transformers
  model = transformers.CLIPModel.from_pretrained(model_dir).eval()
  images, ids = hf_layout.torch_inputs(batch, "images", "texts")
  with torch.no_grad():
    out = model(input_ids=ids, pixel_values=images.permute(0, 3, 1, 2))
  return {"image_embeds": out.image_embeds.numpy(),
          "text_embeds": out.text_embeds.numpy()}
