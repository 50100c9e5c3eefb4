"""Settings of `python -m bigmodel_jax.clean` (corpus cleaning).

  python -m bigmodel_jax.clean --input 'crawl/*.jsonl' --out corpus/clean \\
      --config experiments/clean_corpus.py:gopher

Variants: "gopher" (default: Gopher's quality and repetition rules, C4's
banned content, English, MinHash near duplicates at Jaccard 0.8, personal
data scrubbed) and "dedup_only" (no language or quality filter: exact and
near duplicates, personal data).
"""
from bigmodel_jax import clean


def get_config(arg=None):
  config = clean.defaults()
  if arg in (None, "", "gopher"):
    return config
  if arg == "dedup_only":
    config.languages = ""
    for key, value in config.rules.items():
      config.rules[key] = False if isinstance(value, bool) else None
    return config
  raise ValueError(f"Unknown variant {arg!r}: gopher or dedup_only.")
