"""Normalisation layers with named scales: LayerNorm or RMSNorm."""
from flax import linen as nn

from bigmodel_jax.layers.linear import ones_init, zeros_init


def norm(kind: str, name: str, *, eps: float, use_bias: bool = True,
         dtype="float32", param_dtype="float32") -> nn.Module:
  """"layernorm" (with a bias when `use_bias`) or "rmsnorm"."""
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                      name=name, scale_init=ones_init(("norm",)))
  if kind != "layernorm":
    raise ValueError(f"Unknown norm {kind!r}.")
  return nn.LayerNorm(epsilon=eps, use_bias=use_bias, dtype=dtype,
                      param_dtype=param_dtype, name=name,
                      scale_init=ones_init(("norm",)),
                      bias_init=zeros_init(("norm",)))
