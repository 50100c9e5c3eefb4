"""ResNet (v1.5) image classifier with BatchNorm or GroupNorm, axes named.

BatchNorm statistics live in the "batch_stats" collection: the train step
updates them from the (global, sharded) batch, evaluation reads the running
averages, and checkpoints save them with the parameters. `stem="small"` (3x3
stride-1 convolution, no max-pool) suits tiny images such as 8x8 digits or
CIFAR; `width` scales all channel counts.

  model = resnet.make(resnet.model_config("50", num_classes=1000))
  logits, updates = model.apply(variables, images, train=True,
                                mutable=["batch_stats"])
"""
import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from bigmodel_jax.errors import ConfigError
from bigmodel_jax import families
from bigmodel_jax.hf import layout as hf_layout, resnet as resnet_hf
from bigmodel_jax.layers.linear import Linear, zeros_init

# Depth -> (block type, blocks per stage), as in He et al. 2016.
VARIANTS = {
    "18": ("basic", (2, 2, 2, 2)),
    "34": ("basic", (3, 4, 6, 3)),
    "50": ("bottleneck", (3, 4, 6, 3)),
    "101": ("bottleneck", (3, 4, 23, 3)),
    "152": ("bottleneck", (3, 8, 36, 3)),
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The ResNet fields and their defaults (the only ones): see the module doc."""
  num_classes: int  # From the data.
  block: str  # From the variant: "basic" or "bottleneck".
  stage_sizes: tuple
  width: int = 64
  stem: str = "imagenet"  # "imagenet" (7x7/2 conv + max-pool) or "small".
  norm: str = "batch"  # "batch" or "group".
  num_groups: int = 32
  bn_momentum: float = families.bounded(0.9, 0, 1)
  dtype: Any = "float32"
  param_dtype: Any = "float32"


def model_config(variant: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block for a depth: "18", "34", "50", "101", "152"."""
  if variant not in VARIANTS:
    raise ConfigError(f"Unknown ResNet variant {variant!r}; have "
                     f"{list(VARIANTS)}.")
  block, stages = VARIANTS[variant]
  return families.config_block("resnet", Config,
                             {"block": block, "stage_sizes": stages},
                             overrides)


def make(config: ml_collections.ConfigDict) -> "Model":
  fields = families.config_fields(config, Config, {
      "block": ("basic", "bottleneck"), "stem": ("imagenet", "small"),
      "norm": ("batch", "group")})
  return Model(Config(**{**fields, "stage_sizes": tuple(fields["stage_sizes"])}))


def _norm(cfg: Config, train: bool, name: str, zero_scale: bool = False):
  """BatchNorm or GroupNorm; `zero_scale` starts a residual branch at zero."""
  init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  common = dict(
      epsilon=1e-5, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(init, ("norm",)),
      bias_init=zeros_init(("norm",)))
  if cfg.norm == "batch":
    return nn.BatchNorm(use_running_average=not train,
                        momentum=cfg.bn_momentum, **common)
  return _GroupNorm(cfg.num_groups, common)


class _GroupNorm(nn.Module):
  """GroupNorm with at most `num_groups` groups that divide the channels."""
  num_groups: int
  kwargs: dict

  @nn.compact
  def __call__(self, x):
    groups = next(g for g in range(min(self.num_groups, x.shape[-1]), 0, -1)
                  if x.shape[-1] % g == 0)
    return nn.GroupNorm(num_groups=groups, **{**self.kwargs, "name": None})(x)


def _conv(cfg: Config, features: int, kernel: int, strides: int, name: str):
  return nn.Conv(
      features, (kernel, kernel), (strides, strides), use_bias=False,
      padding=[(kernel // 2, kernel // 2)] * 2, dtype=cfg.dtype,
      param_dtype=cfg.param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
          (None, None, "conv_in", "conv_out")))


def _constrain(x):
  return nn.with_logical_constraint(x, ("batch", "height", "width",
                                       "act_channels"))


class Block(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 x4) block."""
  config: Config
  features: int
  strides: int

  @nn.compact
  def __call__(self, x, *, train: bool):
    cfg = self.config
    norm = functools.partial(_norm, cfg, train)
    if cfg.block == "basic":
      convs = ((self.features, 3, self.strides), (self.features, 3, 1))
    else:
      convs = ((self.features, 1, 1), (self.features, 3, self.strides),
               (4 * self.features, 1, 1))
    y = x
    for i, (features, kernel, strides) in enumerate(convs):
      y = _conv(cfg, features, kernel, strides, f"conv_{i}")(y)
      y = norm(f"norm_{i}", zero_scale=i == len(convs) - 1)(y)
      y = nn.relu(y) if i < len(convs) - 1 else y
    if x.shape != y.shape:
      x = _conv(cfg, y.shape[-1], 1, self.strides, "proj_conv")(x)
      x = norm("proj_norm")(x)
    return _constrain(nn.relu(x + y))


class Model(nn.Module):
  """ResNet: images (B, H, W, C) float -> logits (B, num_classes) float32."""
  config: Config

  @nn.compact
  def __call__(self, images, *, train: bool = False, features: bool = False):
    """Logits (B, num_classes), or with `features` the pooled features."""
    cfg = self.config
    if cfg.stem == "imagenet":
      x = _conv(cfg, cfg.width, 7, 2, "stem_conv")(images)
      x = nn.relu(_norm(cfg, train, "stem_norm")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = _conv(cfg, cfg.width, 3, 1, "stem_conv")(images)
      x = nn.relu(_norm(cfg, train, "stem_norm")(x))
    x = _constrain(x)
    for stage, num_blocks in enumerate(cfg.stage_sizes):
      for i in range(num_blocks):
        x = Block(cfg, cfg.width * 2 ** stage,
                  2 if stage > 0 and i == 0 else 1,
                  name=f"stage_{stage}_block_{i}")(x, train=train)
    x = x.mean((1, 2))
    if features:
      return x
    logits = Linear((cfg.num_classes,), ("embed", "classes"), 0.01,
                           True, cfg.dtype, cfg.param_dtype, name="head")(x)
    return logits.astype(jnp.float32)


def adapt_params(loaded: dict, target) -> dict:
  """Fits pretrained params to another class count: a new head."""
  return families.restart_mismatched_head(dict(loaded), target)


def load_hf(model_dir: str, config) -> dict:
  """Variables (numpy: params and BatchNorm statistics) of a Hugging Face
  ResNet checkpoint for our `config.model` block, whose architecture must be
  the checkpoint's; a head of another class count is left out."""
  hf = hf_layout.read_config(model_dir, "resnet")
  ours = make(config).config
  hf_layout.check_fields(dataclasses.asdict(ours), resnet_hf.config_fields(hf),
                         model_dir)
  shapes = families.variable_shapes(Model(ours), (1, 32, 32, hf["num_channels"]),
                                  jnp.float32)
  return resnet_hf.read_variables(model_dir, ours, shapes)


def export_hf(variables, config, class_names) -> hf_layout.HFExport:
  """The Hugging Face directory of our model (see `resnet_hf.export`)."""
  return resnet_hf.export(variables, make(config).config, class_names)


default_task = families.classification_task
num_params = families.num_params
flops_per_item = families.xla_flops_per_item
trainable_presets = None  # None yet.


def capabilities(config) -> dict:
  """Gradients reach its pixels (attributions); it gives pooled features."""
  del config
  return {"pixels": None, "image_features": None}
