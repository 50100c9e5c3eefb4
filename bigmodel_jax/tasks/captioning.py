"""Captioning: the next token of an image's caption, given the image.

Batch: "images", "texts" (B, T) token ids [CLS] caption [SEP] padding;
optional "weights" (eval padding) and "targets" (class labels, for
evaluators). The model reads the image and texts[:, :-1] and predicts
texts[:, 1:]; padding (`model.pad_id`, from the input) is not scored.
Outputs are next-token logits, so a captioner with a decoding cache and a
tokenizer can generate (and, taking images at prefill, caption).
"""
from bigmodel_jax import loss_task


class Task(loss_task.PaddedText):
  name = "captioning"
  required_keys = frozenset({"images", "texts"})
  optional_keys = frozenset({"weights", "targets"})
  capabilities = frozenset({"next_token"})

  def model_args(self, batch: dict) -> tuple:
    return (batch["texts"][:, :-1], batch["images"])

  def target_ids(self, batch: dict):
    return batch["texts"][:, 1:]
