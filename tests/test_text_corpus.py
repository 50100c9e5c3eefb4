"""Real text for GPT: byte-level BPE, resumable token stores, corpora from
files and TFDS, batches as a pure function of the step."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigmodel_jax import config_loader, evaluate, runs, train
from bigmodel_jax import tokenizer as tokenizer_cli
from bigmodel_jax.data import text_corpus
from bigmodel_jax.dataio import bpe, token_store
from bigmodel_jax.errors import NotFound
from bigmodel_jax.models import gpt

EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "experiments",
                          "gpt_text.py")
DOCS = ["First Citizen: we are accounted poor citizens.",
        "Café naïve — ☃ ünïcödé, and\nlines\n\nwith blank ones.",
        "All: speak, speak. " * 20]


@pytest.fixture(scope="module")
def tokenizer():
  return bpe.BPE.train(DOCS * 10, vocab_size=300, show_progress=False)


def test_bpe_round_trip_determinism_and_gpt2_files(tokenizer, tmp_path):
  for doc in DOCS:
    assert tokenizer.decode(tokenizer.encode(doc)) == doc
  again = bpe.BPE.train(DOCS * 10, vocab_size=300, show_progress=False)
  assert again.tokenizer.to_str() == tokenizer.tokenizer.to_str()
  tokenizer.tokenizer.model.save(str(tmp_path))  # vocab.json + merges.txt
  gpt2_style = bpe.BPE.from_file(str(tmp_path / "vocab.json"))
  assert gpt2_style.eos_id == tokenizer.eos_id
  for doc in DOCS:
    np.testing.assert_array_equal(gpt2_style.encode(doc),
                                  tokenizer.encode(doc))
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  loaded = bpe.BPE.from_file(str(tmp_path / "tokenizer.json"))
  np.testing.assert_array_equal(loaded.encode(DOCS[1]),
                                tokenizer.encode(DOCS[1]))
  with pytest.raises(ValueError, match="at least 258"):
    bpe.BPE.train(DOCS, vocab_size=100)


def _pieces(count=None):
  """Three documents, the long one in two pieces; stops after `count`."""
  pieces = [(DOCS[0], True), (DOCS[1], True), (DOCS[2][:100], False),
            (DOCS[2][100:], True)]
  for i, piece in enumerate(pieces):
    if count is not None and i == count:
      raise KeyboardInterrupt  # As if the build were killed here.
    yield piece


def test_token_store_resumes_to_the_same_tokens(tokenizer, tmp_path,
                                                monkeypatch):
  monkeypatch.setattr(token_store, "CHUNK_BYTES", 1)  # A chunk per piece.
  whole = token_store.build(str(tmp_path / "a"), _pieces(), tokenizer)
  with pytest.raises(KeyboardInterrupt):
    token_store.build(str(tmp_path / "b"), _pieces(count=3), tokenizer)
  assert token_store.load(str(tmp_path / "b")) is None  # Not complete.
  with open(tmp_path / "b" / "tokens.bin", "ab") as f:
    f.write(b"\x01\x02\x03")  # A torn write after the last whole chunk.
  resumed = token_store.build(str(tmp_path / "b"), _pieces(), tokenizer)
  assert isinstance(resumed, np.memmap) and resumed.dtype == np.uint16
  np.testing.assert_array_equal(resumed, whole)
  eos = np.flatnonzero(whole == tokenizer.eos_id)
  assert len(eos) == 3  # One per document, none inside one.
  expected = np.concatenate([  # Pieces are encoded on their own.
      np.append(tokenizer.encode(text), tokenizer.eos_id) if ends else
      tokenizer.encode(text) for text, ends in _pieces()])
  np.testing.assert_array_equal(whole, expected)


_BUILDER = """
import sys, time
from bigmodel_jax.dataio import bpe, token_store
token_store.CHUNK_BYTES = 16 << 10
tokenizer = bpe.BPE.from_file(sys.argv[2])
text = open(sys.argv[3]).read()
pieces = ((text[i:i + 4096], False) for i in range(0, len(text), 4096))
tokens = token_store.build(sys.argv[1], pieces, tokenizer)
print(len(tokens))
"""


def test_two_processes_building_one_store_build_it_once(tokenizer, tmp_path):
  text = "\n".join(DOCS) * 2000  # About 500 KB: many chunks.
  (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  store = str(tmp_path / "store")
  builders = [subprocess.Popen(
      [sys.executable, "-c", _BUILDER, store, str(tmp_path / "tokenizer.json"),
       str(tmp_path / "corpus.txt")], stdout=subprocess.PIPE, text=True)
              for _ in range(2)]
  outputs = [b.communicate(timeout=300)[0] for b in builders]
  assert [b.returncode for b in builders] == [0, 0]
  expected = np.concatenate([tokenizer.encode(text[i:i + 4096])
                             for i in range(0, len(text), 4096)])
  assert "waiting for another process building" in "".join(outputs)
  assert [int(o.split()[-1]) for o in outputs] == [len(expected)] * 2
  np.testing.assert_array_equal(token_store.load(store), expected)


def test_a_damaged_store_is_refused_when_opened(tokenizer, tmp_path):
  store = tmp_path / "store"
  token_store.build(str(store), _pieces(), tokenizer)
  data = bytearray((store / "tokens.bin").read_bytes())
  data[10] ^= 1  # Same size, one token changed.
  (store / "tokens.bin").write_bytes(bytes(data))
  with pytest.raises(NotFound, match="tokens.bin differs from the digest"):
    token_store.load(str(store))
  (store / "tokens.bin").write_bytes(bytes(data) * 2)  # Appended to twice.
  with pytest.raises(NotFound, match=r"is damaged: tokens.bin has \d+ bytes"):
    token_store.load(str(store))


def test_a_corpus_edited_without_changing_its_size_gets_a_new_store(
    tmp_path):
  corpus = tmp_path / "c.txt"
  lines = [f"line {i}: {DOCS[i % 3][:30]}" for i in range(200)]
  corpus.write_text("\n".join(lines), encoding="utf-8")
  config = _config(tmp_path, **{"input.files.train": str(corpus),
                                "input.files.validation": str(corpus)}).input
  config.tokenizer_file = str(tmp_path / "tok.json")
  bpe.BPE.train(lines, vocab_size=300, show_progress=False).save(
      config.tokenizer_file)
  before = np.array(text_corpus.Input(
      config, seed=0, process_index=0, process_count=1).tokens("train"))
  stat = corpus.stat()
  corpus.write_text("\n".join(reversed(lines)), encoding="utf-8")
  os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # Even mtime.
  assert corpus.stat().st_size == stat.st_size
  after = text_corpus.Input(config, seed=0, process_index=0,
                            process_count=1)
  assert not np.array_equal(after.tokens("train"), before)
  np.testing.assert_array_equal(
      after.tokens("train")[:5], after.tokenizer.encode(lines[-1])[:5])


def _config(tmp_path, **overrides):
  return config_loader.load(f"{EXPERIMENT}:cpu", {
      "input.store_dir": str(tmp_path / "stores"), "input.vocab_size": 300,
      "input.seq_len": 16, "input.batch_size": 4, "input.eval_steps": 2,
      **overrides})


def _corpus(tmp_path) -> dict:
  """Train text as .jsonl + .txt, validation as .parquet."""
  (tmp_path / "a.jsonl").write_text(
      "".join(json.dumps({"text": d, "id": i}) + "\n"
              for i, d in enumerate(DOCS * 20)), encoding="utf-8")
  (tmp_path / "b.txt").write_text("\n".join(DOCS) * 10, encoding="utf-8")
  pq.write_table(pa.table({"text": DOCS * 5}), tmp_path / "v.parquet")
  return {"input.files.train": f"{tmp_path}/*.jsonl,{tmp_path}/*.txt",
          "input.files.validation": f"{tmp_path}/v.parquet"}


def test_corpus_files_batches_are_a_function_of_the_step(tmp_path):
  config = _config(tmp_path, **_corpus(tmp_path)).input
  one = text_corpus.Input(config, seed=0, process_index=0, process_count=1)
  documents = len(DOCS) * 20 + 1 + len(DOCS) * 5
  assert (sum(int((one.tokens(s) == one.tokenizer.eos_id).sum())
              for s in ("train", "validation")) == documents)
  config.tokenizer_file = str(tmp_path / "tokenizer.json")
  one.tokenizer.save(config.tokenizer_file)
  halves = [text_corpus.Input(config, seed=0, process_index=i,
                              process_count=2) for i in (0, 1)]
  for step in (0, 7):
    batch = one.train_batch(step)
    assert batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["targets"][:, :-1],
                                  batch["inputs"][:, 1:])
    np.testing.assert_array_equal(
        np.concatenate([h.train_batch(step)["inputs"] for h in halves]),
        batch["inputs"])
  assert not np.array_equal(one.train_batch(0)["inputs"],
                            one.train_batch(1)["inputs"])
  assert len(list(one.eval_batches())) == 2


@pytest.mark.parametrize("files, message", [
    ({"input.files.train": "/nowhere/*.jsonl"}, "matches no file"),
    ({"input.files.train": "JSONL", "input.feature": "body"},
     "has no field 'body'"),
])
def test_corpus_errors_name_the_fix(tmp_path, files, message):
  _corpus(tmp_path)
  files = {k: v.replace("JSONL", f"{tmp_path}/a.jsonl")
           for k, v in files.items()}
  config = _config(tmp_path, **files,
                   **{"input.files.validation": f"{tmp_path}/v.parquet"})
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    text_corpus.Input(config.input, seed=0, process_index=0, process_count=1)


def test_bpe_gpt_trains_on_tiny_shakespeare_and_reports_bits_per_byte(
    tmp_path, capsys):
  workdir = str(tmp_path / "run")
  train.train(_config(tmp_path, **{
      "model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2,
      "input.batch_size": 8, "total_steps": 3, "eval_every_steps": 3,
      "checkpoint_every_steps": 3,
      "optimizer.warmup_steps": 1}), workdir)
  assert bpe.BPE.from_file(os.path.join(workdir, "tokenizer.json")
                           ).vocab_size == 300
  evaluate.main(["--workdir", workdir, "--split", "validation", "--json",
                 str(tmp_path / "out.json")])
  got = json.loads((tmp_path / "out.json").read_text())
  assert got["bytes"] > got["tokens"]  # BPE: more than a byte per token.
  # Bits per byte: the same total information, counted per byte in bits.
  assert got["bits_per_byte"] == pytest.approx(
      got["loss"] * got["tokens"] / (got["bytes"] * np.log(2)), rel=1e-4)


def test_segment_ids_keep_packed_documents_apart(tmp_path):
  config = _config(tmp_path, **_corpus(tmp_path), **{
      "input.segment_ids": True, "input.seq_len": 48}).input
  data = text_corpus.Input(config, seed=0, process_index=0, process_count=1)
  batch = data.train_batch(0)
  eos = data.tokenizer.eos_id
  starts = batch["inputs"] == eos
  assert starts.any()  # Windows of 48 tokens cross documents.
  # A segment changes exactly where an end-of-document token starts the
  # next document, and positions count from it.
  np.testing.assert_array_equal(np.diff(batch["segments"], axis=1),
                                starts[:, 1:])
  np.testing.assert_array_equal(batch["positions"][starts], 0)
  model = gpt.make(gpt.model_config(
      "nano", num_layers=1, emb_dim=32, num_heads=2, block_size=48,
      vocab_size=data.tokenizer.vocab_size))
  params = model.init(jax.random.key(0), batch["inputs"])["params"]
  logits = model.apply({"params": params}, batch["inputs"],
                       batch["segments"], batch["positions"])
  # Another first document leaves every later document's logits unchanged.
  row = int(np.flatnonzero(starts.any(1))[0])
  first = int(np.flatnonzero(starts[row])[0])
  changed = batch["inputs"].copy()
  changed[row, :first] = (changed[row, :first] + 1) % 300
  again = model.apply({"params": params}, changed, batch["segments"],
                      batch["positions"])
  np.testing.assert_allclose(again[row, first:], logits[row, first:],
                             atol=1e-6)
  assert not np.allclose(again[row, :first], logits[row, :first])


def test_a_gpt2_checkpoint_fine_tunes_on_local_files(tokenizer, tmp_path):
  """docs/text.md's recipe, with a tiny random GPT-2 in the layout of the
  released one (config.json, model.safetensors, vocab.json, merges.txt)."""
  import transformers
  checkpoint = tmp_path / "gpt2"
  transformers.GPT2LMHeadModel(transformers.GPT2Config(
      n_layer=1, n_head=2, n_embd=32, n_positions=64,
      vocab_size=tokenizer.vocab_size)).save_pretrained(checkpoint)
  tokenizer.tokenizer.model.save(str(checkpoint))
  workdir = str(tmp_path / "run")
  train.train(config_loader.load(f"{EXPERIMENT}:124M", {
      **_corpus(tmp_path), "input.store_dir": str(tmp_path / "stores"),
      "init_from.hf_dir": str(checkpoint),
      "input.tokenizer_file": str(checkpoint / "vocab.json"),
      "model.num_layers": 1, "model.num_heads": 2, "model.emb_dim": 32,
      "model.block_size": 64, "model.dtype": "float32", "input.seq_len": 32,
      "input.batch_size": 8, "input.eval_steps": 1, "total_steps": 2,
      "eval_every_steps": 2, "checkpoint_every_steps": 2,
      "optimizer.warmup_steps": 1, "optimizer.learning_rate": 1e-9,
      "optimizer.min_learning_rate": 0.0}), workdir)
  run = runs.load(workdir)
  loaded = gpt.load_hf(str(checkpoint), run.config.model)["params"]
  np.testing.assert_allclose(run.params["wte"]["embedding"],
                             loaded["wte"]["embedding"], atol=1e-6)


def test_tokenizer_command_trains_saves_and_reports(tmp_path, capsys):
  files = _corpus(tmp_path)
  args = ["--config", f"{EXPERIMENT}:cpu", "--config.input.vocab_size=300",
          f"--config.input.files.train={files['input.files.train']}"]
  tokenizer_cli.main(args + ["--out", str(tmp_path / "tok.json")])
  assert "bytes/token" in capsys.readouterr().out
  trained = bpe.BPE.from_file(str(tmp_path / "tok.json"))
  assert trained.vocab_size == 300
  assert trained.decode(trained.encode(DOCS[1])) == DOCS[1]
  with pytest.raises(SystemExit):
    tokenizer_cli.main(args + ["--out", str(tmp_path)])  # A directory.
  assert "is a directory" in capsys.readouterr().err
