"""Exact and near-duplicate documents, first occurrence kept.

Exact duplicates: the SHA-1 of the text with case, punctuation and
whitespace normalised. Near duplicates: MinHash signatures
(`datasketch.MinHash`, `num_perm` permutations) of the document's word
`shingle_words`-grams, indexed by `datasketch.MinHashLSH` with bands tuned
to a Jaccard `threshold`; a document whose bands collide with a kept one is
its near duplicate. Workers compute hashes and signatures
(`fingerprint`); the index (`Index`) holds only band hashes and keys, never
the texts, so it streams over corpora larger than memory.
"""
import hashlib
import re

import numpy as np

_NORMAL = re.compile(r"[\W_]+")
SCHEME = "affine32"  # datasketch's permutations (its default since 2.0).


def normalized(text: str) -> str:
  return _NORMAL.sub(" ", text.lower()).strip()


def fingerprint(text: str, settings) -> tuple[bytes, np.ndarray | None]:
  """(exact hash, MinHash hash values or None when near dedup is off)."""
  norm = normalized(text)
  digest = hashlib.sha1(norm.encode("utf-8")).digest()
  if not settings.near:
    return digest, None
  from datasketch import MinHash  # Only cleaning needs it.
  words, n = norm.split(), settings.shingle_words
  shingles = {" ".join(words[i:i + n])
              for i in range(max(1, len(words) - n + 1))}
  minhash = MinHash(num_perm=settings.num_perm, seed=settings.seed,
                    scheme=SCHEME)
  minhash.update_batch([s.encode("utf-8") for s in shingles])
  return digest, minhash.hashvalues


class Index:
  """Kept documents' fingerprints; `check` says which kept document a new
  one duplicates (adding it when it duplicates none)."""

  def __init__(self, settings):
    from datasketch import MinHashLSH
    self.settings = settings
    self.exact = {}  # Hash -> number of the kept document.
    self.lsh = (MinHashLSH(threshold=settings.threshold,
                           num_perm=settings.num_perm)
                if settings.near else None)

  def check(self, key: int, digest: bytes, hashvalues
            ) -> tuple[str, int] | None:
    """("exact_duplicate" | "near_duplicate", the earliest kept document's
    number) or None: document number `key` is kept and indexed."""
    if digest in self.exact:
      return "exact_duplicate", self.exact[digest]
    if self.lsh is not None:
      from datasketch import MinHash
      minhash = MinHash(num_perm=self.settings.num_perm,
                        seed=self.settings.seed, hashvalues=hashvalues,
                        scheme=SCHEME)
      found = self.lsh.query(minhash)
      if found:
        return "near_duplicate", min(found)
      self.lsh.insert(key, minhash)
    self.exact[digest] = key
    return None
