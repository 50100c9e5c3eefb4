"""Hugging Face ResNetForImageClassification <-> our ResNet, by a table.

Both are ResNet v1.5 (the stride in the 3x3 convolution of a bottleneck)
with a 7x7 stem and max-pool; our BatchNorm statistics ("batch_stats") are
HF's running mean and variance. The small stem and GroupNorm have no HF
equivalent.
"""
import numpy as np

from bigmodel_jax.errors import NotExportable
from bigmodel_jax.hf import layout as hf_layout

OPTIONAL = ("classifier.",)


def _conv_norm(hf: str, conv: tuple, norm: tuple) -> list:
  """A convolution and its BatchNorm (parameters and statistics)."""
  return [(f"{hf}convolution.weight", ("params", *conv, "kernel"), "conv"),
          (f"{hf}normalization.weight", ("params", *norm, "scale"), 0),
          (f"{hf}normalization.bias", ("params", *norm, "bias"), 0),
          (f"{hf}normalization.running_mean", ("batch_stats", *norm, "mean"),
           0),
          (f"{hf}normalization.running_var", ("batch_stats", *norm, "var"),
           0)]


def rules(cfg) -> list:
  """The layout (see `hf_layout`) over our variables (params, batch_stats)."""
  out = _conv_norm("resnet.embedder.embedder.", ("stem_conv",),
                   ("stem_norm",))
  convs = 2 if cfg.block == "basic" else 3
  for stage, num_blocks in enumerate(cfg.stage_sizes):
    for i in range(num_blocks):
      hf = f"resnet.encoder.stages.{stage}.layers.{i}."
      ours = f"stage_{stage}_block_{i}"
      for k in range(convs):
        out += _conv_norm(f"{hf}layer.{k}.", (ours, f"conv_{k}"),
                          (ours, f"norm_{k}"))
      if i == 0 and (stage > 0 or cfg.block == "bottleneck"):
        out += _conv_norm(f"{hf}shortcut.", (ours, "proj_conv"),
                          (ours, "proj_norm"))
  return out + [("classifier.1.weight", ("params", "head", "kernel"), 1),
                ("classifier.1.bias", ("params", "head", "bias"), 0)]


def config_fields(config: dict) -> dict:
  """Our `config.model` fields that an HF ResNet config.json sets."""
  return {"block": config["layer_type"],
          "stage_sizes": tuple(config["depths"]),
          "width": config["embedding_size"], "stem": "imagenet",
          "norm": "batch"}


def read_variables(model_dir: str, cfg, shapes) -> dict:
  """Variables (numpy, our `shapes`) of an HF ResNet checkpoint; a
  classifier of another class count is left out."""
  return hf_layout.from_hf(hf_layout.read_tensors(model_dir), rules(cfg),
                           shapes, OPTIONAL)


def export(variables, cfg, class_names) -> hf_layout.HFExport:
  """The ResNetForImageClassification directory of a `resnet.Config` model."""
  if cfg.stem != "imagenet" or cfg.norm != "batch":
    raise NotExportable(
        f"model.stem={cfg.stem!r} / model.norm={cfg.norm!r} have no "
        "ResNetForImageClassification equivalent (it has the 'imagenet' stem "
        "and BatchNorm).")
  tensors = hf_layout.to_hf(variables, rules(cfg))
  for name in [n for n in tensors if n.endswith("running_var")]:
    tensors[name.replace("running_var", "num_batches_tracked")] = np.zeros(
        (), np.int64)
  expansion = 1 if cfg.block == "basic" else 4
  channels = tensors["resnet.embedder.embedder.convolution.weight"].shape[1]
  config = {
      "model_type": "resnet", "architectures": ["ResNetForImageClassification"],
      "num_channels": channels, "embedding_size": cfg.width,
      "hidden_sizes": [expansion * cfg.width * 2 ** s
                       for s in range(len(cfg.stage_sizes))],
      "depths": list(cfg.stage_sizes), "layer_type": cfg.block,
      "hidden_act": "relu", "downsample_in_first_stage": False,
      "downsample_in_bottleneck": False, "dtype": "float32",
      **hf_layout.labels(class_names, cfg.num_classes)}
  return hf_layout.HFExport(
      config=config, tensors=tensors,
      reference=hf_layout.image_classifier_reference(
          "ResNetForImageClassification"),
      outputs=hf_layout.classifier_outputs,
      usage=("model = transformers.ResNetForImageClassification"
             ".from_pretrained(DIR)"))
