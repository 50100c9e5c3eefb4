"""word2vec on tiny_shakespeare's words: skip-gram (or CBOW) with negative
sampling, gensim's defaults (100 dimensions, window 5, 5 negatives, sample
1e-3, min_count 5), scored by the word_vectors evaluator on the word sets
that ship with the tests (tests/data/word_sets).

  python -m bigmodel_jax.train --config experiments/word2vec_shakespeare.py:cpu \\
      --workdir runs/word2vec
  python -m bigmodel_jax.train --config experiments/word2vec_shakespeare.py:cbow \\
      --workdir runs/cbow
  python -m bigmodel_jax.export --workdir runs/word2vec --format word2vec \\
      --out vectors    # vectors.txt and vectors.bin, read by gensim
  python scripts/word2vec_vs_gensim.py --workdir runs/word2vec

Any text corpus trains it: --config.input.dataset=NAME (TFDS), or
--config.input.files.train=GLOBS and files.validation=GLOBS (.txt, .jsonl,
.parquet as `text_corpus` reads them).
"""
import os

import ml_collections
from ml_collections.config_dict import placeholder

from bigmodel_jax import config_blocks
from bigmodel_jax.models import word2vec

SETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "tests", "data", "word_sets")
# Variant -> (mode, steps): the rows of gensim's default 5 epochs (125k
# centre words survive subsampling; a skip-gram centre makes ~window + 1
# pairs, a CBOW centre one row).
MODES = {"cpu": ("skipgram", 3600), "cbow": ("cbow", 600)}


def word_input(*, mode: str, batch_size: int) -> ml_collections.ConfigDict:
  """`config.input` of `word_contexts` with gensim's default settings."""
  return ml_collections.ConfigDict(dict(
      name="word_contexts", dataset="tiny_shakespeare", feature="text",
      data_dir=placeholder(str),
      files=ml_collections.ConfigDict(dict(train="", validation="")),
      train_split="train", eval_split="validation",
      test_split=placeholder(str),
      sentence_split="paragraph",  # Or "line".
      mode=mode, window=5, negatives=5, sample=1e-3, min_count=5,
      max_vocab=placeholder(int),
      batch_size=batch_size, eval_steps=8,
      seq_len=64))  # The most words /v1/embeddings reads of a text.


def word_sets(every_steps: int) -> ml_collections.ConfigDict:
  """The word_vectors evaluator on the shipped Shakespeare word sets."""
  return ml_collections.ConfigDict(dict(
      name="word_vectors", every_steps=every_steps,
      similarity=os.path.join(SETS, "shakespeare_similarity.tsv"),
      analogies=os.path.join(SETS, "shakespeare_analogies.txt"),
      neighbours="king,love,night,sword,thou,go", top_k=8))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "cpu"
  if variant not in MODES:
    raise ValueError(f"Unknown variant {variant!r}; use {list(MODES)}.")
  mode, steps = MODES[variant]
  config = config_blocks.base(total_steps=steps, log_every_steps=100,
                              eval_every_steps=steps // 4,
                              checkpoint_every_steps=steps // 2)
  config.input = word_input(mode=mode, batch_size=1024)
  config.model = word2vec.model_config("100d")
  # gensim's update: plain SGD at 0.025 per pair (x the batch: the loss is
  # a mean), decayed (gensim: linearly to 1e-4).
  config.optimizer = config_blocks.sgd(
      learning_rate=25.0, min_learning_rate=0.1, warmup_steps=1,
      momentum=0.0, weight_decay=0.0)
  config.evals = ml_collections.ConfigDict({"words": word_sets(steps // 4)})
  return config
