"""Parameter norms per top-level module (and in all): spots a layer whose
weights blow up or collapse long before the loss shows it. Reads no data.

  config.evals.norms = ml_collections.ConfigDict(dict(
      name="param_norms", every_steps=100))   # -> norms/total, norms/wte, ...
"""
import jax
import jax.numpy as jnp


class Evaluator:
  every_steps = 0  # From the block.


  def __init__(self, block, exp):
    del exp
    self.every_steps = block.get("every_steps", 0)
    self._norms = jax.jit(lambda params: {
        "total": _norm(params),
        **{name: _norm(tree) for name, tree in params.items()}})

  def __call__(self, variables) -> tuple[dict, dict]:
    return {k: float(v) for k, v in
            jax.device_get(self._norms(variables["params"])).items()}, {}


def _norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))
