"""Image-caption pairs (two towers, captioners), from one of three sources.

`input.source`:
  "digits"  scikit-learn's 8x8 digits (offline), captioned from their labels
            by TEMPLATES: the first len(TEMPLATES) - `held_out_templates`
            caption the train split, the others the test split, so test
            captions (and zero-shot prompts made from them) are wordings the
            model never trained on (none held out: the test split's
            captions cycle through all of them).
  "tfds"    a TFDS dataset by name (`input.dataset`, e.g. coco_captions):
            the `image_key` feature and the `caption_key` captions ("/"
            walks nested features: "captions/text"; one or several).
  "folder"  `input.path`/SPLIT/captions.jsonl, one {"image": file (relative
            to that folder), "caption": text, or "captions": [texts]} a line.

Batches: "images" (B, H, W, C) float through `train_pp` / `eval_pp`
(dataio/image_ops.py), "texts" (B, seq_len) WordPiece ids [CLS] ... [SEP]
([SEP] is the model's `eos_id`), "targets" (the digit; -1 unlabelled) and,
at evaluation, "weights". A training example's caption is drawn from its
captions as a function of (seed, step, example); evaluation takes the
first. The vocabulary is `input.vocab_file`, or trained on the captions of
the first `vocab_examples` training examples.
"""
import json
import os

import ml_collections
from ml_collections.config_dict import placeholder

import jax
import numpy as np

from bigmodel_jax.data import sklearn_digits
from bigmodel_jax import config_blocks
from bigmodel_jax.dataio import images, image_ops, tfds_source, wordpiece
from bigmodel_jax.dataio.common import eval_positions, save_class_names
from bigmodel_jax.errors import ConfigError, NotFound

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven",
         "eight", "nine"]
TEMPLATES = ("a photo of the digit {}.", "a handwritten {}.",
             "the number {}.", "an image of a {}.", "a scan of the digit {}.",
             "a small picture of a {}.", "a drawing of the number {}.",
             "this is a {}.", "a low resolution {}.")
units = images.units
load_tokenizer = wordpiece.load


def batch_spec(config) -> dict:
  batch = config.batch_size
  return {"images": jax.ShapeDtypeStruct(
              (batch, config.image_size, config.image_size, config.channels),
              np.float32),
          "texts": jax.ShapeDtypeStruct((batch, config.seq_len), np.int32),
          "targets": jax.ShapeDtypeStruct((batch,), np.int32)}


def input_config(source: str, *, batch_size: int, image_size: int,
                 channels: int, train_pp: str, eval_pp: str, seq_len: int,
                 **fields) -> ml_collections.ConfigDict:
  """`config.input` of this input; `fields` set the source's keys."""
  return config_blocks.image_input(
      "image_captions", batch_size=batch_size, image_size=image_size,
      channels=channels, train_pp=train_pp, eval_pp=eval_pp, **{
          "source": source, "seq_len": seq_len, "train_split": "train",
          "eval_split": "test", "vocab_file": placeholder(str), "vocab_size": 1000,
          "vocab_examples": 10000, "test_fraction": 0.2,
          "held_out_templates": 3, "dataset": placeholder(str),
          "data_dir": placeholder(str),
          "image_key": "image", "caption_key": "captions/text", "path": placeholder(str),
          **fields})


def digit_templates(held_out: int) -> tuple[tuple, tuple]:
  """(training templates, test templates) of the digits source; with none
  held out, the test split's captions cycle through all of them."""
  if not 0 <= held_out < len(TEMPLATES):
    raise ConfigError(f"input.held_out_templates={held_out}: hold out 0 to "
                      f"{len(TEMPLATES) - 1} of the {len(TEMPLATES)}.")
  if not held_out:
    return TEMPLATES, TEMPLATES
  return TEMPLATES[:-held_out], TEMPLATES[-held_out:]


class Digits:
  """The digits of a split with their captions."""

  def __init__(self, split: str, config):
    self.pixels, self.labels = sklearn_digits.split(split,
                                                    config.test_fraction)
    train, test = digit_templates(config.held_out_templates)
    self.test = split == "test"
    self.templates = test if self.test else train

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return self.pixels[i], int(self.labels[i])

  def captions(self, i) -> list[str]:
    name = NAMES[self.labels[i]]
    if self.test:  # One held-out wording per image, cycling.
      return [self.templates[i % len(self.templates)].format(name)]
    return [t.format(name) for t in self.templates]


def _walk(example, path: str):
  for key in path.split("/"):
    if key not in example:
      raise ConfigError(f"The example has no feature {key!r} (of {path!r}); "
                        f"it has {sorted(example)}.")
    example = example[key]
  return example


def _texts(value) -> list[str]:
  values = [value] if isinstance(value, (str, bytes)) else list(value)
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v)
          for v in values]


class Tfds:
  """A TFDS split's images and captions."""

  def __init__(self, split: str, config):
    self.data = tfds_source.source(config.dataset, split, config.data_dir)
    self.image_key, self.caption_key = config.image_key, config.caption_key

  def __len__(self):
    return len(self.data)

  def __getitem__(self, i):
    return _walk(self.data[int(i)], self.image_key), -1

  def captions(self, i) -> list[str]:
    return _texts(_walk(self.data[int(i)], self.caption_key))


class Folder:
  """SPLIT/captions.jsonl and the image files it names."""

  def __init__(self, split: str, config):
    self.root = os.path.join(config.path, split)
    index = os.path.join(self.root, "captions.jsonl")
    if not os.path.exists(index):
      raise NotFound(f"No captions at {index} (input.path/SPLIT/"
                     "captions.jsonl, one {\"image\", \"caption\"} a line).")
    with open(index, encoding="utf-8") as f:
      self.rows = [json.loads(line) for line in f if line.strip()]
    for n, row in enumerate(self.rows, 1):
      if "image" not in row or not ({"caption", "captions"} & row.keys()):
        raise ConfigError(f"{index} line {n} needs \"image\" and \"caption\""
                          " (or \"captions\").")
    self.channels = config.channels

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    with open(os.path.join(self.root, self.rows[i]["image"]), "rb") as f:
      try:
        pixels = image_ops.decoded(f.read(), self.channels)
      except ValueError as e:
        raise ConfigError(f"{self.rows[i]['image']}: {e}") from None
    return pixels.astype(np.uint8), -1

  def captions(self, i) -> list[str]:
    row = self.rows[i]
    return _texts(row.get("captions", row.get("caption")))


SOURCES = {"digits": Digits, "tfds": Tfds, "folder": Folder}


class Input(images.ImageInput):

  def __init__(self, config, *, seed, process_index, process_count):
    if config.source not in SOURCES:
      raise ConfigError(f"input.source={config.source!r}; use one of "
                        f"{sorted(SOURCES)}.")
    if config.get("num_folds") or config.get("label_overrides"):
      raise ConfigError("image_captions has no folds or label overrides; "
                        "unset input.num_folds and input.label_overrides.")
    make = SOURCES[config.source]
    names = NAMES if config.source == "digits" else []
    super().__init__(config, lambda split: make(split, config), names,
                     seed=seed, process_index=process_index,
                     process_count=process_count)
    self.class_names = names or None
    first = range(min(len(self.train), config.vocab_examples))
    self.tokenizer = wordpiece.for_input(
        config, [c for i in first for c in self.train.captions(i)],
        process_count)

  def model_fields(self) -> dict:
    config = self.config
    return {"vocab_size": self.tokenizer.vocab_size,
            "eos_id": self.tokenizer.sep_id, "pad_id": self.tokenizer.pad_id,
            "image_size": config.image_size, "channels": config.channels}

  def encode(self, texts: list[str]) -> np.ndarray:
    """Texts as the model reads them (B, seq_len) (zero-shot prompts)."""
    return self.tokenizer.encode_batch(texts, self.config.seq_len)

  def _with_texts(self, batch: dict, captions: list[str]) -> dict:
    batch["images"] = batch.pop("inputs")
    batch["texts"] = self.encode(captions)
    return batch

  def train_examples(self, indices: np.ndarray, step: int) -> dict:
    captions = []
    for i in indices:
      options = self.train.captions(int(i))
      pick = np.random.default_rng([self.seed, step, int(i), 1]).integers(
          len(options))
      captions.append(options[pick])
    return self._with_texts(super().train_examples(indices, step), captions)

  def eval_batches(self, split: str | None = None):
    split = split or self.config.eval_split
    source = self.sources[split]
    positions = eval_positions(len(source), self.config.batch_size,
                               self._rows)
    for batch, (indices, _) in zip(super().eval_batches(split), positions):
      yield self._with_texts(batch, [source.captions(int(i))[0]
                                     for i in indices])

  def save(self, workdir: str) -> None:
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))
    if self.class_names:
      save_class_names(workdir, self.class_names)
