"""The transformer MLP: "fc" -> GELU (tanh or erf), CLIP's quick GELU
(x sigmoid(1.702 x)), ReLU, SwiGLU or GEGLU (T5 v1.1's gated GELU, tanh)
-> "proj". The gated kinds multiply "fc" by the activated "gate"."""
import jax
from flax import linen as nn

ACTIVATIONS = ("gelu", "gelu_exact", "quick_gelu", "relu", "swiglu", "geglu")
GATES = {"swiglu": jax.nn.silu,
         "geglu": lambda x: jax.nn.gelu(x, approximate=True)}


def mlp(x, dense, hidden: int, out: int, activation: str):
  """`dense` (layers.linear.Dense) makes "fc", a gated kind's "gate" and
  "proj" in the calling module."""
  h = dense((hidden,), ("embed", "mlp"), "fc")(x)
  if activation in GATES:
    h = GATES[activation](dense((hidden,), ("embed", "mlp"), "gate")(x)) * h
  elif activation in ("gelu", "gelu_exact"):
    h = jax.nn.gelu(h, approximate=activation == "gelu")
  elif activation == "relu":
    h = jax.nn.relu(h)
  elif activation == "quick_gelu":
    h = h * jax.nn.sigmoid(1.702 * h)
  else:
    raise ValueError(f"Unknown activation {activation!r}; have {ACTIVATIONS}.")
  h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp"))
  return dense((out,), ("mlp", "embed"), "proj")(h)
