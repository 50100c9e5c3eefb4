"""Inception-v3 (Szegedy et al. 2016) image classifier, laid out and named as
torchvision's and timm's `inception_v3`: every convolution is a "basic
conv" (bias-free convolution, BatchNorm with epsilon 1e-3, ReLU); blocks
Mixed_5b..5d (A: 1x1, 5x5, double 3x3, pooled 1x1), Mixed_6a (B: grid
reduction), Mixed_6b..6e (C: 7x7 factorised into 1x7 and 7x1), Mixed_7a (D:
grid reduction), Mixed_7b..7c (E: 3x3 split into 1x3 and 3x1 side by side);
global average pooling, dropout and the classifier.

`aux_head`: the auxiliary classifier on Mixed_6e's 17x17 grid (5x5 average
pool stride 3, 1x1 to 128, 5x5 to 768, the classifier); in training the
model then returns {"logits", "aux_logits"} and the classification task
adds the auxiliary loss (weight 0.4); evaluation and serving use the main
head alone. `stem="small"` (3x3 to 64, 1x1 to 80, 3x3 to 192, all stride 1,
no pooling) keeps tiny images such as the 8x8 digits whole; `width`
scales every channel count. The ImageNet variant ("v3": 299x299, 1,000
classes) has torchvision's 23,834,568 parameters (27,161,264 with the
auxiliary head).

  model = inception.make(inception.model_config("v3", num_classes=1000))
  logits, updates = model.apply(variables, images, train=True,
                                rngs={"dropout": key},
                                mutable=["batch_stats"])
"""
import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax import families
from bigmodel_jax.errors import ConfigError, NotExportable
from bigmodel_jax.layers.linear import Linear, zeros_init

VARIANTS = {"v3": {}}


@dataclasses.dataclass(frozen=True)
class Config:
  """The Inception fields and their defaults (the only ones): see the
  module doc."""
  num_classes: int  # From the data.
  width: float = 1.0
  stem: str = "imagenet"  # "imagenet" (299x299) or "small".
  aux_head: bool = False
  dropout: float = families.bounded(0.5, 0, 1)
  bn_momentum: float = families.bounded(0.9, 0, 1)
  dtype: Any = "float32"
  param_dtype: Any = "float32"


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block of "v3" (the only variant)."""
  return families.variant_config("inception", Config, VARIANTS, variant,
                                 overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  return Model(Config(**families.config_fields(
      config, Config, {"stem": ("imagenet", "small")})))


class BasicConv(nn.Module):
  """Convolution (no bias), BatchNorm (epsilon 1e-3), ReLU."""
  config: Config
  features: int
  kernel: tuple
  strides: int = 1
  padding: Any = "VALID"  # Or ((top, bottom), (left, right)).

  @nn.compact
  def __call__(self, x, train: bool):
    cfg = self.config
    x = nn.Conv(
        max(1, round(self.features * cfg.width)), self.kernel,
        (self.strides,) * 2, padding=self.padding, use_bias=False,
        dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="conv",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.truncated_normal(0.1),
            (None, None, "conv_in", "conv_out")))(x)
    x = nn.BatchNorm(
        use_running_average=not train, momentum=cfg.bn_momentum,
        epsilon=1e-3, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        name="bn", scale_init=nn.with_logical_partitioning(
            nn.initializers.ones, ("norm",)),
        bias_init=zeros_init(("norm",)))(x)
    return nn.with_logical_constraint(
        nn.relu(x), ("batch", "height", "width", "act_channels"))


def _same(kernel: tuple) -> tuple:
  """Padding that keeps the grid of a stride-1 kernel (odd sizes)."""
  return tuple((k // 2, k // 2) for k in kernel)


def _avg_pool(x):
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def _max_pool(x):
  return nn.max_pool(x, (3, 3), (2, 2))


class Mixed(nn.Module):
  """An Inception block: branches of basic convolutions (and a pool), their
  outputs concatenated. `branches`: name -> convolutions (features, kernel,
  stride) in order, or "max" (3x3/2 max-pool); a name ending in "a"/"b"
  pair splits the branch's last step into two convolutions side by side
  (block E). A 1x1 "branch_pool" convolves a 3x3 average pool."""
  config: Config
  branches: tuple  # ((name, steps), ...)

  @nn.compact
  def __call__(self, x, train: bool):
    outs = []
    for name, steps in self.branches:
      if steps == "max":
        outs.append(_max_pool(x))
        continue
      y = _avg_pool(x) if name == "branch_pool" else x
      for i, step in enumerate(steps):
        convs = step if isinstance(step[0], tuple) else (step,)
        parts = [BasicConv(self.config, f, k, s,
                           _same(k) if s == 1 else "VALID",
                           name=_name(name, i, j, len(steps), len(convs)))(
                               y, train)
                 for j, (f, k, s) in enumerate(convs)]
        y = jnp.concatenate(parts, -1)
      outs.append(y)
    return jnp.concatenate(outs, -1)


def _name(branch: str, step: int, part: int, steps: int, parts: int) -> str:
  """torchvision's names: branch1x1; branch5x5_1, _2; branch3x3_2a, _2b."""
  if steps == 1 and parts == 1:
    return branch
  return f"{branch}_{step + 1}" + ("ab"[part] if parts > 1 else "")


def block_a(pool_features: int) -> tuple:
  return (("branch1x1", ((64, (1, 1), 1),)),
          ("branch5x5", ((48, (1, 1), 1), (64, (5, 5), 1))),
          ("branch3x3dbl", ((64, (1, 1), 1), (96, (3, 3), 1),
                            (96, (3, 3), 1))),
          ("branch_pool", ((pool_features, (1, 1), 1),)))


def block_b() -> tuple:
  return (("branch3x3", ((384, (3, 3), 2),)),
          ("branch3x3dbl", ((64, (1, 1), 1), (96, (3, 3), 1),
                            (96, (3, 3), 2))),
          ("pool", "max"))


def block_c(c7: int) -> tuple:
  return (("branch1x1", ((192, (1, 1), 1),)),
          ("branch7x7", ((c7, (1, 1), 1), (c7, (1, 7), 1),
                         (192, (7, 1), 1))),
          ("branch7x7dbl", ((c7, (1, 1), 1), (c7, (7, 1), 1),
                            (c7, (1, 7), 1), (c7, (7, 1), 1),
                            (192, (1, 7), 1))),
          ("branch_pool", ((192, (1, 1), 1),)))


def block_d() -> tuple:
  return (("branch3x3", ((192, (1, 1), 1), (320, (3, 3), 2))),
          ("branch7x7x3", ((192, (1, 1), 1), (192, (1, 7), 1),
                           (192, (7, 1), 1), (192, (3, 3), 2))),
          ("pool", "max"))


def block_e() -> tuple:
  split = ((384, (1, 3), 1), (384, (3, 1), 1))
  return (("branch1x1", ((320, (1, 1), 1),)),
          ("branch3x3", ((384, (1, 1), 1), split)),
          ("branch3x3dbl", ((448, (1, 1), 1), (384, (3, 3), 1), split)),
          ("branch_pool", ((192, (1, 1), 1),)))


BLOCKS = (("Mixed_5b", block_a(32)), ("Mixed_5c", block_a(64)),
          ("Mixed_5d", block_a(64)), ("Mixed_6a", block_b()),
          ("Mixed_6b", block_c(128)), ("Mixed_6c", block_c(160)),
          ("Mixed_6d", block_c(160)), ("Mixed_6e", block_c(192)),
          ("Mixed_7a", block_d()), ("Mixed_7b", block_e()),
          ("Mixed_7c", block_e()))


class Model(nn.Module):
  """Inception-v3: images (B, H, W, C) -> logits (B, num_classes) float32."""
  config: Config

  def _head(self, name: str):
    cfg = self.config
    return Linear((cfg.num_classes,), ("embed", "classes"), 0.01, True,
                  cfg.dtype, cfg.param_dtype, name=name)

  @nn.compact
  def __call__(self, images, *, train: bool = False, features: bool = False):
    """Logits (with the auxiliary head, in training: {"logits",
    "aux_logits"}), or with `features` the pooled features."""
    cfg = self.config
    conv = functools.partial(BasicConv, cfg)
    x = images
    if cfg.stem == "imagenet":
      x = conv(32, (3, 3), 2, name="Conv2d_1a_3x3")(x, train)
      x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x, train)
      x = _max_pool(conv(64, (3, 3), padding=((1, 1),) * 2,
                         name="Conv2d_2b_3x3")(x, train))
      x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x, train)
      x = _max_pool(conv(192, (3, 3), name="Conv2d_4a_3x3")(x, train))
    else:
      x = conv(64, (3, 3), padding=((1, 1),) * 2,
               name="Conv2d_2b_3x3")(x, train)
      x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x, train)
      x = conv(192, (3, 3), padding=((1, 1),) * 2,
               name="Conv2d_4a_3x3")(x, train)
    aux = None
    for name, branches in BLOCKS:
      x = Mixed(cfg, branches, name=name)(x, train)
      if name == "Mixed_6e" and cfg.aux_head and (train or
                                                  self.is_initializing()):
        aux = self._auxiliary(x, train)
    x = x.mean((1, 2))
    if features:
      return x
    x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
    logits = self._head("fc")(x).astype(jnp.float32)
    return logits if aux is None else {"logits": logits, "aux_logits": aux}

  def _auxiliary(self, x, train: bool):
    if min(x.shape[1:3]) < 17:
      raise ConfigError(f"model.aux_head needs Mixed_6e's grid of 17x17 "
                        f"(it is {x.shape[1]}x{x.shape[2]}): 299x299 images "
                        "and the imagenet stem.")
    conv = functools.partial(BasicConv, self.config)
    y = nn.avg_pool(x, (5, 5), (3, 3))
    y = conv(128, (1, 1), name="AuxLogits_conv0")(y, train)
    y = conv(768, (5, 5), name="AuxLogits_conv1")(y, train).mean((1, 2))
    return self._head("AuxLogits_fc")(y).astype(jnp.float32)


def adapt_params(loaded: dict, target) -> dict:
  """Fits pretrained params to another class count: new heads."""
  return families.restart_mismatched_head(dict(loaded), target)


def export_hf(variables, config, class_names):
  """Refused: transformers has no Inception-v3."""
  del variables, config, class_names
  raise NotExportable(
      "Model family 'inception' has no Hugging Face equivalent (transformers "
      "has no Inception-v3; timm's inception_v3 is torch code, not a "
      "transformers layout); --format jax exports it.")


default_task = families.classification_task
num_params = families.num_params
flops_per_item = families.xla_flops_per_item
load_hf = trainable_presets = None  # None exist.


def capabilities(config) -> dict:
  """Gradients reach its pixels (attributions); it gives pooled features."""
  del config
  return {"pixels": None, "image_features": None}
