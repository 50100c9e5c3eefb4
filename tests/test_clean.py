"""Corpus cleaning: planted duplicates, near duplicates, bad documents and
personal data are found, the rest kept unchanged, in order."""
import json
import os

import numpy as np
import pytest

from bigmodel_jax import clean
from bigmodel_jax.curation import pii, rules

NOUNS = ("river garden market teacher window winter letter village doctor "
         "engine harbour mountain kitchen painter station forest island "
         "museum soldier farmer bridge library castle candle").split()
VERBS = ("carried watched opened followed painted visited answered remembered"
         " repaired crossed described").split()
ADJECTIVES = ("quiet bright narrow ancient gentle heavy careful hidden "
              "golden distant").split()


CLAUSES = ("at dawn", "in spring", "last winter", "before noon",
           "after supper", "with care", "by chance", "at midnight",
           "in silence", "every morning", "on sunday", "at last", "too early",
           "without fear", "in haste", "for weeks")


def english(rng, sentences=12) -> str:
  """A varied English paragraph that passes every quality rule."""
  out = []
  for _ in range(sentences):
    n = rng.choice(NOUNS, 3, replace=False)
    a = rng.choice(ADJECTIVES, 2, replace=False)
    out.append(f"{rng.choice(['The', 'A', 'That', 'One'])} {a[0]} {n[0]} "
               f"{rng.choice(VERBS)} {rng.choice(['the', 'a', 'her', 'his'])}"
               f" {a[1]} {n[1]} {rng.choice(CLAUSES)}, and near {n[2]} "
               f"{rng.integers(2, 900)}.")
  return " ".join(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Two .jsonl files and a .txt; what each planted document should become."""
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("corpus")
  docs = [english(rng) for _ in range(40)]
  words = docs[3].split()
  words[40] = "lighthouse"  # One word of ~170 changed.
  planted = {
      "exact": docs[5].upper().replace(".", " ."),  # Case, punctuation.
      "near": " ".join(words),
      "short": "Too short to keep, with the rest of it.",
      "french": ("Le jardin de la ville était calme et les enfants jouaient "
                 "près de la rivière pendant que leurs parents parlaient du "
                 "marché. ") * 6,
      "symbols": english(rng) + " #" * 80,
      "lorem": english(rng) + " Lorem ipsum dolor sit amet.",
      "repeated": ("Buy the best shoes with the lowest price today and have "
                   "them delivered to your door. ") * 12,
  }
  personal = (english(rng, 6) + " Write to jane.doe@example.com or call "
              "+1 415-555-0172 from 192.168.1.20; pay with 4111 1111 1111 "
              "1111, not order 1234 5678 9012 3456. " + english(rng, 6))
  first = docs[:20] + [planted["exact"], planted["short"], personal]
  second = docs[20:] + [planted["near"], planted["french"],
                        planted["symbols"], planted["lorem"],
                        planted["repeated"]]
  for name, texts in (("a.jsonl", first), ("b.jsonl", second)):
    with open(root / name, "w") as f:
      f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
  (root / "c.txt").write_text(docs[7])  # An exact duplicate, as a file.
  return root, docs, personal


@pytest.fixture(scope="module")
def cleaned(corpus, tmp_path_factory):
  root, _, _ = corpus
  out = str(tmp_path_factory.mktemp("cleaned") / "out")
  clean.main(["--input", f"{root}/*.jsonl,{root}/*.txt", "--out", out,
              "--config.processes=2"])
  return out


def test_planted_documents_removed_by_their_rule(corpus, cleaned):
  root, docs, _ = corpus
  report = json.load(open(os.path.join(cleaned, "report.json")))
  assert report["removed"] == {
      "exact_duplicate": 2, "near_duplicate": 1, "words": 1, "language": 1,
      "symbols": 1, "c4_banned": 1, "top_ngrams": 1}
  assert report["documents"] == 49 and report["kept"] == 41
  examples = report["examples"]
  assert examples["exact_duplicate"][0]["of"] == f"{root}/a.jsonl:5"
  assert {e["id"] for e in examples["exact_duplicate"]} == {
      f"{root}/a.jsonl:20", f"{root}/c.txt:0"}
  assert examples["near_duplicate"] == [
      {"id": f"{root}/b.jsonl:20", "of": f"{root}/a.jsonl:3",
       "text": examples["near_duplicate"][0]["text"]}]
  assert examples["language"][0]["id"] == f"{root}/b.jsonl:21"
  clusters = {c["kept"]: c["duplicates"] for c in report["largest_clusters"]}
  assert clusters[f"{root}/a.jsonl:5"] == [f"{root}/a.jsonl:20"]
  assert report["personal_data_replaced"] == {"email": 1, "phone": 1,
                                              "ip": 1, "card": 1}
  md = open(os.path.join(cleaned, "report.md")).read()
  assert "| near_duplicate | 1 |" in md and "duplicate of" in md
  assert os.path.getsize(os.path.join(cleaned, "removed.png")) > 1000


def test_kept_documents_in_order_and_scrubbed(corpus, cleaned):
  root, docs, personal = corpus
  kept = [json.loads(line) for line in
          open(os.path.join(cleaned, "kept-00000.jsonl"))]
  by_id = {k["id"]: k["text"] for k in kept}
  assert [k["id"] for k in kept][:20] == [f"{root}/a.jsonl:{i}"
                                          for i in range(20)]
  assert all(by_id[f"{root}/a.jsonl:{i}"] == docs[i] for i in range(20))
  scrubbed = by_id[f"{root}/a.jsonl:22"]
  assert ("<EMAIL>" in scrubbed and "<PHONE>" in scrubbed and "<IP>" in
          scrubbed and "<CARD>" in scrubbed)
  assert "1234 5678 9012 3456" in scrubbed  # Fails the Luhn check: kept.
  assert "jane.doe" not in scrubbed


def test_text_corpus_reads_the_output(cleaned):
  from bigmodel_jax.data import text_corpus
  pieces = list(text_corpus._file_pieces(
      os.path.join(cleaned, "kept-00000.jsonl"), "text"))
  assert len(pieces) == 41 and all(end for _, end in pieces)


def test_rules_and_pii_units():
  settings = clean.defaults().rules
  rng = np.random.default_rng(1)
  assert rules.first_failure(english(rng), settings) is None
  assert rules.first_failure("- a\n- b\n- c\n" + english(rng),
                             settings) is None  # 3 of 15 lines: allowed.
  bullets = "\n".join(f"- item {w} of the list to have" for w in NOUNS * 3)
  assert rules.first_failure(bullets, settings) == "bullets"
  assert pii.luhn("4111111111111111") and not pii.luhn("4111111111111112")
  text, counts = pii.scrub("mail a.b@c.org, ip 10.0.0.256 or 10.0.0.25")
  assert text == "mail <EMAIL>, ip 10.0.0.256 or <IP>" and counts == {
      "email": 1, "ip": 1}


def test_bad_input_is_one_line(tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
  with pytest.raises(SystemExit) as e:
    clean.main(["--input", str(bad), "--out", str(tmp_path / "o"),
                "--config.processes=1"])
  assert e.value.code == 2
  assert f"{bad}:2 has no text field 'text'" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()  # Nothing half-written.
  with pytest.raises(SystemExit):
    clean.main(["--input", str(tmp_path / "none*.jsonl"), "--out",
                str(tmp_path / "o")])
  assert "matches no file" in capsys.readouterr().err
