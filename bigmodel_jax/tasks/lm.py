"""Language modelling: predict each next token (GPT-family decoders).

Batch: "inputs" and "targets" (B, T) token ids, targets shifted by one;
optional "weights" (B, T) masks tokens out of the loss. Metrics: loss (mean
cross-entropy per token, nats), accuracy (next-token), and on evaluation
perplexity.
"""
import math

from bigmodel_jax.tasks import base


class Task(base.LossTask):
  name = "lm"

  def summarize(self, totals: dict) -> dict:
    out = super().summarize(totals)
    out["perplexity"] = math.exp(min(out["loss"], 700.0))
    return out
