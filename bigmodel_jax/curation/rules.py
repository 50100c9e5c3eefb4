"""Document quality rules, as in Gopher (Rae et al. 2021, appendix A.1) and C4.

  failed = first_failure(text, settings)   # a rule name, or None: kept

Every threshold is a key of `settings` (the `rules` block of the clean
config; `experiments/clean_corpus.py` has the published values). A rule
whose setting is None is off. The rules, in the order they are checked:

  words                 fewer than `min_words` or more than `max_words` words
  mean_word_length      mean word length outside [min, max] characters
  symbols               ("#" + "..." + "…") per word above `max_symbol_ratio`
  bullets               share of lines starting with a bullet above
                        `max_bullet_lines`
  ellipsis_lines        share of lines ending with an ellipsis above
                        `max_ellipsis_lines`
  alphabetic_words      share of words with a letter below `min_alpha_words`
  stop_words            fewer than `min_stop_words` of Gopher's eight stop
                        words (the, be, to, of, and, that, have, with)
  duplicate_lines       share of lines (and of their characters) repeated
  top_ngrams            characters in the most frequent 2/3/4-gram
  duplicate_ngrams      characters in repeated 5..10-grams
  c4_banned             C4: "lorem ipsum", a curly bracket, "javascript"
"""
import collections
import re

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have",
                        "with"})
BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "●", "▪")
_WORD = re.compile(r"\S+")
# Gopher's bounds: 2-, 3- and 4-gram shares; 5..10-gram shares.
TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
DUPLICATE_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def _share(count, total) -> float:
  return count / total if total else 0.0


def _top_ngram_share(words: list[str], n: int) -> float:
  """Characters in the most frequent n-gram's occurrences over all words'."""
  grams = collections.Counter(zip(*(words[i:] for i in range(n))))
  if not grams:
    return 0.0
  gram, count = grams.most_common(1)[0]
  return _share(sum(map(len, gram)) * count, sum(map(len, words)))


def _duplicate_ngram_share(words: list[str], n: int) -> float:
  """Characters of words inside n-grams that occur more than once."""
  grams = list(zip(*(words[i:] for i in range(n))))
  seen, repeated = set(), set()
  for gram in grams:
    (repeated if gram in seen else seen).add(gram)
  covered = [False] * len(words)
  for i, gram in enumerate(grams):
    if gram in repeated:
      covered[i:i + n] = [True] * n
  return _share(sum(len(w) for w, c in zip(words, covered) if c),
                sum(map(len, words)))


def _repetition(lines: list[str], words: list[str], s) -> str | None:
  if s.max_duplicate_lines is not None and lines:
    counts = collections.Counter(lines)
    repeated = [line for line in lines if counts[line] > 1]
    if (_share(len(repeated), len(lines)) > s.max_duplicate_lines or
        _share(sum(map(len, repeated)), sum(map(len, lines))) >
        s.max_duplicate_line_chars):
      return "duplicate_lines"
  if s.repetition_ngrams:
    lowered = [w.lower() for w in words]
    if any(_top_ngram_share(lowered, n) > bound
           for n, bound in TOP_NGRAMS.items()):
      return "top_ngrams"
    if any(_duplicate_ngram_share(lowered, n) > bound
           for n, bound in DUPLICATE_NGRAMS.items()):
      return "duplicate_ngrams"
  return None


def first_failure(text: str, s) -> str | None:
  """The first rule `text` fails under settings `s`, or None."""
  words = _WORD.findall(text)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if s.min_words is not None and not (s.min_words <= len(words) <=
                                      s.max_words):
    return "words"
  if s.min_mean_word_length is not None and words:
    mean = sum(map(len, words)) / len(words)
    if not s.min_mean_word_length <= mean <= s.max_mean_word_length:
      return "mean_word_length"
  if s.max_symbol_ratio is not None:
    symbols = text.count("#") + text.count("...") + text.count("…")
    if _share(symbols, len(words)) > s.max_symbol_ratio:
      return "symbols"
  if s.max_bullet_lines is not None and _share(
      sum(line.startswith(BULLETS) for line in lines),
      len(lines)) > s.max_bullet_lines:
    return "bullets"
  if s.max_ellipsis_lines is not None and _share(
      sum(line.endswith(("...", "…")) for line in lines),
      len(lines)) > s.max_ellipsis_lines:
    return "ellipsis_lines"
  if s.min_alpha_words is not None and words and _share(
      sum(any(c.isalpha() for c in w) for w in words),
      len(words)) < s.min_alpha_words:
    return "alphabetic_words"
  if s.min_stop_words is not None and len(
      STOP_WORDS & {w.lower().strip(".,;:!?\"'") for w in words}
      ) < s.min_stop_words:
    return "stop_words"
  failed = _repetition(lines, words, s)
  if failed:
    return failed
  if s.c4_banned:
    lowered = text.lower()
    if "lorem ipsum" in lowered or "{" in text or "javascript" in lowered:
      return "c4_banned"
  return None


NAMES = ("words", "mean_word_length", "symbols", "bullets", "ellipsis_lines",
         "alphabetic_words", "stop_words", "duplicate_lines", "top_ngrams",
         "duplicate_ngrams", "c4_banned")
