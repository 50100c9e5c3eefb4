"""Unit embeddings of a split's examples, through the `embed` capability
(`apply(v, x, embed=True)`): what the zero-shot, retrieval and linear-probe
evaluators score."""
import jax
import numpy as np

from bigmodel_jax import capabilities
from bigmodel_jax.errors import ConfigError


class Embedder:
  """A run's model, jitted once, embedding batch entries of its input."""

  def __init__(self, exp, what: str):
    have = capabilities.parts(exp.family, exp.task, exp.config.model,
                              None)
    if "embed" not in have:
      raise ConfigError(f"The {what} evaluator needs a model that embeds "
                        f"(model {exp.config.model.name!r} does not).")
    self.exp = exp
    self.embed = jax.jit(lambda v, x: exp.model.apply(v, x, embed=True))

  def __call__(self, variables, inputs) -> np.ndarray:
    return np.asarray(self.embed(variables, inputs))

  def split(self, variables, split: str, keys: tuple) -> dict:
    """{key: (N, E) embeddings of the batch entry, "targets": (N,)} over a
    split's examples in order (padding dropped)."""
    out = {key: [] for key in (*keys, "targets")}
    for batch in self.exp.data.eval_batches(split):
      keep = np.asarray(batch["weights"]) > 0
      for key in keys:
        out[key].append(self(variables, batch[key])[keep])
      out["targets"].append(np.asarray(batch["targets"])[keep])
    return {key: np.concatenate(value) for key, value in out.items()}
