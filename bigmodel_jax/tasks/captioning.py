"""Captioning: the next token of an image's caption, given the image.

Batch: "images", "texts" (B, T) token ids [CLS] caption [SEP] padding;
optional "weights" (eval padding) and "targets" (class labels, for
evaluators). The model reads the image and texts[:, :-1] and predicts
texts[:, 1:]; padding (`model.pad_id`, from the input) is not scored.
Outputs are next-token logits, so a captioner with a decoding cache and a
tokenizer can generate (and, taking images at prefill, caption).
"""
import jax.numpy as jnp

from bigmodel_jax import loss_task


class Task(loss_task.LossTask):
  name = "captioning"
  required_keys = frozenset({"images", "texts"})
  optional_keys = frozenset({"weights", "targets"})
  capabilities = frozenset({"next_token"})

  def model_args(self, batch: dict) -> tuple:
    return (batch["texts"][:, :-1], batch["images"])

  def _weights(self, batch: dict):
    targets = batch["texts"][:, 1:]
    weights = (targets != self.config.model.pad_id).astype(jnp.float32)
    if "weights" in batch:
      weights = weights * batch["weights"][:, None]
    return weights

  def sums(self, logits, batch: dict) -> dict:
    return loss_task.cross_entropy_sums(logits, batch["texts"][:, 1:],
                                        self._weights(batch))

  def normalizer(self, batch: dict):
    return jnp.sum(self._weights(batch))
