"""Language modelling: predict each next token (GPT-family decoders).

Batch: "inputs" and "targets" (B, T) token ids, targets shifted by one;
optional "weights" (B, T) masks tokens out of the loss (e.g. the prompts of
supervised fine-tuning), "segments" and "positions" (B, T) keep packed
documents apart (see `models/gpt.py`). Metrics: loss (mean cross-entropy
per token, nats), accuracy (next-token), and on evaluation perplexity.
"""
import math

from bigmodel_jax import loss_task


class Task(loss_task.LossTask):
  name = "lm"
  optional_keys = frozenset({"weights", "segments", "positions"})

  capabilities = frozenset({"next_token"})

  def model_args(self, batch: dict) -> tuple:
    return batch["inputs"], batch.get("segments"), batch.get("positions")

  def summarize(self, totals: dict) -> dict:
    out = super().summarize(totals)
    out["perplexity"] = math.exp(min(out["loss"], 700.0))
    return out
