"""Our word2vec next to gensim's `Word2Vec`: the same sentences, vocabulary
and settings, scored by the same word sets.

  python scripts/word2vec_vs_gensim.py --workdir runs/word2vec [--mode cbow]

Trains `word2vec_shakespeare.py` (skip-gram, or `--mode cbow`) in
WORKDIR/ours with the README's command (a finished run is kept), then
gensim on the sentences our input reads (min_count, window, negatives,
sample, dimensions as in the recipe; the epochs that give as many
training pairs as our steps draw; --workers threads; two seeds), and
scores them all
with `word_scores` and with gensim's own `evaluate_word_pairs` and
`evaluate_word_analogies` (our vectors loaded into a KeyedVectors). Prints
a table (wall time, Spearman, analogy accuracy per section) and, for the
200 most frequent words, how many of each one's 10 nearest neighbours
ours and gensim share (and gensim with another seed: the floor set by
chance); then the neighbours of the recipe's query words.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bigmodel_jax import config_loader, runs, word_scores  # noqa: E402
from bigmodel_jax.data import word_contexts  # noqa: E402

VARIANT = {"skipgram": "cpu", "cbow": "cbow"}


def train_ours(workdir: str, experiment: str) -> float:
  """Trains (unless done) and returns the run's wall seconds."""
  record = os.path.join(workdir, "wall.json")
  if not os.path.exists(record):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bigmodel_jax.train", "--config",
                    experiment, "--workdir", workdir], check=True, cwd=ROOT)
    with open(record, "w") as f:
      json.dump({"seconds": time.perf_counter() - start}, f)
  with open(record) as f:
    return json.load(f)["seconds"]


def gensim_epochs(config, data) -> int:
  """Epochs of gensim that train on about as many pairs as our run."""
  kept = float(data.keep[data.train.tokens].sum())
  per_centre = config.input.window + 1 if config.input.mode == "skipgram" else 1
  return max(1, round(config.total_steps * config.input.batch_size /
                      (kept * per_centre)))


def scores(keyed, words, sets) -> dict:
  ours = word_scores.WordVectors(words, keyed[words])
  out = {"spearman": ours.similarity(sets["pairs"])["spearman"],
         **{f"analogy {k}": v for k, v in ours.analogies(
             sets["analogies"]).items() if k != "questions"}}
  out["gensim spearman"] = keyed.evaluate_word_pairs(
      sets["similarity"])[1].statistic
  out["gensim analogy"] = keyed.evaluate_word_analogies(
      sets["analogies_file"], case_insensitive=True)[0]
  return out


def shared_neighbours(a, b, words, k=10) -> float:
  va, vb = (word_scores.WordVectors(words, kv[words]) for kv in (a, b))
  return float(np.mean([len({w for w, _ in va.neighbours(q, k)} &
                            {w for w, _ in vb.neighbours(q, k)})
                        for q in words[:200]]))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--mode", choices=sorted(VARIANT), default="skipgram")
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  args = parser.parse_args()
  from gensim.models import KeyedVectors, Word2Vec

  experiment = str(ROOT / "experiments" /
                   f"word2vec_shakespeare.py:{VARIANT[args.mode]}")
  ours_dir = os.path.join(args.workdir, "ours")
  ours_seconds = train_ours(ours_dir, experiment)
  run = runs.load(ours_dir)
  config = config_loader.load(experiment)
  data = word_contexts.Input(config.input, seed=config.seed, process_index=0,
                             process_count=1)
  ids = run.tokenizer.word_ids()
  words = [run.tokenizer.words[i] for i in ids]
  ours = KeyedVectors(config.model.embed_dim)
  ours.add_vectors(words, np.asarray(run.model.apply(
      run.variables, ids, method="vectors")))

  sentences = list(word_contexts.sentences(config.input,
                                           config.input.train_split))
  epochs = gensim_epochs(config, data)
  trained = {}
  for seed in (config.seed, config.seed + 1):
    start = time.perf_counter()
    model = Word2Vec(sentences, vector_size=config.model.embed_dim,
                     window=config.input.window,
                     negative=config.input.negatives,
                     sample=config.input.sample,
                     min_count=config.input.min_count,
                     sg=int(args.mode == "skipgram"), epochs=epochs,
                     workers=args.workers, seed=seed)
    trained[f"gensim, seed {seed}"] = (time.perf_counter() - start, model.wv)
  assert sorted(model.wv.index_to_key) == sorted(words), "vocabularies differ"
  gensim, other = (kv for _, kv in trained.values())

  block = config.evals.words
  sets = {"pairs": word_scores.read_similarity(block.similarity),
          "similarity": block.similarity, "analogies_file": block.analogies,
          "analogies": word_scores.read_analogies(block.analogies)}
  table = {"ours": (ours_seconds, scores(ours, words, sets)),
           **{name: (seconds, scores(kv, words, sets))
              for name, (seconds, kv) in trained.items()}}
  keys = list(next(iter(table.values()))[1])
  print(f"{args.mode}: {len(words):,} words, {config.total_steps:,} steps of "
        f"{config.input.batch_size} vs gensim {epochs} epochs\n")
  print("| model | wall | " + " | ".join(keys) + " |")
  print("|---|---|" + "---|" * len(keys))
  for name, (seconds, row) in table.items():
    print(f"| {name} | {seconds:.0f} s | " +
          " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
  print("\nshared nearest neighbours (of 10, the 200 most frequent words): "
        f"ours and gensim {shared_neighbours(ours, gensim, words):.2f}, "
        f"gensim's two seeds {shared_neighbours(gensim, other, words):.2f}")
  for query in block.neighbours.split(","):
    for name, kv in (("ours", ours), ("gensim", gensim)):
      print(f"{query:>6} {name:>6}: " + ", ".join(
          w for w, _ in word_scores.WordVectors(words, kv[words]).neighbours(
              query, 8)))


if __name__ == "__main__":
  main()
