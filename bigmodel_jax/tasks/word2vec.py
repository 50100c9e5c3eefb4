"""Negative sampling (word2vec): the target word against K noise words.

Batch (`data/word_contexts.py`): "inputs" (B, C) context ids, "targets"
(B, 1 + K) the true word then K negatives, "weights" (B, 1 + K). The
model gives a logit per candidate; the loss of a row is

  -log sigmoid(s_true) - sum_k log sigmoid(-s_k)

each term times its weight, divided by the summed weights of the true
words. Metrics: loss (nats per weighted pair) and accuracy (the true word
scores above every negative).
"""
import jax
import jax.numpy as jnp

from bigmodel_jax import loss_task


class Task(loss_task.LossTask):
  name = "word2vec"
  required_keys = frozenset({"inputs", "targets", "weights"})
  optional_keys = frozenset()

  def model_args(self, batch: dict) -> tuple:
    return batch["inputs"], batch["targets"]

  def sums(self, outputs, batch: dict) -> dict:
    weights = batch["weights"]
    sign = jnp.where(jnp.arange(outputs.shape[1]) == 0, 1.0, -1.0)
    losses = -jax.nn.log_sigmoid(sign * outputs) * weights
    best_negative = jnp.max(jnp.where(weights[:, 1:] > 0, outputs[:, 1:],
                                      -jnp.inf), axis=1)
    correct = (outputs[:, 0] > best_negative).astype(jnp.float32)
    return {"loss": jnp.sum(losses), "count": jnp.sum(weights[:, 0]),
            "correct": jnp.sum(correct * weights[:, 0])}

  def normalizer(self, batch: dict):
    return jnp.maximum(jnp.sum(batch["weights"][:, 0]), 1e-6)
