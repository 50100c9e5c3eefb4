"""GPT on real text: a byte-level BPE and packed token stores.

  # 2-core CPU: a small BPE GPT on tiny_shakespeare (BPE trained on the
  # training split), scored in bits per byte next to the character model.
  python -m bigmodel_jax.train --config experiments/gpt_text.py:cpu --workdir runs/shakespeare_bpe
  python -m bigmodel_jax.evaluate --workdir runs/shakespeare_bpe --split validation

  # Accelerators: GPT-2 124M on your own corpus (.txt / .jsonl / .parquet
  # globs per split, or a TFDS dataset with a text feature).
  python -m bigmodel_jax.train --config experiments/gpt_text.py:124M --workdir runs/gpt2 \\
      --config.input.files.train='/data/corpus/train-*.jsonl' \\
      --config.input.files.validation='/data/corpus/val-*.jsonl'

  # Supervised fine-tuning of the cpu run on customer-support conversations
  # (tests/data/support_*.jsonl; loss on the replies only), then chat with it.
  python -m bigmodel_jax.train --config experiments/gpt_text.py:sft:runs/shakespeare_bpe --workdir runs/support
  python -m bigmodel_jax.sample --workdir runs/support --prompt "Can I cancel order #12345?" --temperature 0
  # The same with rank-8 LoRA adapters on every projection, the base frozen.
  python -m bigmodel_jax.train --config experiments/gpt_text.py:sft-lora:runs/shakespeare_bpe --workdir runs/support_lora

A tokenizer of its own: `python -m bigmodel_jax.tokenizer --config
experiments/gpt_text.py:124M --out tokenizer.json`, then
`--config.input.tokenizer_file=tokenizer.json` (GPT-2's own: its vocab.json
with merges.txt beside it, or its tokenizer.json). Fine-tuning the released
GPT-2: see docs/text.md.
"""
import os

import ml_collections
from ml_collections.config_dict import placeholder

from bigmodel_jax import config_blocks
from bigmodel_jax.dataio import chat
from bigmodel_jax.models import gpt

SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "tests", "data", "support_{}.jsonl")


def text_input(**overrides) -> ml_collections.ConfigDict:
  """The `text_corpus` input block (see bigmodel_jax/data/text_corpus.py)."""
  return ml_collections.ConfigDict({**dict(
      name="text_corpus",
      dataset="tiny_shakespeare",  # TFDS, when no files are given.
      data_dir=placeholder(str),
      feature="text",  # TFDS feature, .jsonl field or .parquet column.
      files=ml_collections.ConfigDict({
          split: placeholder(str) for split in ("train", "validation",
                                                "test")}),
      tokenizer_file=placeholder(str),  # None: train a byte-level BPE ...
      vocab_size=1024,  # ... of this size ...
      tokenizer_train_mb=100,  # ... on this much of the training split.
      store_dir=placeholder(str),  # None: $BIGMODEL_JAX_DATA/token_stores.
      segment_ids=False,  # True: attention stays within each document.
      train_split="train",
      eval_split="validation",
      test_split=placeholder(str),
      seq_len=64,
      batch_size=12,
      eval_steps=20,
  ), **overrides})


def sft_input(**overrides) -> ml_collections.ConfigDict:
  """The `sft` input block (see bigmodel_jax/data/sft.py)."""
  return ml_collections.ConfigDict({**dict(
      name="sft",
      files=ml_collections.ConfigDict({
          "train": SUPPORT.format("train"),
          "validation": SUPPORT.format("validation"), "test": placeholder(str)}),
      tokenizer_file=placeholder(str),  # None: train a byte-level BPE ...
      vocab_size=1024,  # ... of this size on the training conversations.
      chat_template=dict(chat.DEFAULT),  # Role -> text (dataio/chat.py).
      train_split="train",
      eval_split="validation",
      test_split=placeholder(str),
      seq_len=128,
      batch_size=8,
  ), **overrides})


def _cpu_model() -> ml_collections.ConfigDict:
  return gpt.model_config("nano", block_size=128)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`cpu`, `124M`, or `sft` / `sft-lora` with `:BASE_WORKDIR` (a cpu run)
  to fine-tune (without one, from scratch)."""
  variant, _, base = (arg or "cpu").partition(":")
  if variant == "cpu":
    config = config_blocks.base(total_steps=2000, log_every_steps=50)
    config.input = text_input(seq_len=128)
    config.model = _cpu_model()
    config.optimizer = config_blocks.adamw(
        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100, b2=0.99)
  elif variant in ("sft", "sft-lora"):
    config = config_blocks.base(total_steps=300, log_every_steps=25,
                                eval_every_steps=100,
                                checkpoint_every_steps=300)
    config.input = sft_input()
    config.model = _cpu_model()
    config.optimizer = config_blocks.adamw(
        learning_rate=5e-4, min_learning_rate=5e-5, warmup_steps=30, b2=0.99)
    if variant == "sft-lora":
      config.model.lora_rank = 8
      config.model.lora_targets = "query,key,value,out,fc,proj"
      config.optimizer.trainable = "lora"
      config.optimizer.learning_rate = 2e-3
    if base:
      config.init_from.workdir = base
      config.input.tokenizer_file = os.path.join(base, "tokenizer.json")
  elif variant == "124M":
    config = config_blocks.base(total_steps=600_000, log_every_steps=100,
                                eval_every_steps=2000,
                                checkpoint_every_steps=2000)
    config.input = text_input(vocab_size=50257, seq_len=1024, batch_size=480,
                              eval_steps=100, dataset=None)
    config.model = gpt.model_config("124M", block_size=1024, dtype="bfloat16")
    config.optimizer = config_blocks.adamw(
        learning_rate=6e-4, min_learning_rate=6e-5, warmup_steps=2000,
        weight_decay=0.1, b2=0.95)
  else:
    raise ValueError(f"Unknown variant {variant!r}; use cpu, 124M, sft or "
                     "sft-lora.")
  return config
