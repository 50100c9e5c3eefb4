"""CLIP on scikit-learn's 8x8 digits, captioned from their labels (offline).

  python -m bigmodel_jax.train --config experiments/clip_digits.py:cpu \\
      --workdir runs/clip_digits

A ViT image tower (the vit_digits shape: 16x16 upsampled, 4x4 patches) and
a causal GPT text tower, both CLIP-style (pre-norm, quick GELU), trained
with the symmetric InfoNCE loss on the 1,438 training images, each with a
caption drawn from 6 templates ("a handwritten seven."). The test split's
captions use the 3 held-out templates, and so do the zero-shot prompts:
evaluated by zero-shot accuracy, retrieval recall@1/5/10 among the 359 test
pairs and a linear probe on the image embeddings (docs/multimodal.md has
the figures, next to the vit_digits classifier). Exports as a CLIPModel.
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.data import image_captions
from bigmodel_jax.models import two_towers


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if (arg or "cpu") != "cpu":
    raise ValueError(f"Unknown variant {arg!r}; use cpu.")
  config = config_blocks.base(total_steps=2000, log_every_steps=50,
                              eval_every_steps=500, checkpoint_every_steps=500)
  config.input = image_captions.input_config(
      "digits", batch_size=128, image_size=16, channels=1, seq_len=24,
      train_pp="resize(16)|random_crop(16, pad=2)|value_range(-1, 1)",
      eval_pp="resize(16)|value_range(-1, 1)", held_out_templates=3)
  config.model = two_towers.model_config("tiny")
  config.optimizer = config_blocks.adamw(learning_rate=1e-3, warmup_steps=100,
                                         weight_decay=0.1)
  _, held_out = image_captions.digit_templates(config.input.held_out_templates)
  config.evals = ml_collections.ConfigDict(dict(
      zero_shot=dict(name="zero_shot", split="test", every_steps=500,
                     templates=list(held_out)),
      retrieval=dict(name="retrieval", split="test", every_steps=500),
      linear_probe=dict(name="linear_probe", train="train", split="test")))
  return config
