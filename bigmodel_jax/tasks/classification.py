"""Classification: one label per example (images, texts).

Batch: "inputs", integer "targets" (B,); optional "weights" (eval padding)
and, for mixup, "mix_targets" with "mix" (each example's share of
"targets"): the loss mixes both, accuracy counts the larger share.
Evaluation adds a confusion matrix and top-k hits; the summary has
accuracy, top-k accuracy (more than k classes), macro and per-class
precision / recall / F1; the report records the confusion matrix and
prints the per-class table. Its `example_scores` (capability
"anomaly_scores") are the max-softmax baseline of anomaly detection. A
model with an auxiliary classifier (Inception) gives {"logits",
"aux_logits"} in training: the loss adds AUX_WEIGHT times the auxiliary
head's (Szegedy et al. 2016), the metrics are the main head's.
"""
import jax
import jax.numpy as jnp
import optax

from bigmodel_jax import metrics
from bigmodel_jax import loss_task

TOP_K = 5
AUX_WEIGHT = 0.4


class Task(loss_task.LossTask):
  name = "classification"
  optional_keys = frozenset({"weights", "mix_targets", "mix"})
  capabilities = frozenset({"classify", "anomaly_scores"})

  def sums(self, logits, batch: dict) -> dict:
    if isinstance(logits, dict):  # An auxiliary classifier, in training.
      sums = self.sums(logits["logits"], batch)
      aux = self.sums(logits["aux_logits"], batch)["loss"]
      return {**sums, "loss": sums["loss"] + AUX_WEIGHT * aux}
    if "mix" not in batch:
      return super().sums(logits, batch)
    mix = batch["mix"]
    losses = mix * optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["targets"]) + (1 - mix) * (
            optax.softmax_cross_entropy_with_integer_labels(
                logits, batch["mix_targets"]))
    larger = jnp.where(mix >= 0.5, batch["targets"], batch["mix_targets"])
    correct = (jnp.argmax(logits, -1) == larger).astype(jnp.float32)
    return {"loss": jnp.sum(losses), "correct": jnp.sum(correct),
            "count": jnp.asarray(mix.size, jnp.float32)}

  def example_scores(self, logits, batch: dict) -> dict:
    """The max-softmax baseline of out-of-distribution detection (Hendrycks
    & Gimpel 2017): 1 - the largest class probability."""
    del batch
    return {"max_softmax": 1.0 - jnp.max(jax.nn.softmax(
        logits.astype(jnp.float32)), -1)}

  def eval_sums(self, logits, batch: dict) -> dict:
    """The loss sums, a weighted confusion matrix and top-k hits."""
    sums = self.sums(logits, batch)
    targets = batch["targets"]
    weights = batch.get("weights", jnp.ones(targets.shape, jnp.float32))
    num_classes = logits.shape[-1]
    true = jax.nn.one_hot(targets, num_classes) * weights[..., None]
    predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
    top_k = jax.lax.top_k(logits, min(TOP_K, num_classes))[1]
    hits = jnp.any(top_k == targets[..., None], -1).astype(jnp.float32)
    sums["confusion"] = jnp.einsum("...c,...d->cd", true, predicted)
    sums["top_k_correct"] = jnp.sum(hits * weights)
    return sums

  def summarize(self, totals: dict) -> dict:
    out = super().summarize(totals)
    if "confusion" not in totals:  # Training sums.
      return out
    if len(totals["confusion"]) > TOP_K:
      out[f"top{TOP_K}_accuracy"] = (float(totals["top_k_correct"]) /
                                     float(totals["count"]))
    stats = metrics.per_class(totals["confusion"])
    for name in ("precision", "recall", "f1"):
      out[f"macro_{name}"] = float(stats[name].mean())
    out.update({f"f1/class_{i}": float(v) for i, v in enumerate(stats["f1"])})
    return out

  def report(self, totals: dict, class_names) -> tuple[dict, str]:
    confusion = totals["confusion"]
    return ({"confusion_matrix": confusion.astype(int).tolist()},
            metrics.table(confusion, class_names))
