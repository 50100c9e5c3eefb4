"""T5: span-corruption pretraining on tiny_shakespeare, and text-to-text
fine-tuning on rt-polarity ("positive" / "negative" as target text).

  python -m bigmodel_jax.train --config experiments/t5.py:cpu \\
      --workdir runs/t5
  python -m bigmodel_jax.train --config experiments/t5.py:rt \\
      --workdir runs/t5_rt
  python -m bigmodel_jax.sample --workdir runs/t5_rt \\
      --prompt "sentiment: a gorgeous, witty film" --temperature 0

Both train a 4-layer T5 v1.1 of width 128 from random weights with a
SentencePiece Unigram vocabulary learned on the training text. `cpu`
drops 15% of each 70-token window of Shakespeare in spans of mean length
3, each span replaced by a sentinel (64-token inputs, 16-token targets);
`generated/*` decodes the validation windows' missing spans. `rt` reads
`bert_finetune.py`'s split of the reviews (the same 80/10/10 stratified
split) with the prefix "sentiment: " and learns to write the class name;
`generated/exact` (validation, every 250 steps) and `test_generated/exact`
(the test split, at the end) are its accuracy, next to the MiniLM
classifier of `bert_finetune.py`; sample and serve it with the prefix. Any JSONL of {"input", "target"} pairs
(`--config.input.labelled=None --config.input.files.train=...`) or TFDS
set by name (`input.dataset`, `input.input_key`, `input.target_key`) trains
the same way.
"""
import os

import ml_collections
from ml_collections.config_dict import placeholder

from bigmodel_jax import config_blocks, config_loader
from bigmodel_jax.models import t5

FINETUNE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "bert_finetune.py")
SIZE = dict(num_layers=4, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=512,
            dropout=0.1)


def _input(**fields) -> ml_collections.ConfigDict:
  """The input block: a T5 vocabulary and the fields both variants share."""
  return ml_collections.ConfigDict(dict(
      data_dir=placeholder(str),
      dataset=placeholder(str),  # A TFDS set by name, or
      files=ml_collections.ConfigDict(dict(  # SPLIT -> globs of files.
          train=placeholder(str), validation=placeholder(str),
          test=placeholder(str))),
      vocab_file=placeholder(str),  # A T5 tokenizer.json, or one trained:
      vocab_size=2000,
      sentinels=100,
      train_split="train",
      eval_split="validation",
      batch_size=32,
      **fields))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "cpu"
  if variant not in ("cpu", "rt"):
    raise ValueError(f"Unknown variant {arg!r}; use cpu or rt.")
  config = config_blocks.base(total_steps=2000, eval_every_steps=250,
                              checkpoint_every_steps=500)
  if variant == "cpu":
    config.input = _input(name="span_corruption", source_len=64,
                          target_len=16, noise_density=0.15, mean_span=3.0,
                          eval_steps=10)
    config.input.dataset = "tiny_shakespeare"
  else:
    labelled = config_loader.load(f"{FINETUNE}:full").input
    labelled.vocab_file = None
    config.input = _input(
        name="text_to_text", source_len=64, target_len=4,
        labelled=labelled, target_names={"pos": "positive",
                                         "neg": "negative"},
        prefix="sentiment: ", test_split="test", input_key=placeholder(str),
        target_key=placeholder(str))
    config.input.vocab_size, config.input.sentinels = 8000, 0
    config.total_steps = 1500
  config.model = t5.model_config("tiny", **SIZE)
  config.optimizer = config_blocks.adamw(learning_rate=1e-3, warmup_steps=100,
                                         weight_decay=0.01)
  if variant == "rt":  # 1e-3 overfits the 8.5k reviews sooner.
    config.optimizer.learning_rate = 5e-4
  config.evals.generated = ml_collections.ConfigDict(dict(
      name="text_to_text", split="validation", beams=1,
      every_steps=0 if variant == "cpu" else 250))
  if variant == "rt":  # The accuracy, once, at the end.
    config.evals.test_generated = ml_collections.ConfigDict(dict(
        name="text_to_text", split="test", beams=1, every_steps=0))
  return config
