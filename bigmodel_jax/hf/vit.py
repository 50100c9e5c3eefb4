"""Hugging Face ViTForImageClassification <-> our ViT, by a declarative table.

Our patch embedding is a linear layer on flattened (p, p, C) patches: the
same numbers as HF's stride-p convolution. HF adds a position embedding to
the class token too; ours has none, so export writes a zero row and import
folds that row into the class token (outputs equal both ways, and export ->
import -> export is a fixed point). Only class-token pooling has an HF
equivalent.
"""
import numpy as np

from bigmodel_jax.errors import NotExportable
from bigmodel_jax.hf import layout as hf_layout

OPTIONAL = ("classifier.",)
ACTIVATION = {"gelu": "gelu_pytorch_tanh", "gelu_exact": "gelu",  # Ours: HF's.
              "quick_gelu": "quick_gelu"}


def rules(num_layers: int) -> list:
  """The layout (see `hf_layout`) without the class token and positions."""
  out = [("vit.embeddings.patch_embeddings.projection.weight",
          ("embedding", "kernel"), "conv"),
         ("vit.embeddings.patch_embeddings.projection.bias",
          ("embedding", "bias"), 0),
         ("vit.layernorm.weight", ("ln_f", "scale"), 0),
         ("vit.layernorm.bias", ("ln_f", "bias"), 0),
         ("classifier.weight", ("head", "kernel"), 1),
         ("classifier.bias", ("head", "bias"), 0)]
  for i in range(num_layers):
    out += hf_layout.encoder_layer(
        f"vit.encoder.layer.{i}.", f"block_{i}", "attention.attention.",
        (("layernorm_before", "ln_1"), ("layernorm_after", "ln_2")))
  return out


def config_fields(config: dict) -> dict:
  """Our `config.model` fields that an HF ViT config.json sets."""
  return {"emb_dim": config["hidden_size"],
          "num_layers": config["num_hidden_layers"],
          "num_heads": config["num_attention_heads"],
          "mlp_dim": config["intermediate_size"],
          "patch_size": config["patch_size"], "pool": "token"}


def read_params(model_dir: str, cfg, shapes) -> dict:
  """Params (numpy, our `shapes`) of an HF ViT checkpoint; a classifier of
  another class count is left out."""
  tensors = hf_layout.read_tensors(model_dir)
  params = hf_layout.from_hf(tensors, rules(cfg.num_layers), shapes, OPTIONAL)
  positions = tensors["vit.embeddings.position_embeddings"][0]
  params["cls"] = (tensors["vit.embeddings.cls_token"] + positions[0]
                   ).reshape(shapes["cls"])
  params["posemb"] = positions[1:]
  return params


def export(params, cfg, class_names) -> hf_layout.HFExport:
  """The ViTForImageClassification directory of a `vit.Config` model."""
  if cfg.head_dim and cfg.head_dim * cfg.num_heads != cfg.emb_dim:
    raise NotExportable(
        f"model.head_dim={cfg.head_dim} x num_heads={cfg.num_heads} != "
        f"emb_dim={cfg.emb_dim} (heads pruned): ViT in transformers needs "
        "them equal.")
  if cfg.pool != "token":
    raise NotExportable(
        f"model.pool={cfg.pool!r} (global average pooling) has no "
        "ViTForImageClassification equivalent: it classifies the class token.")
  if cfg.pre_norm or not cfg.patch_bias or cfg.mlp not in ACTIVATION:
    raise NotExportable(
        f"model.pre_norm={cfg.pre_norm}, patch_bias={cfg.patch_bias}, "
        f"mlp={cfg.mlp!r}: ViTForImageClassification has no LayerNorm before "
        f"its blocks, a patch bias and an MLP of {sorted(ACTIVATION)}.")
  patch = cfg.patch_size
  kernel = np.asarray(params["embedding"]["kernel"])
  channels = kernel.shape[0] // (patch * patch)
  params = {**params, "embedding": {
      **params["embedding"],
      "kernel": kernel.reshape(patch, patch, channels, cfg.emb_dim)}}
  tensors = hf_layout.to_hf(params, rules(cfg.num_layers))
  posemb = np.asarray(params["posemb"], np.float32)
  tensors["vit.embeddings.position_embeddings"] = np.concatenate(
      [np.zeros((1, cfg.emb_dim), np.float32), posemb])[None]
  tensors["vit.embeddings.cls_token"] = np.asarray(params["cls"], np.float32)
  grid = round(posemb.shape[0] ** 0.5)
  config = {
      "model_type": "vit", "architectures": ["ViTForImageClassification"],
      "hidden_size": cfg.emb_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_dim,
      "hidden_act": ACTIVATION[cfg.mlp], "layer_norm_eps": cfg.norm_eps,
      "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": 0.0,
      "image_size": grid * patch, "patch_size": patch,
      "num_channels": channels, "qkv_bias": True, "dtype": "float32",
      **hf_layout.labels(class_names, cfg.num_classes)}
  return hf_layout.HFExport(
      config=config, tensors=tensors,
      reference=hf_layout.image_classifier_reference(
          "ViTForImageClassification"),
      outputs=hf_layout.classifier_outputs,
      usage="model = transformers.ViTForImageClassification.from_pretrained(DIR)")
