"""Masked-LM pretraining of small BERT, RoBERTa and ALBERT on tiny_shakespeare.

  python -m bigmodel_jax.train --config experiments/bert_mlm.py:cpu \\
      --workdir runs/bert_mlm
  python -m bigmodel_jax.train --config experiments/bert_mlm.py:cpu-bert \\
      --workdir runs/bert_mlm_nsp
  python -m bigmodel_jax.train --config experiments/bert_mlm.py:cpu-roberta \\
      --workdir runs/roberta_mlm
  python -m bigmodel_jax.train --config experiments/bert_mlm.py:cpu-albert \\
      --workdir runs/albert_mlm

A vocabulary is trained on the training split; 15% of tokens are masked
(80/10/10). `cpu` is RoBERTa-style with BERT's WordPiece: lines packed into
64-token rows, a new mask every step (dynamic masking), no sentence pairs.
`cpu-bert` adds BERT's sentence pairs (segments 0/1) and next-sentence head
(`val/nsp_accuracy`). `cpu-roberta` is RoBERTa itself: its byte-level BPE
(<s> ... </s>, <pad> = 1) and layout (positions from 2, one segment type),
exported as Roberta* models. `cpu-albert` is ALBERT: a SentencePiece Unigram
vocabulary, 64-wide factorised embeddings, one layer shared by both depths,
and sentence-order prediction (`val/nsp_accuracy` is its accuracy). All
draw masks (and pairs) anew every step: BERT's static ones
(`--config.input.static_masking=True`) overfit this 1 MB corpus (cpu-bert:
val loss 6.13 at step 250 -> 6.49 at 1500, NSP 47%, measured).
`val/accuracy` is the masked-token accuracy.
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import bert


# Variant: (tokenizer kind, sentence pairs, model settings over "tiny").
VARIANTS = {
    "cpu": ("wordpiece", None, {}),
    "cpu-bert": ("wordpiece", "nsp", {}),
    "cpu-roberta": ("bpe", None, {**bert.ROBERTA, "max_positions": 66}),
    "cpu-albert": ("unigram", "sop", {**bert.ALBERT, "embed_dim": 64}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "cpu"
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {arg!r}; use one of {list(VARIANTS)}.")
  tokenizer, pairs, settings = VARIANTS[variant]
  config = config_blocks.base(total_steps=1500, log_every_steps=50,
                        eval_every_steps=250, checkpoint_every_steps=500)
  config.input = ml_collections.ConfigDict(dict(
      name="mlm_text",
      dataset="tiny_shakespeare",
      data_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="validation",
      vocab_file=ml_collections.config_dict.placeholder(str),
      tokenizer=tokenizer,  # The kind trained when vocab_file is None.
      vocab_size=2000,
      seq_len=64,
      batch_size=32,
      eval_steps=10,
      mask_rate=0.15,
      static_masking=False,
      pairs=ml_collections.config_dict.placeholder(str),  # "nsp" or "sop".
  ))
  config.input.pairs = pairs
  config.model = bert.model_config(
      "tiny", **{"head": "mlm", "max_positions": 64, "dropout": 0.1,
                 **settings})
  config.optimizer = config_blocks.adamw(learning_rate=2e-3, warmup_steps=100,
                                   weight_decay=0.01)
  return config
