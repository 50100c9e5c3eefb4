"""Corpus cleaning for language-model pretraining (`bigmodel_jax.clean`).

`rules.py` (quality heuristics: Gopher's quality and repetition rules, C4's
document rules), `language.py` (fastText language identification),
`pii.py` (e-mail, phone, IP and card-number scrubbing), `dedup.py` (exact
and MinHash-LSH near-duplicate removal).
"""
