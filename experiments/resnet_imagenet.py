"""ResNet-50 on ImageNet-1k (Goyal et al. 2017: 76.3% top-1 in 90 epochs).

  # Accelerators, TFDS imagenet2012 prepared:
  python -m bigmodel_jax.train --config experiments/resnet_imagenet.py \\
      --workdir runs/resnet50_i1k
  # Check it compiles and fits, without data or weights (8 forced CPU devices):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m bigmodel_jax.plan \\
      --config experiments/resnet_imagenet.py --config.input.batch_size=8
  # Laptop-sized smoke variant (narrow ResNet-18 on 64x64 images, a few steps):
  python -m bigmodel_jax.train --config experiments/resnet_imagenet.py:cpu \\
      --workdir runs/resnet_i1k_cpu

Recipe: batch 1024, SGD momentum 0.9, lr 0.1 x batch/256, L2 1e-4, 5 warmup
epochs then cosine (Goyal et al. use steps), 90 epochs, BatchNorm with the
last norm of each block zero-initialised, inception crop + flip.
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.models import resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "tpu"
  if variant not in ("tpu", "cpu"):
    raise ValueError(f"Unknown variant {variant!r}; use tpu (default) or cpu.")
  cpu = variant == "cpu"
  size, batch = (64, 16) if cpu else (224, 1024)
  steps_per_epoch = 1_281_167 // batch
  config = config_blocks.base(total_steps=20 if cpu else 90 * steps_per_epoch,
                        log_every_steps=5 if cpu else 100,
                        eval_every_steps=20 if cpu else steps_per_epoch,
                        checkpoint_every_steps=20 if cpu else steps_per_epoch)
  config.input = config_blocks.image_input(
      "tfds_images", batch_size=batch, image_size=size, channels=3,
      train_pp=f"inception_crop({size})|flip_lr|normalize",
      eval_pp=f"resize_small({size * 8 // 7})|central_crop({size})|normalize",
      dataset="imagenet2012", train_split="train", eval_split="validation",
      data_dir=ml_collections.config_dict.placeholder(str),
      num_workers=2 if cpu else 32)
  config.model = (
      resnet.model_config("18", width=16, num_classes=1000) if cpu else
      resnet.model_config("50", num_classes=1000, dtype="bfloat16"))
  config.optimizer = config_blocks.sgd(
      learning_rate=0.1 * batch / 256,
      warmup_steps=5 if cpu else 5 * steps_per_epoch, weight_decay=1e-4)
  return config
