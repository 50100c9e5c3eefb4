"""An image captioner on scikit-learn's 8x8 digits, captioned from their
labels (offline): a ViT encoder and a GPT decoder with cross-attention.

  python -m bigmodel_jax.train --config experiments/caption_digits.py:cpu \\
      --workdir runs/caption_digits

The encoder is the vit_digits shape (16x16 upsampled, 4x4 patches: 17
tokens with the class token) and the decoder a 2-layer GPT whose blocks
attend to them. It learns captions of the 1,438 training images in 9
wordings ("a handwritten seven."); on the 359 held-out test images it is
scored by BLEU against each image's caption (one of the 9 wordings, so
even a perfect captioner does not reach 100) and by class accuracy (the
caption names the image's digit, and no other). docs/multimodal.md has the
figures and sample captions.
"""
import ml_collections

from bigmodel_jax import config_blocks
from bigmodel_jax.data import image_captions
from bigmodel_jax.models import captioner


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if (arg or "cpu") != "cpu":
    raise ValueError(f"Unknown variant {arg!r}; use cpu.")
  config = config_blocks.base(total_steps=1500, log_every_steps=50,
                              eval_every_steps=500, checkpoint_every_steps=500)
  config.input = image_captions.input_config(
      "digits", batch_size=128, image_size=16, channels=1, seq_len=24,
      train_pp="resize(16)|random_crop(16, pad=2)|value_range(-1, 1)",
      eval_pp="resize(16)|value_range(-1, 1)", held_out_templates=0)
  config.model = captioner.model_config("tiny")
  config.optimizer = config_blocks.adamw(learning_rate=1e-3, warmup_steps=100,
                                         weight_decay=0.1)
  config.evals = ml_collections.ConfigDict(dict(
      captions=dict(name="captions", split="test", every_steps=500)))
  return config
