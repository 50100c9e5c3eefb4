"""Character-level GPT on tiny_shakespeare (nanoGPT's shakespeare_char recipes).

  # Laptop / CI-class CPU: nanoGPT's CPU recipe (val loss ~1.90 at step 2000).
  python -m bigmodel_jax.train --config experiments/gpt_shakespeare_char.py:cpu \\
      --workdir runs/shakespeare
  # One GPU: nanoGPT's "baby GPT" (val loss ~1.47 at step 5000 on an A100).
  python -m bigmodel_jax.train --config experiments/gpt_shakespeare_char.py:gpu \\
      --workdir runs/shakespeare_gpu
  # Then sample from the newest checkpoint:
  python -m bigmodel_jax.sample --workdir runs/shakespeare --prompt "ROMEO:"
  # Learning rate x depth ablation (README), 1000 steps a point:
  python -m bigmodel_jax.sweep --config experiments/gpt_shakespeare_char.py:cpu \
      --workdir runs/ablation_lr_depth --config.total_steps=1000 \
      --config.eval_every_steps=100
  # Search learning rate x weight decay x warmup (docs/search.md):
  python -m bigmodel_jax.sweep --config experiments/gpt_shakespeare_char.py:cpu \
      --workdir runs/search --search tpe --trials 20 \
      --config.total_steps=400 --config.eval_every_steps=50

The TFDS data dir comes from --config.input.data_dir or $TFDS_DATA_DIR.
"""
import ml_collections

from bigmodel_jax import config_blocks, search, sweep
from bigmodel_jax.models import gpt


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "gpu"
  if variant not in ("cpu", "gpu"):
    raise ValueError(f"Unknown variant {variant!r}; use cpu or gpu.")
  cpu = variant == "cpu"
  seq_len = ml_collections.FieldReference(64 if cpu else 256)

  config = config_blocks.base(total_steps=2000 if cpu else 5000,
                        log_every_steps=50 if cpu else 10)
  config.input = config_blocks.char_input(
      seq_len=seq_len, batch_size=12 if cpu else 64,
      eval_steps=20 if cpu else 200)
  config.model = gpt.model_config(
      "nano" if cpu else "baby", block_size=seq_len,
      dropout=0.0 if cpu else 0.2,
      dtype="float32" if cpu else "bfloat16")
  config.optimizer = config_blocks.adamw(
      learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100, b2=0.99)
  return config


def get_sweep(arg: str | None = None) -> list[dict]:
  """Learning rate x depth, 3 x 3 (any variant)."""
  del arg
  return sweep.product({"optimizer.learning_rate": [3e-4, 1e-3, 3e-3],
                        "model.num_layers": [2, 4, 6]})


def get_search_space(arg: str | None = None) -> dict:
  """Learning rate x weight decay x warmup (any variant)."""
  del arg
  return {"optimizer.learning_rate": search.floats(3e-4, 3e-2, log=True),
          "optimizer.weight_decay": search.floats(0.0, 0.3),
          "optimizer.warmup_steps": search.ints(0, 100)}
