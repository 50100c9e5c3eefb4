"""Sequence to sequence: the target text given the source text (T5).

Batch: "inputs" (B, S) source ids and "targets" (B, T) target ids, both
padded with `model.pad_id`; optional "weights" (B,) (eval padding). The
decoder reads the targets shifted right behind the decoder's start token
(`pad_id`, T5's convention) and predicts every target; padding is not
scored. Metrics: loss (mean cross-entropy per target token), accuracy and,
on evaluation, perplexity. Outputs are next-token logits of the target, so
a family that decodes from sources given at prefill (the "source_prompt"
part) turns text into text.
"""
import math

import jax.numpy as jnp

from bigmodel_jax import loss_task


def decoder_inputs(targets, start_id: int):
  """Targets shifted right behind the start token."""
  return jnp.concatenate([jnp.full_like(targets[:, :1], start_id),
                          targets[:, :-1]], axis=1)


class Task(loss_task.PaddedText):
  name = "seq2seq"
  capabilities = frozenset({"next_token"})

  def model_args(self, batch: dict) -> tuple:
    return (decoder_inputs(batch["targets"], self.config.model.pad_id),
            batch["inputs"])

  def target_ids(self, batch: dict):
    return batch["targets"]

  def summarize(self, totals: dict) -> dict:
    out = super().summarize(totals)
    out["perplexity"] = math.exp(min(out["loss"], 700.0))
    return out
