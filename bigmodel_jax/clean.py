"""Cleans a text corpus for pretraining: language, quality rules, duplicates
and near duplicates removed, personal data scrubbed.

  python -m bigmodel_jax.clean --input 'crawl/*.jsonl' --out corpus/clean \\
      --config experiments/clean_corpus.py --config.languages=en,fr

Reads .jsonl (one document per line, field `text_field`), .txt (one
document per file) and .parquet (one per row, column `text_field`), in
sorted file order, streaming: documents are analysed by `processes`
workers (language, `curation.rules`, fingerprints, `curation.pii`) and
deduplicated in order by the main process, so the first occurrence is kept
and the result does not depend on the number of workers. Writes
  OUT/kept-00000.jsonl ...   {"id": "FILE:N", "text": ...} per line: the
                             input of `text_corpus` (input.files.train)
  OUT/report.json, report.md counts removed per rule, examples of each,
                             the largest duplicate clusters, personal data
                             replaced, languages seen
  OUT/removed.png            the counts as a bar chart
Progress (MB read, documents, ETA) is printed every 10 s.
"""
import argparse
import bisect
import collections
import glob
import json
import multiprocessing
import os
import time

import ml_collections

from bigmodel_jax import config_loader, perf, workdirs
from bigmodel_jax.curation import analysis, dedup
from bigmodel_jax.dataio import jsonl
from bigmodel_jax.errors import ConfigError, NotFound, entrypoint

EXCERPT = 300  # Characters of each example in the report.


def defaults() -> ml_collections.ConfigDict:
  """The settings, with Gopher's and C4's published thresholds."""
  return ml_collections.ConfigDict({
      "text_field": "text",
      "processes": 0,  # Workers; 0: one per CPU.
      "languages": "en",  # Comma-separated codes kept; "" keeps every one.
      "min_language_score": 0.65,
      "rules": {
          "min_words": 50, "max_words": 100_000,
          "min_mean_word_length": 3, "max_mean_word_length": 10,
          "max_symbol_ratio": 0.1, "max_bullet_lines": 0.9,
          "max_ellipsis_lines": 0.3, "min_alpha_words": 0.8,
          "min_stop_words": 2, "max_duplicate_lines": 0.3,
          "max_duplicate_line_chars": 0.2, "repetition_ngrams": True,
          "c4_banned": True},
      "dedup": {"near": True, "shingle_words": 5, "num_perm": 128,
                "threshold": 0.8, "seed": 1},
      "pii": True,
      "shard_documents": 100_000,  # Kept documents per output file.
      "examples_per_rule": 5,
      "largest_clusters": 20,
  })


# --- Reading -----------------------------------------------------------------
def input_files(pattern: str) -> list[str]:
  files = sorted({p for part in pattern.split(",") if part
                  for p in glob.glob(os.path.expanduser(part))})
  if not files:
    raise NotFound(f"--input {pattern!r} matches no file.")
  unknown = [f for f in files if not f.endswith((".jsonl", ".txt",
                                                 ".parquet"))]
  if unknown:
    raise ConfigError(f"{unknown[0]}: not .jsonl, .txt or .parquet.")
  return files


def documents(path: str, field: str):
  """The texts of one file, in order."""
  if path.endswith(".txt"):
    with open(path, encoding="utf-8", errors="replace") as f:
      yield f.read()
  elif path.endswith(".jsonl"):
    for where, record in jsonl.records(path, errors="replace"):
      if not isinstance(record, dict) or not isinstance(record.get(field),
                                                        str):
        raise ConfigError(f"{where} has no text field {field!r} "
                          "(config.text_field).")
      yield record[field]
  else:
    import pyarrow.parquet as pq  # Only parquet corpora need it.
    for batch in pq.ParquetFile(path).iter_batches(columns=[field]):
      yield from (text or "" for text in batch.column(0).to_pylist())


class Numbering:
  """Documents are numbered in reading order; a number's id is FILE:N."""

  def __init__(self):
    self.starts, self.paths = [], []

  def begin(self, path: str, number: int) -> None:
    self.starts.append(number)
    self.paths.append(path)

  def id(self, number: int) -> str:
    i = bisect.bisect_right(self.starts, number) - 1
    return f"{self.paths[i]}:{number - self.starts[i]}"


# --- The report ---------------------------------------------------------------
class Report:
  def __init__(self, settings):
    self.s = settings
    self.removed = collections.Counter()
    self.examples = collections.defaultdict(list)
    self.languages = collections.Counter()
    self.personal = collections.Counter()
    self.clusters = collections.defaultdict(list)  # Kept -> duplicates.
    self.documents = self.kept = self.characters = self.kept_characters = 0

  def removal(self, rule: str, doc_id: str, text: str, **extra) -> None:
    self.removed[rule] += 1
    if len(self.examples[rule]) < self.s.examples_per_rule:
      self.examples[rule].append({"id": doc_id, "text": text[:EXCERPT],
                                  **extra})

  def as_dict(self, numbering: Numbering) -> dict:
    largest = sorted(self.clusters.items(), key=lambda kv: (-len(kv[1]),
                                                            kv[0]))
    return {
        "documents": self.documents, "kept": self.kept,
        "removed": dict(self.removed.most_common()),
        "characters": self.characters, "kept_characters": self.kept_characters,
        "personal_data_replaced": dict(self.personal),
        "languages": dict(self.languages.most_common()),
        "duplicate_clusters": len(self.clusters),
        "largest_clusters": [
            {"kept": numbering.id(k),
             "duplicates": [numbering.id(d) for d in v]}
            for k, v in largest[:self.s.largest_clusters]],
        "examples": dict(self.examples)}

  @staticmethod
  def markdown(report: dict) -> str:
    lines = ["# Cleaning report", "",
             f"{report['kept']:,} of {report['documents']:,} documents kept "
             f"({report['kept_characters']:,} of {report['characters']:,} "
             "characters).", "", "| removed by | documents |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in report["removed"].items()]
    lines += ["", "Personal data replaced: " + (", ".join(
        f"{k} {v:,}" for k, v in report["personal_data_replaced"].items())
        or "none") + ".", "", "Languages: " + ", ".join(
            f"{k} {v:,}" for k, v in report["languages"].items()) + ".", ""]
    lines += [f"## Duplicate clusters ({report['duplicate_clusters']:,})", ""]
    lines += [f"- {c['kept']} kept; {len(c['duplicates'])} removed: "
              + ", ".join(c["duplicates"][:10]) for c in
              report["largest_clusters"]]
    for rule, examples in report["examples"].items():
      lines += ["", f"## Examples: {rule}", ""]
      lines += [f"- `{e['id']}`" + (f" (duplicate of `{e['of']}`)"
                                    if "of" in e else "") + ": " +
                " ".join(e["text"].split())[:200] for e in examples]
    return "\n".join(lines) + "\n"


def _bar_chart(removed: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  names = list(removed)
  fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
  ax.barh(names[::-1], [removed[n] for n in names][::-1])
  ax.set_xlabel("documents removed")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# --- The pipeline ------------------------------------------------------------
class Shards:
  """Kept documents as OUT/kept-NNNNN.jsonl, `size` per file."""

  def __init__(self, out: str, size: int):
    self.out, self.size, self.count, self.file = out, size, 0, None

  def write(self, doc_id: str, text: str) -> None:
    if self.count % self.size == 0:
      self.close()
      self.file = open(os.path.join(
          self.out, f"kept-{self.count // self.size:05d}.jsonl"), "w",
                       encoding="utf-8")
    self.file.write(json.dumps({"id": doc_id, "text": text},
                               ensure_ascii=False) + "\n")
    self.count += 1

  def close(self) -> None:
    if self.file:
      self.file.close()


def clean(files: list[str], out: str, settings) -> dict:
  """Writes the kept documents and the report into `out`; the report."""
  numbering, report = Numbering(), Report(settings)
  index, shards = dedup.Index(settings.dedup), Shards(
      out, settings.shard_documents)
  total_bytes = sum(map(os.path.getsize, files))
  done_bytes, start, last = 0, time.perf_counter(), time.perf_counter()

  def numbered():
    nonlocal done_bytes
    number = 0
    for path in files:
      numbering.begin(path, number)
      for text in documents(path, settings.text_field):
        yield number, text
        number += 1
      done_bytes += os.path.getsize(path)

  processes = settings.processes or os.cpu_count()
  context = multiprocessing.get_context("spawn")  # JAX threads: no fork.
  with context.Pool(processes, analysis.init, (settings,)) as pool:
    for (number, failed, lang, digest, hashvalues, text,
         counts) in pool.imap(analysis.analyse, numbered(), chunksize=16):
      report.documents += 1
      report.characters += len(text)
      report.languages[lang or "unchecked"] += 1
      doc_id = numbering.id(number)
      duplicate = (None if failed else
                   index.check(number, digest, hashvalues))
      if failed:
        report.removal(failed, doc_id, text)
      elif duplicate:
        rule, kept = duplicate
        report.clusters[kept].append(number)
        report.removal(rule, doc_id, text, of=numbering.id(kept))
      else:
        report.kept += 1
        report.kept_characters += len(text)
        report.personal.update(counts)
        shards.write(doc_id, text)
      now = time.perf_counter()
      if now - last >= 10 and done_bytes:
        last = now
        print(f"clean: {done_bytes / 1e6:,.1f}/{total_bytes / 1e6:,.1f} MB | "
              f"{report.documents:,} documents, {report.kept:,} kept | ETA "
              f"{perf.hms((now - start) * (total_bytes / done_bytes - 1))}",
              flush=True)
  shards.close()
  result = report.as_dict(numbering)
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(result, f, indent=1, ensure_ascii=False)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(Report.markdown(result))
  if result["removed"]:
    _bar_chart(result["removed"], os.path.join(out, "removed.png"))
  return result


def load_settings(spec: str | None, overrides: dict):
  settings = config_loader.load_file(spec) if spec else defaults()
  return config_loader.override(settings, overrides)


@entrypoint
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True,
                      help="comma-separated globs of .jsonl/.txt/.parquet")
  parser.add_argument("--out", required=True, help="a new directory")
  parser.add_argument("--config", help="a settings file (get_config); "
                      "default: clean.defaults()")
  args, rest = parser.parse_known_args(argv)
  settings = load_settings(args.config, config_loader.parse_overrides(rest))
  files = input_files(args.input)
  began = time.perf_counter()
  with workdirs.new_directory(args.out) as staging:
    result = clean(files, staging, settings)
  print(f"kept {result['kept']:,} of {result['documents']:,} documents in "
        f"{perf.hms(time.perf_counter() - began)}; removed: " +
        (", ".join(f"{k} {v:,}" for k, v in result["removed"].items())
         or "none") + f"; report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
  main()
