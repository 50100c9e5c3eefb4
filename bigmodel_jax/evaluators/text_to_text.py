"""Texts generated from a split's inputs, scored against its targets.

  config.evals.generated = ml_collections.ConfigDict(dict(
      name="text_to_text", split="test", beams=4, every_steps=0))
  # -> generated/bleu, generated/rouge1, generated/rouge2, generated/rougeL,
  #    generated/exact

Each input is decoded with the cache, by beam search (`beams`, default 1:
greedy; `length_penalty`, default 1) for at most `max_new_tokens` (default
`target_len` - 1), and read up to its end token. Reported: corpus BLEU
(sacrebleu, 13a tokenisation), ROUGE-1/2/L F-measures (rouge-score, with
stemming; mean over examples) and the share generated exactly (the
accuracy of a classifier whose classes are target texts). The targets are
read back through the tokenizer, as the generated texts are. Records: the
first `examples` (default 8) with their inputs and targets. Needs the
"text_to_text" capability (a T5 run).
"""
import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

from bigmodel_jax import decoding, evaluators

ROUGE = ("rouge1", "rouge2", "rougeL")


class Evaluator(evaluators.Decoding):
  capability = "text_to_text"

  def __init__(self, block, exp):
    super().__init__(block, exp)
    self.beams = block.get("beams", 1)
    self.length_penalty = block.get("length_penalty", 1.0)
    self.max_new_tokens = block.get("max_new_tokens", self.context - 1)

  def generate(self, variables, sources) -> list[str]:
    ids, _ = decoding.beam_search(
        self.exp.model, variables["params"],
        np.full((len(sources), 1), self.tokenizer.pad_id, np.int32),
        self.max_new_tokens, beams=self.beams, context=self.context,
        eos_id=self.tokenizer.eos_id, length_penalty=self.length_penalty,
        inputs={"sources": sources})
    return [self.tokenizer.decode(row) for row in ids]

  def __call__(self, variables) -> tuple[dict, dict]:
    made, targets, sources = [], [], []
    for batch in self.exp.data.eval_batches(self.split):
      keep = np.asarray(batch.get("weights", np.ones(len(batch["inputs"])))
                        ) > 0
      made += [t for t, k in zip(self.generate(variables, batch["inputs"]),
                                 keep) if k]
      targets += [self.tokenizer.decode(row) for row in batch["targets"][keep]]
      sources += [self.tokenizer.decode(row) for row in batch["inputs"][keep]]
    return scores(made, targets), {"generated": [
        {"input": s, "generated": m, "target": t}
        for s, m, t in zip(sources, made, targets)][:self.examples]}


def scores(made: list[str], targets: list[str]) -> dict:
  """BLEU, ROUGE and exact match of generated texts against targets."""
  scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
  rouge = [scorer.score(t, m) for m, t in zip(made, targets)]
  return {"bleu": sacrebleu.corpus_bleu(made, [targets]).score,
          **{name: float(np.mean([r[name].fmeasure for r in rouge]))
             for name in ROUGE},
          "exact": float(np.mean([m == t for m, t in zip(made, targets)]))}
