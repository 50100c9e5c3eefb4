"""Hugging Face checkpoint layouts, shared by the families' `*_hf` modules.

A layout is a list of rules `(HF tensor name, our path, kind)`:

  kind 0       the tensor as it is (reshaped to our shape)
  kind k > 0   a torch Linear weight (out, in) whose input is our kernel's
               first k axes: stored transposed
  kind -k      a GPT-2 Conv1D weight (in, out), input our first k axes
  "conv"       a torch Conv2d weight (out, in, h, w); ours is (h, w, in, out)
  "conv1d"     a torch Conv1d weight (out, in, w); ours is (w, in, out)

`to_hf` and `from_hf` apply a layout in either direction; a family's export
hook returns an `HFExport`, which `bigmodel_jax.export` writes and verifies.
"""
import dataclasses
import json
import math
import os
from typing import Any, Callable

import numpy as np

from bigmodel_jax.errors import CheckpointError, ConfigError, NotFound


@dataclasses.dataclass
class HFExport:
  """A Hugging Face directory, before it is written.

  `reference(directory, batch)` loads the written directory with the
  reference library (transformers, sentence-transformers) and returns its
  outputs on a batch of the run's data; `outputs(ours)` turns our model's
  outputs into the same names, so export can compare them.
  """
  config: dict  # config.json.
  tensors: dict  # model.safetensors: HF name -> numpy array.
  reference: Callable[[str, dict], dict]
  outputs: Callable[[Any], dict]
  files: dict = dataclasses.field(default_factory=dict)  # Path -> JSON/array dict.
  tokenizer_config: dict | None = None  # Text models: tokenizer_config.json.
  usage: str = ""  # How to load it (a Python snippet for the model card).


def get(tree, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def put(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def linear(hf: str, ours: tuple, k: int = 1) -> list:
  """The rows of a torch Linear `hf` (weight, bias) as our kernel (input:
  its first `k` axes) and bias at path `ours`."""
  return [(f"{hf}.weight", (*ours, "kernel"), k),
          (f"{hf}.bias", (*ours, "bias"), 0)]


def norm(hf: str, ours: tuple) -> list:
  """The rows of a torch LayerNorm `hf` (weight, bias) as our norm's scale
  and bias at path `ours`."""
  return [(f"{hf}.weight", (*ours, "scale"), 0),
          (f"{hf}.bias", (*ours, "bias"), 0)]


def encoder_layer(hf: str, ours: str, attention: str, norms: tuple,
                  suffix: str = "") -> list:
  """The rows of one BERT-style encoder layer (BERT, ViT, DeBERTa):
  `attention` {query,key,value}`suffix` (ours: heads x head_dim),
  attention.output.dense, intermediate.dense, output.dense (ours: out, fc,
  proj) and the two LayerNorms `norms`, (HF name, our name) pairs; `hf`,
  `ours`: prefixes."""
  out = []
  for name in ("query", "key", "value"):
    out += [(f"{hf}{attention}{name}{suffix}.weight", (ours, name, "kernel"),
             1),
            (f"{hf}{attention}{name}{suffix}.bias", (ours, name, "bias"), 0)]
  for hf_name, our_name, k in (("attention.output.dense", "out", 2),
                               ("intermediate.dense", "fc", 1),
                               ("output.dense", "proj", 1)):
    out += [(f"{hf}{hf_name}.weight", (ours, our_name, "kernel"), k),
            (f"{hf}{hf_name}.bias", (ours, our_name, "bias"), 0)]
  for hf_name, our_name in norms:
    out += [(f"{hf}{hf_name}.weight", (ours, our_name, "scale"), 0),
            (f"{hf}{hf_name}.bias", (ours, our_name, "bias"), 0)]
  return out


def to_hf(tree, rules) -> dict:
  """HF-named numpy tensors of our variables `tree` by a layout."""
  out = {}
  for name, path, kind in rules:
    value = np.asarray(get(tree, path), np.float32)
    if kind == "conv":
      value = value.transpose(3, 2, 0, 1)
    elif kind == "conv1d":
      value = value.transpose(2, 1, 0)
    elif kind:
      value = value.reshape(math.prod(value.shape[:abs(kind)]), -1)
      value = value.T if kind > 0 else value
    elif name.endswith(".bias"):  # Ours may be per head: (heads, head_dim).
      value = value.reshape(-1)
    out[name] = np.ascontiguousarray(value)
  return out


def from_hf(tensors: dict, rules, shapes, optional: tuple = ()) -> dict:
  """Our variables (numpy, `shapes`) from HF-named tensors by a layout.

  Tensors whose names start with one of `optional` (a head) may be absent,
  or of another shape (another class count): they are left out.
  """
  missing = [name for name, _, _ in rules
             if name not in tensors and not name.startswith(optional or "\0")]
  if missing:
    raise CheckpointError(f"The checkpoint lacks {missing[:5]} "
                          f"({len(missing)} tensors).")
  out = {}
  for name, path, kind in rules:
    if name not in tensors:
      continue
    value = tensors[name]
    if kind == "conv":
      value = value.transpose(2, 3, 1, 0)
    elif kind == "conv1d":
      value = value.transpose(2, 1, 0)
    elif kind > 0:
      value = value.T
    shape = get(shapes, path)
    if value.size != math.prod(shape):
      if optional and name.startswith(optional):
        continue
      raise ConfigError(f"{name} has shape {value.shape}; the model expects "
                        f"{tuple(shape)}.")
    put(out, path, np.ascontiguousarray(value).reshape(shape))
  return out


def read_config(model_dir: str, model_type: str | tuple) -> dict:
  """config.json of an HF checkpoint directory of `model_type` (or one of
  several)."""
  path = os.path.join(model_dir, "config.json")
  if not os.path.exists(path):
    raise NotFound(f"No Hugging Face checkpoint in {model_dir!r}: it needs "
                   "config.json and model.safetensors.")
  with open(path) as f:
    config = json.load(f)
  if config.get("model_type") not in np.atleast_1d(model_type):
    raise ConfigError(f"{model_dir}: model_type {config.get('model_type')!r} "
                      f"is not {model_type!r}.")
  return config


def read_tensors(model_dir: str, strip_prefix: str = "") -> dict:
  """model.safetensors as numpy arrays, `strip_prefix` removed from names."""
  from safetensors.numpy import load_file  # Only HF checkpoints need it.
  path = os.path.join(model_dir, "model.safetensors")
  if not os.path.exists(path):
    raise NotFound(f"{model_dir} has no model.safetensors.")
  return {k.removeprefix(strip_prefix): v for k, v in load_file(path).items()}


def check_fields(ours: dict, theirs: dict, model_dir: str) -> None:
  """Raises ConfigError naming the fields where our config differs."""
  differ = {k: (ours[k], v) for k, v in theirs.items() if ours[k] != v}
  if differ:
    raise ConfigError(f"config.model differs from {model_dir}/config.json "
                      f"(ours, checkpoint's): {differ}.")


def labels(class_names: list[str] | None, num_classes: int) -> dict:
  """config.json's id2label / label2id of a classifier."""
  names = class_names or [f"LABEL_{i}" for i in range(num_classes)]
  return {"id2label": {str(i): n for i, n in enumerate(names)},
          "label2id": {n: i for i, n in enumerate(names)}}


def torch_inputs(batch: dict, *names):
  """The batch entries `names` as torch tensors (int64 or float32)."""
  import torch  # The reference side only.
  out = []
  for name in names:
    value = np.asarray(batch[name])
    out.append(torch.from_numpy(value.astype(
        np.int64 if np.issubdtype(value.dtype, np.integer) else np.float32)))
  return out


def softmax(logits) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def classifier_outputs(logits) -> dict:
  """What export compares for a classifier: logits and probabilities."""
  return {"logits": np.asarray(logits), "probabilities": softmax(logits)}


def image_classifier_reference(arch: str) -> Callable[[str, dict], dict]:
  """`HFExport.reference` of a transformers image classifier `arch`, fed
  the batch's (B, H, W, C) images as (B, C, H, W) pixel values."""
  def reference(model_dir: str, batch: dict) -> dict:
    import torch
    import transformers
    model = getattr(transformers, arch).from_pretrained(model_dir).eval()
    (images,) = torch_inputs(batch, "inputs")
    with torch.no_grad():
      logits = model(pixel_values=images.permute(0, 3, 1, 2)).logits
    return classifier_outputs(logits.numpy())
  return reference
