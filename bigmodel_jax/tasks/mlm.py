"""Masked-language modelling (BERT / RoBERTa / ALBERT pretraining).

Batch: "inputs" (masked token ids), "targets" (the original ids) and
"weights" (1 at masked positions: the loss is on those only), all (B, T);
with sentence pairs (BERT's next-sentence or ALBERT's sentence-order
prediction) also "segments" (B, T), which the model reads, and
"nsp_targets" (B,) for its "nsp" head. The model returns the MLM logits, or
{"logits", "nsp"} with the pair head. The objective is the mean masked-token
loss plus the mean pair loss, each normalised by its whole-batch count, so
gradient accumulation stays exact. Metrics: loss and accuracy of the masked
tokens; nsp_loss and nsp_accuracy (the pair objective's, NSP or SOP).
"""
import jax.numpy as jnp

from bigmodel_jax import loss_task


class Task(loss_task.LossTask):
  name = "mlm"
  required_keys = frozenset({"inputs", "targets", "weights"})
  optional_keys = frozenset({"segments", "nsp_targets"})

  def model_args(self, batch: dict) -> tuple:
    return batch["inputs"], batch.get("segments")

  def sums(self, outputs, batch: dict) -> dict:
    if not isinstance(outputs, dict):
      return super().sums(outputs, batch)
    sums = super().sums(outputs["logits"], batch)
    nsp = loss_task.cross_entropy_sums(outputs["nsp"], batch["nsp_targets"])
    sums.update({f"nsp_{k}": v for k, v in nsp.items()})
    return sums

  def normalizer(self, batch: dict):
    return {"mlm": jnp.sum(batch["weights"]),
            "nsp": (batch["nsp_targets"].shape[0] if "nsp_targets" in batch
                    else 1)}

  def objective(self, sums: dict, normalizer):
    loss = sums["loss"] / normalizer["mlm"]
    if "nsp_loss" in sums:
      loss += sums["nsp_loss"] / normalizer["nsp"]
    return loss

  def train_metrics(self, sums: dict) -> dict:
    out = super().train_metrics(sums)
    if "nsp_loss" in sums:
      out["nsp_loss"] = sums["nsp_loss"] / sums["nsp_count"]
      out["nsp_accuracy"] = sums["nsp_correct"] / sums["nsp_count"]
    return out
