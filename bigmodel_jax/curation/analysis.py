"""One document's analysis, run in `clean`'s worker processes (which import
this package only, not JAX)."""
from bigmodel_jax.curation import dedup, language, pii, rules

_SETTINGS = None  # The clean settings, set once per worker.


def init(settings) -> None:
  global _SETTINGS
  _SETTINGS = settings


def analyse(item):
  """(number, failed rule or None, language, exact hash, MinHash values,
  text (scrubbed when kept), personal data counts) of one document."""
  number, text = item
  s, lang = _SETTINGS, None
  if s.languages:
    lang, score = language.identify(text)
    if lang not in s.languages.split(",") or score < s.min_language_score:
      return number, "language", lang, None, None, text, {}
  failed = rules.first_failure(text, s.rules)
  if failed:
    return number, failed, lang, None, None, text, {}
  digest, hashvalues = dedup.fingerprint(text, s.dedup)
  text, counts = pii.scrub(text) if s.pii else (text, {})
  return number, None, lang, digest, hashvalues, text, counts
