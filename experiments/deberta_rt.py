"""A small DeBERTa-v3 trained from scratch on rt-polarity movie reviews, in
`bert_finetune.py:full`'s place (the same split, batches and evaluation),
next to a BERT of the same size (`cpu-bert`).

  python -m bigmodel_jax.train --config experiments/deberta_rt.py:cpu \\
      --workdir runs/deberta_rt
  python -m bigmodel_jax.train --config experiments/deberta_rt.py:cpu-bert \\
      --workdir runs/bert_rt

No pretrained checkpoint ships, so both learn a SentencePiece Unigram
vocabulary (v3's kind) of 8,000 on the training reviews and start from
random weights: 4 layers of width 128, 1,500 steps (5.6 epochs). DeBERTa's
relative positions are log-bucketed beyond 16 tokens up to 64.
`--config.init_from.hf_dir=DIR` (with `--config.input.vocab_file=
DIR/tokenizer.json` and the model fields of DIR) fine-tunes a real
DeBERTa-v3 directory instead.
"""
import os

import ml_collections

from bigmodel_jax import config_loader
from bigmodel_jax.models import bert, deberta

FINETUNE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "bert_finetune.py")
SIZE = dict(num_layers=4, emb_dim=128, num_heads=4, mlp_dim=512,
            max_positions=64, head="classifier", pool="cls")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "cpu"
  if variant not in ("cpu", "cpu-bert"):
    raise ValueError(f"Unknown variant {arg!r}; use cpu or cpu-bert.")
  config = config_loader.load(f"{FINETUNE}:full")
  config.init_from.hf_dir = None
  config.input.vocab_file = None
  config.input.vocab_size = 8000
  config.input.tokenizer = "unigram"
  config.total_steps, config.eval_every_steps = 1500, 250
  config.checkpoint_every_steps = 500
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = 100
  config.model = (deberta.model_config("v3-xsmall", position_buckets=32,
                                       max_relative_positions=64, **SIZE)
                  if variant == "cpu" else bert.model_config("tiny", **SIZE))
  return config
