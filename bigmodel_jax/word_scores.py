"""Scores of word vectors on word sets, computed as gensim's KeyedVectors
computes them (so ours and gensim's vectors are scored alike):

  neighbours   the k words of highest cosine similarity
  similarity   Spearman correlation of cosine similarities with the set's
               ratings (a TSV of word, word, rating; '#' comments); pairs
               with a word outside the vocabulary are skipped and counted
  analogies    a : b :: c : ?, answered by the word nearest to
               unit(b) - unit(a) + unit(c) among all but a, b and c
               (3CosAdd); Google's format (": section" lines, then
               "a b c d"); questions with an unknown word are skipped

  scores = WordVectors(words, vectors)
  scores.similarity(read_similarity(path))  # {"spearman", "pairs", "oov"}
"""
import numpy as np
from scipy import stats


def read_similarity(path: str) -> list[tuple[str, str, float]]:
  pairs = []
  with open(path) as f:
    for line in f:
      if line.strip() and not line.startswith("#"):
        first, second, rating = line.split("\t")
        pairs.append((first.lower(), second.lower(), float(rating)))
  return pairs


def read_analogies(path: str) -> dict[str, list[tuple]]:
  sections, current = {}, None
  with open(path) as f:
    for line in f:
      if line.startswith(":"):
        current = sections.setdefault(line[1:].strip(), [])
      elif line.strip():
        current.append(tuple(line.lower().split()))
  return sections


class WordVectors:
  """Unit vectors of a vocabulary's words."""

  def __init__(self, words: list[str], vectors: np.ndarray):
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    self.words = list(words)
    self.unit = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    self.index = {w: i for i, w in enumerate(self.words)}

  def neighbours(self, word: str, k: int) -> list[tuple[str, float]]:
    if word not in self.index:
      return []
    cosines = self.unit @ self.unit[self.index[word]]
    cosines[self.index[word]] = -np.inf
    best = np.argsort(-cosines)[:k]
    return [(self.words[i], round(float(cosines[i]), 4)) for i in best]

  def similarity(self, pairs) -> dict:
    known = [(a, b, r) for a, b, r in pairs
             if a in self.index and b in self.index]
    cosines = [float(self.unit[self.index[a]] @ self.unit[self.index[b]])
               for a, b, _ in known]
    spearman = (stats.spearmanr(cosines, [r for *_, r in known]).statistic
                if len(known) > 1 else float("nan"))
    return {"spearman": float(spearman), "pairs": len(known),
            "oov": 1 - len(known) / max(len(pairs), 1)}

  def analogies(self, sections: dict) -> dict:
    """{"accuracy", "questions"} over all sections, "accuracy/SECTION"."""
    out, right, total = {}, 0, 0
    for name, questions in sections.items():
      known = np.array([[self.index[w] for w in q] for q in questions
                        if all(w in self.index for w in q)], np.int64)
      if not len(known):
        continue
      a, b, c, d = known.T
      query = self.unit[b] - self.unit[a] + self.unit[c]
      scores = query @ self.unit.T
      rows = np.arange(len(known))
      for excluded in (a, b, c):
        scores[rows, excluded] = -np.inf
      hits = int(np.sum(np.argmax(scores, 1) == d))
      out[f"accuracy/{name}"] = hits / len(known)
      right, total = right + hits, total + len(known)
    out.update(accuracy=right / max(total, 1), questions=total)
    return out
