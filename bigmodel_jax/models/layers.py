"""Building blocks shared by the model families, every axis logically named."""
import dataclasses
import typing
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import linen as nn
from ml_collections.config_dict import placeholder

from bigmodel_jax import perf
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


def config_fields(config, config_class, choices: dict | None = None) -> dict:
  """A `config.model` block's fields for the family's `Config`, checking
  that fields without a default are set and each `choices` key allowed."""
  fields = {k: v for k, v in config.items() if k != "name"}
  for f in dataclasses.fields(config_class):
    if f.default is dataclasses.MISSING and fields.get(f.name) is None:
      raise ConfigError(f"config.model.{f.name} is not set (normally from "
                       "the data or the variant).")
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


def classification_task(config) -> str:
  """`default_task` of the image classifier families."""
  del config
  return "classification"


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


def xla_flops_per_item(model: nn.Module, params, input_shape) -> float:
  """Training FLOPs per example, counted by XLA (3x the forward pass)."""
  del params
  return perf.training_flops_per_example(model, input_shape)


def variable_shapes(model: nn.Module, example_shape: tuple, dtype) -> dict:
  """The shapes of a model's variables ({"params": ..., ...}), unbuilt."""
  return jax.tree.map(lambda x: x.shape, nn.unbox(jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct(example_shape, dtype))))


def normal_init(std: float, names: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


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


def _kernel_init(init: str, std: float, num_in: int, ndim: int):
  fans = dict(in_axis=tuple(range(num_in)), out_axis=tuple(range(num_in, ndim)))
  if init == "normal":
    return nn.initializers.normal(std)
  if init == "xavier_uniform":
    return nn.initializers.xavier_uniform(**fans)
  if init == "lecun_normal":
    return nn.initializers.lecun_normal(**fans)
  if init == "zeros":
    return nn.initializers.zeros
  raise ValueError(f"Unknown init {init!r}.")


class Linear(nn.Module):
  """Contracts the last `len(in_names)` axes of x with a named kernel.

  The kernel has shape in_shape + `features` and logical axes `names`
  (input axes first); the bias, if any, is named like the output axes.
  `init` is "normal" (with `std`), "xavier_uniform", "lecun_normal" or
  "zeros"; fans count all input / all output axes.

  LoRA (Hu et al. 2021): with `lora_rank` r > 0 the output gains
  (x A) B * lora_alpha / r, A (in, r) initialised as PEFT does and B (r, out)
  at zero, so the layer starts out equal to the plain one.
  """
  features: tuple[int, ...]
  names: tuple[str, ...]
  std: float = 0.02
  use_bias: bool = False
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  init: str = "normal"
  lora_rank: int = 0
  lora_alpha: float = 1.0

  @nn.compact
  def __call__(self, x):
    num_in = len(self.names) - len(self.features)
    shape = x.shape[x.ndim - num_in:] + tuple(self.features)
    init = nn.with_logical_partitioning(
        _kernel_init(self.init, self.std, num_in, len(shape)), self.names)
    kernel = self.param("kernel", init, shape, self.param_dtype)
    # promote_dtype and lax.dot_general: the calls qwix intercepts to run
    # this layer quantized (compress.py, config.quantization).
    x_in, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    # Leading axes merged into one: the kernel's gradient then contracts a
    # single axis (XLA:CPU computes a multi-axis one through transposed
    # copies, 1.8x slower for the GPT MLP); a bitcast on every backend.
    lead, in_shape = x.shape[:x.ndim - num_in], x.shape[x.ndim - num_in:]
    contract = (tuple(range(1, num_in + 1)), tuple(range(num_in)))
    y = jax.lax.dot_general(x_in.reshape((-1,) + in_shape), kernel,
                            (contract, ((), ()))).reshape(lead + shape[num_in:])
    if self.use_bias:
      bias = self.param("bias", zeros_init(self.names[num_in:]),
                        tuple(self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    if self.lora_rank:
      y = y + self._lora(x, num_in)
    return y

  def _lora(self, x, num_in: int):
    in_shape = x.shape[x.ndim - num_in:]
    a_init = nn.initializers.variance_scaling(  # Kaiming-uniform, a=sqrt(5).
        1 / 3, "fan_in", "uniform", in_axis=tuple(range(num_in)), out_axis=-1)
    a = self.param("lora_a", nn.with_logical_partitioning(
        a_init, self.names[:num_in] + ("lora",)),
                   in_shape + (self.lora_rank,), self.param_dtype)
    b = self.param("lora_b", zeros_init(("lora",) + self.names[num_in:]),
                   (self.lora_rank,) + tuple(self.features), self.param_dtype)
    low = jnp.tensordot(x.astype(self.dtype), a.astype(self.dtype), num_in)
    return jnp.tensordot(low, b.astype(self.dtype), 1) * (
        self.lora_alpha / self.lora_rank)
