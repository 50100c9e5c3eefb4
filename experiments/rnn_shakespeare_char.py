"""Character-level LSTM and GRU on tiny_shakespeare, the recurrent baselines
next to `gpt_shakespeare_char.py:cpu`: the same data, sequence length,
batch, steps and schedule shape, at GPT "nano"'s parameter count, with
char-rnn's peak learning rate (2e-3; GPT's recipe: 1e-3).

  # Laptop / CI-class CPU: a 2-layer LSTM (0.79M parameters).
  python -m bigmodel_jax.train --config experiments/rnn_shakespeare_char.py:cpu \\
      --workdir runs/lstm
  # The GRU (0.80M parameters):
  python -m bigmodel_jax.train --config experiments/rnn_shakespeare_char.py:gru \\
      --workdir runs/gru
  # Sampling carries the recurrent state:
  python -m bigmodel_jax.sample --workdir runs/lstm --prompt "ROMEO:"

The TFDS data dir comes from --config.input.data_dir or $TFDS_DATA_DIR.
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import rnn

VARIANTS = {"cpu": "char-lstm", "gru": "char-gru"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "cpu"
  if variant not in VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; use {list(VARIANTS)}.")
  config = config_blocks.base(total_steps=2000, log_every_steps=50)
  config.input = config_blocks.char_input(seq_len=64, batch_size=12,
                                          eval_steps=20)
  config.model = rnn.model_config(VARIANTS[variant])
  # char-rnn's learning rate (Karpathy 2015), GPT's schedule and clipping.
  config.optimizer = config_blocks.adamw(
      learning_rate=2e-3, min_learning_rate=2e-4, warmup_steps=100, b2=0.99)
  return config
