"""GPT-2 / GPT-3 / LLaMA-shaped models at scale, on synthetic tokens.

The argument is a variant of `models/gpt.py` (124M ... 1.5B, gpt3-125M ...
gpt3-175B, llama-1B, llama-7B) or "cpu" (a 4-layer model for a laptop).
Layers are scanned, parameters and optimizer state are sharded over all
devices (FSDP), compute is bf16 with float32 parameters, and each layer is
rematerialised. Data is synthetic tokens, for throughput and planning; swap
`config.input` for a tokenized corpus to train for real.

  # Does GPT-3 175B fit 512 80-GiB GPUs as FSDP 64 x tensor 8? (Nothing is
  # allocated; 23.1 GiB per device with sequence parallelism, 114.6 without.)
  python -m bigmodel_jax.plan --config experiments/gpt_scale.py:gpt3-175B \\
      --devices 512 --config.mesh.fsdp=64 --config.mesh.tensor=8 \\
      --config.input.batch_size=512 --device_memory_gib 80
  # Measure GPT-2 124M on one GPU (context 1024, bf16, cuDNN attention):
  python scripts/benchmark.py --config experiments/gpt_scale.py:124M --synthetic \\
      --config.model.attention_impl=cudnn --config.model.remat=none
  # Train on a laptop:
  python -m bigmodel_jax.train --config experiments/gpt_scale.py:cpu --workdir runs/scale_cpu
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import gpt


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "124M"
  cpu = variant == "cpu"
  if not cpu and variant not in gpt.VARIANTS:
    raise ValueError(f"Unknown variant {variant!r}; use cpu or one of "
                     f"{list(gpt.VARIANTS)}.")
  config = config_blocks.base(total_steps=50 if cpu else 10_000,
                        log_every_steps=10, eval_every_steps=50 if cpu else 1000,
                        checkpoint_every_steps=50 if cpu else 1000)
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  # Sequence parallelism wherever a tensor axis is set (--config.mesh.tensor).
  config.sharding.rules.act_seq = "tensor"
  model = gpt.model_config("nano" if cpu else variant)
  config.input = ml_collections.ConfigDict(dict(
      name="synthetic_tokens",
      vocab_size=256 if cpu else (32_000 if "llama" in variant else 50_257),
      seq_len=64 if cpu else model.block_size,
      batch_size=8 if cpu else 256,  # Global batch.
      eval_steps=2,
  ))
  config.model = gpt.model_config(
      "nano" if cpu else variant, block_size=config.input.seq_len,
      vocab_size=config.input.get_ref("vocab_size"),
      scan_layers=True, remat="none" if cpu else "full",
      dtype="float32" if cpu else "bfloat16")
  config.optimizer = config_blocks.adamw(learning_rate=1e-3 if cpu else 3e-4,
                                   warmup_steps=5 if cpu else 1000, b2=0.95)
  return config
