"""What model family modules share besides layers: config blocks from their
`Config` dataclass, checks, parameter counts, FLOPs, LoRA merging, and
families composed of others by name (`part_block`, `part`)."""
import dataclasses
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import linen as nn
from ml_collections.config_dict import placeholder

from bigmodel_jax import perf, registry
from bigmodel_jax.errors import ConfigError


def _placeholder_type(annotation):
  """int for `int`, `int | None`; None for `Any`."""
  args = [a for a in typing.get_args(annotation) if a is not type(None)]
  annotation = args[0] if args else annotation
  return annotation if isinstance(annotation, type) else None


def config_block(name: str, config_class, *field_dicts: dict
                 ) -> ml_collections.ConfigDict:
  """A `config.model` block with every field of the family's `Config`
  dataclass explicit, its defaults (the only ones) updated by the dicts in
  order (variant, overrides). A field that stays None (vocab_size,
  num_classes: until the data fills it in) is a typed placeholder."""
  hints = typing.get_type_hints(config_class)
  fields = {f.name: f.default if f.default is not dataclasses.MISSING else None
            for f in dataclasses.fields(config_class)}
  for more in field_dicts:
    unknown = sorted(set(more) - set(fields))
    if unknown:
      raise ConfigError(f"Unknown {name} config fields {unknown}; have "
                       f"{sorted(fields)}.")
    fields.update(more)
  block = {"name": name}
  for key, value in fields.items():
    block[key] = (value if value is not None else
                  placeholder(_placeholder_type(hints[key])))
  return ml_collections.ConfigDict(block)


def part_block(family: str, variant: str, overrides: dict
               ) -> ml_collections.ConfigDict:
  """The config block of a family's variant, as a part of a composed
  family's block (two towers' image and text towers)."""
  return registry.get("models", family).model_config(variant, **overrides)


def part(block, **fields) -> nn.Module:
  """The model of a part's block (its family picked by `block.name`), the
  placeholders among `fields` filled in."""
  block = ml_collections.ConfigDict(block.to_dict())
  for key, value in fields.items():
    if key in block and block[key] is None:
      block[key] = value
  return registry.get("models", block.name).make(block)


def variant_config(name: str, config_class, variants: dict, variant: str,
                   *field_dicts: dict) -> ml_collections.ConfigDict:
  """`config_block` of a named variant of `variants`; ConfigError naming
  the variants for an unknown one."""
  if variant not in variants:
    raise ConfigError(f"Unknown {name.upper()} variant {variant!r}; have "
                      f"{list(variants)}.")
  return config_block(name, config_class, variants[variant], *field_dicts)


def bounded(default, low, high=math.inf):
  """A `Config` field whose values lie in [low, high), e.g. a dropout rate
  (0, 1) or a LoRA rank that may be 0. Unmarked fields get their range
  from their type: an int is a count or size (>= 1), a float a finite
  number > 0 (an epsilon, a scale)."""
  return dataclasses.field(default=default, metadata={"range": (low, high)})


def _check_range(name: str, value, annotation, metadata) -> None:
  """ConfigError unless a number field's value is in its range."""
  kind = _placeholder_type(annotation)
  if value is None or kind not in (int, float):
    return
  if "range" in metadata:
    low, high = metadata["range"]
    allowed = (f"a number in [{low}, {high})" if high < math.inf else
               f"a number >= {low}")
    in_range = lambda v: low <= v < high
  elif kind is int:
    allowed, in_range = "a whole number >= 1", lambda v: v >= 1 and v == int(v)
  else:
    allowed, in_range = "a finite number > 0", lambda v: v > 0
  if (isinstance(value, bool) or not isinstance(value, (int, float)) or
      not math.isfinite(value) or not in_range(value)):
    raise ConfigError(f"config.model.{name}={value!r} is not allowed: "
                      f"{allowed}.")


def config_fields(config, config_class, choices: dict | None = None) -> dict:
  """A `config.model` block's fields for the family's `Config` (absent
  ones at their defaults), checking that fields without a default are set, each number in its range (see
  `bounded`) and each `choices` key allowed."""
  fields = {k: v for k, v in config.items() if k != "name"}
  hints = typing.get_type_hints(config_class)
  for f in dataclasses.fields(config_class):  # Older runs' configs lack
    if f.name not in fields and f.default is not dataclasses.MISSING:
      fields[f.name] = f.default              # fields added since.
  for f in dataclasses.fields(config_class):
    if f.default is dataclasses.MISSING and fields.get(f.name) is None:
      raise ConfigError(f"config.model.{f.name} is not set (normally from "
                       "the data or the variant).")
    _check_range(f.name, fields.get(f.name), hints[f.name], f.metadata)
  for key, allowed in (choices or {}).items():
    if fields.get(key) not in allowed:
      raise ConfigError(f"config.model.{key} must be one of {allowed}, got "
                       f"{fields.get(key)!r}.")
  return fields


def check_heads(fields: dict, head_dim: int | None = None) -> None:
  """`num_heads` must divide `emb_dim` unless the head size is explicit."""
  if head_dim is None and fields["emb_dim"] % fields["num_heads"]:
    raise ConfigError(
        f"config.model.num_heads={fields['num_heads']} does not divide "
        f"config.model.emb_dim={fields['emb_dim']}; choose a divisor"
        f"{' or set config.model.head_dim' if 'head_dim' in fields else ''}.")


def check_lora_targets(fields: dict, allowed: tuple) -> None:
  """`lora_targets` must name projections that can carry adapters."""
  unknown = set(fields.get("lora_targets", "query").split(",")) - set(allowed)
  if unknown:
    raise ConfigError(f"config.model.lora_targets has {sorted(unknown)}; "
                      f"choose from {allowed}.")


def lm_task(config) -> str:
  """`default_task` of the language-model families."""
  del config
  return "lm"


def classification_task(config) -> str:
  """`default_task` of the image classifier families."""
  del config
  return "classification"


def layer_presets(num_layers: int, head: str) -> dict:
  """`trainable_presets` of an encoder with layers "layer_0".. (none when
  they are shared: 0) and a head matching the regex `head`: "head", "lora"
  (the LoRA adapters and the head) and "topK" (the top K layers and the
  head)."""
  presets = {"head": head, "lora": rf"lora_|{head}"}
  for k in range(1, num_layers + 1):
    top = "|".join(str(i) for i in range(num_layers - k, num_layers))
    presets[f"top{k}"] = rf"^layer_({top})/|{head}"
  return presets


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def xla_flops_per_item(model: nn.Module, params, example_args) -> float:
  """Training FLOPs per example, counted by XLA (3x the forward pass)."""
  del params
  return perf.training_flops_per_example(model, example_args)


def variable_shapes(model: nn.Module, example_shape: tuple, dtype) -> dict:
  """The shapes of a model's variables ({"params": ..., ...}), unbuilt."""
  return jax.tree.map(lambda x: x.shape, nn.unbox(jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct(example_shape, dtype))))


def restart_mismatched_head(params: dict, target) -> dict:
  """params["head"] set to zeros when its shapes differ from the target's
  (fine-tuning on another number of classes)."""
  if "head" in params and (jax.tree.map(jnp.shape, params["head"]) !=
      jax.tree.map(lambda t: t.shape, target["head"])):
    params["head"] = jax.tree.map(lambda t: np.zeros(t.shape, t.dtype),
                                  target["head"])
  return params


def merge_lora(params, scale: float):
  """`params` with every LoRA pair folded into its kernel (kernel + A B *
  scale, scale = alpha / rank): the plain model computing the same."""
  if not isinstance(params, dict):
    return params
  out = {k: merge_lora(v, scale) for k, v in params.items()
         if k not in ("lora_a", "lora_b")}
  if "lora_a" in params:
    out["kernel"] = params["kernel"] + scale * jnp.tensordot(
        params["lora_a"], params["lora_b"], 1)
  return out


def merged(params, cfg):
  """`params` of a model config `cfg` with its LoRA adapters (if any)
  merged."""
  if not cfg.lora_rank:
    return params
  return merge_lora(params, cfg.lora_alpha / cfg.lora_rank)
