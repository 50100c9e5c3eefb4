"""Character-level GPT on tiny_shakespeare (nanoGPT's shakespeare_char recipes).

  # Laptop / CI-class CPU: nanoGPT's CPU recipe (val loss ~1.88 at step 2000).
  python -m bigmodel_jax.train --config experiments/gpt_shakespeare_char.py:cpu \\
      --workdir runs/shakespeare
  # One GPU: nanoGPT's "baby GPT" (val loss ~1.47 at step 5000 on an A100).
  python -m bigmodel_jax.train --config experiments/gpt_shakespeare_char.py:gpu \\
      --workdir runs/shakespeare_gpu
  # Then sample from the newest checkpoint:
  python -m bigmodel_jax.sample --workdir runs/shakespeare --prompt "ROMEO:"

The TFDS data dir comes from --config.input.data_dir or $TFDS_DATA_DIR.
"""
import ml_collections

from bigmodel_jax.models import gpt


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "gpu"
  if variant not in ("cpu", "gpu"):
    raise ValueError(f"Unknown variant {variant!r}; use cpu or gpu.")
  cpu = variant == "cpu"
  seq_len = ml_collections.FieldReference(64 if cpu else 256)

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = 2000 if cpu else 5000
  config.log_every_steps = 50 if cpu else 10
  config.eval_every_steps = 250
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  config.input = ml_collections.ConfigDict(dict(
      name="tfds_text",
      dataset="tiny_shakespeare",
      data_dir=ml_collections.config_dict.placeholder(str),
      train_split="train",
      eval_split="validation",
      seq_len=seq_len,
      batch_size=12 if cpu else 64,  # Global batch.
      eval_steps=20 if cpu else 200,
  ))

  config.model = gpt.model_config(
      "nano" if cpu else "baby", block_size=seq_len,
      dropout=0.0 if cpu else 0.2,
      dtype="float32" if cpu else "bfloat16")

  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3,
      min_learning_rate=1e-4,
      warmup_steps=100,
      decay_steps=ml_collections.config_dict.placeholder(int),  # total_steps.
      b1=0.9,
      b2=0.99,
      eps=1e-8,
      weight_decay=0.1,
      grad_clip_norm=1.0,
  ))
  return config
