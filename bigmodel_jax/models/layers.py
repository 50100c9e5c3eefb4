"""Building blocks shared by the model families, every axis logically named."""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import linen as nn
from ml_collections.config_dict import placeholder

from bigmodel_jax import perf


def config_block(name: str, data_field: str, *field_dicts: dict
                 ) -> ml_collections.ConfigDict:
  """A `config.model` block with every field explicit: `name`, then
  `data_field` (vocab_size, num_classes: None until the data fills it in),
  dtypes, then the dicts in order (defaults, variant, overrides)."""
  fields = {"name": name, data_field: placeholder(int), "dtype": "float32",
            "param_dtype": "float32"}
  for more in field_dicts:
    fields.update(more)
  return ml_collections.ConfigDict(fields)


def config_fields(config, data_field: str, choices: dict | None = None
                  ) -> dict:
  """A `config.model` block's fields for the model's Config dataclass,
  checking that `data_field` is set and each `choices` key is allowed."""
  fields = {k: v for k, v in config.items() if k != "name"}
  if fields.get(data_field) is None:
    raise ValueError(f"config.model.{data_field} is not set (normally from "
                     "the data).")
  for key, allowed in (choices or {}).items():
    if fields.get(key) not in allowed:
      raise ValueError(f"config.model.{key} must be one of {allowed}, got "
                       f"{fields.get(key)!r}.")
  return fields


def normal_init(std: float, names: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


class ImageClassifier:
  """Methods shared by the image models (mixed into their Linen modules)."""

  def num_params(self, params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))

  def flops_per_item(self, params, input_shape) -> float:
    """Training FLOPs per image, counted by XLA (3x the forward pass)."""
    return perf.training_flops_per_example(self, input_shape)


def restart_mismatched_head(params: dict, target) -> dict:
  """params["head"] set to zeros when its shapes differ from the target's
  (fine-tuning on another number of classes)."""
  if (jax.tree.map(jnp.shape, params["head"]) !=
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
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), num_in)
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
