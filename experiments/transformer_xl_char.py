"""Character-level Transformer-XL on tiny_shakespeare, next to
`gpt_shakespeare_char.py:cpu`: GPT "nano"'s parameters (0.80M), its 64-token
segments with a memory of 64 more, the same tokens per step (4 windows of 3
consecutive segments: 768, as GPT's 12 x 64), steps and schedule.

  # Laptop / CI-class CPU:
  python -m bigmodel_jax.train --config experiments/transformer_xl_char.py:cpu \\
      --workdir runs/transformer_xl
  # Sampling keeps the memory (the KV cache spans it):
  python -m bigmodel_jax.sample --workdir runs/transformer_xl --prompt "ROMEO:"
  # Next to GPT and the LSTM/GRU (docs/models.md):
  python scripts/recurrent_vs_gpt.py --workdir runs/recurrent

The TFDS data dir comes from --config.input.data_dir or $TFDS_DATA_DIR.
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import transformer_xl


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "cpu"
  if variant != "cpu":
    raise ValueError(f"Unknown variant {variant!r}; use cpu.")
  config = config_blocks.base(total_steps=2000, log_every_steps=50)
  config.model = transformer_xl.model_config("char-nano")
  # Windows of 3 segments: the 2nd and 3rd read with a full memory.
  config.input = config_blocks.char_input(
      seq_len=3 * config.model.segment_len, batch_size=4, eval_steps=20)
  config.optimizer = config_blocks.adamw(
      learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100, b2=0.99)
  return config
