"""Building blocks shared by the model families, every axis logically named."""
from typing import Any

import jax.numpy as jnp
from flax import linen as nn


def normal_init(std: float, names: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros_init(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


class Linear(nn.Module):
  """Contracts the last `len(in_names)` axes of x with a named kernel.

  The kernel has shape in_shape + `features` and logical axes `names`
  (input axes first); the bias, if any, is named like the output axes.
  """
  features: tuple[int, ...]
  names: tuple[str, ...]
  std: float = 0.02
  use_bias: bool = False
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  @nn.compact
  def __call__(self, x):
    num_in = len(self.names) - len(self.features)
    shape = x.shape[x.ndim - num_in:] + tuple(self.features)
    kernel = self.param("kernel", normal_init(self.std, self.names), shape,
                        self.param_dtype)
    y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), num_in)
    if self.use_bias:
      bias = self.param("bias", zeros_init(self.names[num_in:]),
                        tuple(self.features), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y
