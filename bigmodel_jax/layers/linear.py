"""Projections: `Linear` (named kernel, optional bias and LoRA) and `Dense`,
a family's factory of them with its initialisers and LoRA targets."""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


def normal_init(std: float, names: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


def ones_init(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.ones, names)


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


@dataclasses.dataclass(frozen=True)
class Dense:
  """A family's projections: `dense(features, names, name)` is a `Linear`
  with the family's bias, dtypes and initialiser; names in `lora_targets`
  get adapters of `lora_rank`; names in `scaled` start with `scaled_std`
  (GPT-2's smaller init of the projections into the residual stream)."""
  use_bias: bool = True
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  init: str = "normal"
  std: float = 0.02
  lora_rank: int = 0
  lora_alpha: float = 1.0
  lora_targets: tuple = ()
  scaled: tuple = ()
  scaled_std: float = 0.02

  def __call__(self, features, names: tuple, name: str,
               init: str | None = None) -> Linear:
    return Linear(
        tuple(features), names,
        self.scaled_std if name in self.scaled else self.std, self.use_bias,
        self.dtype, self.param_dtype, init or self.init,
        lora_rank=self.lora_rank if name in self.lora_targets else 0,
        lora_alpha=self.lora_alpha, name=name)
