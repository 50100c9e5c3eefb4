"""Evaluators, picked by `config.evals.KEY.name` (default: KEY): each
module fulfils `contracts.EvaluatorModule` and its metrics are logged as
KEY/NAME beside the task's own val/ summary (big_vision's `config.evals`).
"""
from bigmodel_jax import capabilities


class Decoding:
  """What evaluators of decoded texts share: from their block `every_steps`
  (default 0: at the end), `split` (default "test") and `examples` (records
  kept, default 8); the run's `tokenizer` and the `context` that its
  `capability` (set by the evaluator) decodes."""
  capability = ""
  every_steps = 0

  def __init__(self, block, exp):
    self.every_steps = block.get("every_steps", 0)
    self.split = block.get("split", "test")
    self.examples = block.get("examples", 8)
    self.exp, self.tokenizer = exp, exp.data.tokenizer
    name = type(self).__module__.rsplit(".", 1)[-1]
    self.context = capabilities.of_evaluated_run(exp, self.capability,
                                                 name)["decode"]
