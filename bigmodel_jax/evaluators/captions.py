"""Captions generated for a split's images, scored against its captions.

  config.evals.captions = ml_collections.ConfigDict(dict(
      name="captions", split="test", every_steps=500))
  # -> captions/bleu, captions/class_accuracy, captions/exact

Greedy decoding with the cache, from each eval caption's first token,
until the end token or `input.seq_len`. Reported: corpus BLEU (sacrebleu,
13a tokenisation) against the split's captions, the share generated
exactly, and, for labelled splits with class names, the share whose
caption names the image's class and no other. Records: the first
`examples` (default 8) captions with their references. Needs the
"caption" capability (a captioner run).
"""
import re

import jax
import numpy as np
import sacrebleu

from bigmodel_jax import decoding, evaluators


class Evaluator(evaluators.Decoding):
  capability = "caption"

  def generate(self, variables, batch: dict) -> list[str]:
    return generate(self.exp.model, variables["params"], self.tokenizer,
                    batch, self.exp.config.input.seq_len, self.context)

  def __call__(self, variables) -> tuple[dict, dict]:
    made, references, labels = [], [], []
    for batch in self.exp.data.eval_batches(self.split):
      keep = np.asarray(batch["weights"]) > 0
      made += [t for t, k in zip(self.generate(variables, batch), keep) if k]
      references += [text(self.tokenizer, row[1:])
                     for row in batch["texts"][keep]]
      labels += list(np.asarray(batch["targets"])[keep])
    out = {"bleu": sacrebleu.corpus_bleu(made, [references]).score,
           "exact": float(np.mean([m == r for m, r in
                                   zip(made, references)]))}
    names = self.exp.data.class_names
    if names and min(labels) >= 0:
      out["class_accuracy"] = float(np.mean([
          named(caption, names) == {names[label]}
          for caption, label in zip(made, labels)]))
    return out, {"captions": [{"generated": m, "reference": r}
                              for m, r in zip(made, references)
                              ][:self.examples]}


def text(tokenizer, ids) -> str:
  """The text of generated ids, up to the end token."""
  ids = list(ids)
  if tokenizer.eos_id in ids:
    ids = ids[:ids.index(tokenizer.eos_id)]
  return tokenizer.decode(np.asarray(ids, np.int32))


def generate(model, params, tokenizer, batch: dict, length: int,
             context: int) -> list[str]:
  """Greedy captions of a batch's images, from its captions' first ids, at
  most `length` tokens long."""
  ids = decoding.generate(model, params, batch["texts"][:, :1], length - 1,
                          jax.random.key(0), context=context,
                          temperature=0.0, inputs={"images": batch["images"]})
  return [text(tokenizer, row) for row in ids]


def named(caption: str, names: list[str]) -> set:
  """The class names that occur in `caption` as words."""
  words = set(re.findall(r"\w+", caption.lower()))
  return {name for name in names if name.lower() in words}
