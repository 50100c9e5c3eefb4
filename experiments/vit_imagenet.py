"""ViT-B/16 on ImageNet-1k from scratch (big_vision's vit_i1k recipe).

  # Accelerators (e.g. 8 GPUs or a TPU v3-8), TFDS imagenet2012 prepared:
  python -m bigmodel_jax.train --config experiments/vit_imagenet.py \\
      --workdir runs/vit_b16_i1k
  # Check it compiles and fits, without data or weights (8 forced CPU devices):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bigmodel_jax.plan \\
      --config experiments/vit_imagenet.py --config.input.batch_size=8
  # Laptop-sized smoke variant (ViT-Ti/16 on 64x64 images, a few steps):
  python -m bigmodel_jax.train --config experiments/vit_imagenet.py:cpu \\
      --workdir runs/vit_i1k_cpu

Recipe: batch 4096, 300 epochs (93k steps), AdamW lr 1e-3, decoupled weight
decay 1e-4, 10k warmup steps then cosine, global pooling, mixup 0.2, inception
crop + flip. Published: ~79-80% top-1 for ViT-B/16 at 300 epochs (big_vision,
with RandAugment, which is not implemented here).
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import vit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "tpu"
  if variant not in ("tpu", "cpu"):
    raise ValueError(f"Unknown variant {variant!r}; use tpu (default) or cpu.")
  cpu = variant == "cpu"
  size = 64 if cpu else 224
  config = config_blocks.base(total_steps=20 if cpu else 93_000,
                        log_every_steps=5 if cpu else 100,
                        eval_every_steps=20 if cpu else 5_000,
                        checkpoint_every_steps=20 if cpu else 5_000)
  config.input = config_blocks.image_input(
      "tfds_images", batch_size=16 if cpu else 4096, image_size=size,
      channels=3,
      train_pp=f"inception_crop({size})|flip_lr|value_range(-1, 1)",
      eval_pp=f"resize_small({size * 8 // 7})|central_crop({size})|"
              "value_range(-1, 1)",
      dataset="imagenet2012", train_split="train[:99%]",
      eval_split="train[99%:]",  # minival; "validation" for the final number.
      data_dir=ml_collections.config_dict.placeholder(str),
      num_workers=2 if cpu else 32)
  config.input.mixup_alpha = 0.2
  config.model = vit.model_config(
      "Ti/16" if cpu else "B/16", num_classes=1000, pool="gap",
      dtype="float32" if cpu else "bfloat16")
  config.optimizer = config_blocks.adamw(learning_rate=1e-3,
                                   warmup_steps=5 if cpu else 10_000,
                                   weight_decay=0.1)  # x lr = 1e-4.
  return config
