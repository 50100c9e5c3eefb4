"""Word vectors scored on word sets: similarity, analogies, neighbours.

  config.evals.words = ml_collections.ConfigDict(dict(
      name="word_vectors", every_steps=1000,
      similarity="tests/data/word_sets/shakespeare_similarity.tsv",
      analogies="tests/data/word_sets/shakespeare_analogies.txt",
      neighbours="king,love", top_k=8))
  # -> words/similarity_spearman, words/analogy_accuracy,
  #    words/analogy_accuracy/SECTION; records: each query's neighbours

Reads every vocabulary word's vector through the "word_vectors"
capability (a word2vec run) and scores them with `word_scores` (as gensim
scores its KeyedVectors). Either set may be left out (None).
"""
import jax
import numpy as np

from bigmodel_jax import capabilities, word_scores


class Evaluator:
  every_steps = 0  # From the block.

  def __init__(self, block, exp):
    self.every_steps = block.get("every_steps", 0)
    capabilities.of_evaluated_run(exp, "word_vectors", "word_vectors")
    tokenizer = exp.data.tokenizer
    self.ids = tokenizer.word_ids()
    self.words = [tokenizer.words[i] for i in self.ids]
    self.pairs = (word_scores.read_similarity(block.similarity)
                  if block.get("similarity") else None)
    self.analogies = (word_scores.read_analogies(block.analogies)
                      if block.get("analogies") else None)
    self.queries = [w for w in (block.get("neighbours") or "").split(",")
                    if w]
    self.top_k = block.get("top_k", 8)
    self.vectors = jax.jit(lambda v, ids: exp.model.apply(
        v, ids, method="vectors"))

  def __call__(self, variables) -> tuple[dict, dict]:
    scores = word_scores.WordVectors(self.words, np.asarray(self.vectors(
        variables, self.ids)))
    out = {}
    if self.pairs:
      similarity = scores.similarity(self.pairs)
      out.update(similarity_spearman=similarity["spearman"],
                 similarity_oov=similarity["oov"])
    if self.analogies:
      out.update({f"analogy_{k}": v for k, v in
                  scores.analogies(self.analogies).items()})
    return out, {"neighbours": {q: scores.neighbours(q, self.top_k)
                                for q in self.queries}}
