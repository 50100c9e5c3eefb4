"""Masked-LM pretraining of a small BERT on tiny_shakespeare.

  python -m bigmodel_jax.train --config experiments/bert_mlm.py:cpu \\
      --workdir runs/bert_mlm

A WordPiece vocabulary is trained on the training split; lines are packed
into 64-token sequences; 15% of tokens are masked (80/10/10) with a new mask
every step (RoBERTa's dynamic masking; `--config.input.static_masking=True`
for BERT's). `val/accuracy` is the masked-token accuracy.
"""
import ml_collections

from bigmodel_jax import configs
from bigmodel_jax.models import bert


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if (arg or "cpu") != "cpu":
    raise ValueError(f"Unknown variant {arg!r}; use cpu.")
  config = configs.base(total_steps=1500, log_every_steps=50,
                        eval_every_steps=250, checkpoint_every_steps=500)
  config.input = ml_collections.ConfigDict(dict(
      name="mlm_text",
      dataset="tiny_shakespeare",
      data_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="validation",
      vocab_file=ml_collections.config_dict.placeholder(str),
      vocab_size=2000,
      seq_len=64,
      batch_size=32,
      eval_steps=10,
      mask_rate=0.15,
      static_masking=False,
  ))
  config.model = bert.model_config("tiny", head="mlm", max_positions=64,
                                   dropout=0.1)
  config.optimizer = configs.adamw(learning_rate=2e-3, warmup_steps=100,
                                   weight_decay=0.01)
  return config
