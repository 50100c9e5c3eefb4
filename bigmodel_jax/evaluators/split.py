"""The task's summary on another split of the run's data, at its own cadence.

  config.evals.test = ml_collections.ConfigDict(dict(
      name="split", split="test", every_steps=500))   # -> test/loss, ...

Also "train" (overfitting), or any split the input has; the task's report
(e.g. a confusion matrix) goes to metrics.jsonl under the same prefix, with
per-group metrics when the input has `input.groups`.
"""
from bigmodel_jax.errors import ConfigError


class Evaluator:
  every_steps = 0  # From the block.


  def __init__(self, block, exp):
    if not block.get("split"):
      raise ConfigError("The split evaluator needs `split` (e.g. 'test').")
    self.split, self.exp = block.split, exp
    self.every_steps = block.get("every_steps", 0)

  def __call__(self, variables) -> tuple[dict, dict]:
    scalars, records, _ = self.exp.summary(
        self.exp.eval_totals(variables, self.split), self.split)
    return scalars, records
