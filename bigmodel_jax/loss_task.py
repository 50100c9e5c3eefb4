"""`ModelCall`, the defaults every task starts from (how the model is
called, no capabilities, no settings), and `LossTask`: a task that is one
differentiable loss and one optimizer.

A `LossTask` subclass says what the loss is; the update (gradients, accumulation,
clipping, frozen parameters, optimizer step, finiteness) is the generic one
of `steps.py`. What a subclass defines:

  sums(outputs, batch)      summed statistics of a (micro)batch, "loss" among
                            them; added up over microbatches and eval batches
  normalizer(batch)         whole-batch counts the objective divides by
  objective(sums, norm)     the scalar to differentiate; summed over
                            microbatches it is the whole batch's objective
  train_metrics(sums)       scalars logged as train/NAME
  summarize(totals)         scalars logged as val/NAME (test/NAME)

and, where the defaults do not fit, `model_args` (the model's arguments
for a batch: `(batch["inputs"],)` by default), `eval_sums`, `report`,
`capabilities`, `config_block`.
"""
import jax.numpy as jnp
import optax

from bigmodel_jax import optim, steps


def cross_entropy_sums(logits, targets, weights=None) -> dict:
  """Summed loss, correct predictions and (weighted) target count."""
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {"loss": jnp.sum(losses * weights),
          "correct": jnp.sum(correct * weights), "count": jnp.sum(weights)}


class ModelCall:
  """How a task calls the model; the defaults of every task."""
  capabilities = frozenset()  # What its outputs give a run (contracts.Task).
  config_block = None  # Or () -> ConfigDict: the task's settings.

  def __init__(self, config):
    self.config = config

  def model_args(self, batch: dict) -> tuple:
    """The model's positional arguments for a batch."""
    return (batch["inputs"],)

  def apply(self, model, variables, batch: dict, **kwargs):
    """The model's outputs for a batch (kwargs: train, rngs, mutable)."""
    return model.apply(variables, *self.model_args(batch), **kwargs)

  def report(self, totals: dict, class_names) -> tuple[dict, str | None]:
    del totals, class_names
    return {}, None


class LossTask(ModelCall):
  """Scores model outputs against the batch's "targets" (cross-entropy by
  default); masked by the optional "weights" (eval padding)."""
  name = ""
  required_keys = frozenset({"inputs", "targets"})
  optional_keys = frozenset({"weights"})

  # --- The loss -------------------------------------------------------------

  def sums(self, outputs, batch: dict) -> dict:
    return cross_entropy_sums(outputs, batch["targets"], batch.get("weights"))

  def normalizer(self, batch: dict):
    weights = batch.get("weights")
    return jnp.sum(weights) if weights is not None else batch["targets"].size

  def objective(self, sums: dict, normalizer):
    return sums["loss"] / normalizer

  def train_metrics(self, sums: dict) -> dict:
    return {"loss": sums["loss"] / sums["count"],
            "accuracy": sums["correct"] / sums["count"]}

  def eval_sums(self, outputs, batch: dict) -> dict:
    return self.sums(outputs, batch)

  def summarize(self, totals: dict) -> dict:
    return {k: float(v) for k, v in self.train_metrics(totals).items()}

  # --- The update: the generic one ------------------------------------------
  def optimizer(self, trainable):
    return optim.make(self.config.optimizer, self.config.total_steps,
                      trainable)

  def grad_fn(self, model, trainable):
    """The gradient function of the update (`steps.loss_grads`'s
    signature); wrappers replace it (DP-SGD: privacy.py)."""
    del trainable  # Frozen gradients are zeroed by the update.
    return steps.loss_grads(self, model)

  def train_step(self, model, tx, trainable):
    return steps.make_train_step(
        self, model, tx,
        optim.schedule(self.config.optimizer, self.config.total_steps),
        self.config.get("grad_accum_steps", 1), trainable,
        self.grad_fn(model, trainable))

  def eval_step(self, model):
    return steps.make_eval_step(self, model)


class PaddedText(LossTask):
  """Next-token cross-entropy of text targets padded with `model.pad_id`
  (not scored), each row weighted by the optional "weights" (B,) (eval
  padding); subclasses say which ids are the targets (`target_ids`)."""

  def target_ids(self, batch: dict):
    raise NotImplementedError

  def _weights(self, batch: dict):
    weights = (self.target_ids(batch) != self.config.model.pad_id).astype(
        jnp.float32)
    if "weights" in batch:
      weights = weights * batch["weights"][:, None]
    return weights

  def sums(self, logits, batch: dict) -> dict:
    return cross_entropy_sums(logits, self.target_ids(batch),
                              self._weights(batch))

  def normalizer(self, batch: dict):
    return jnp.sum(self._weights(batch))
