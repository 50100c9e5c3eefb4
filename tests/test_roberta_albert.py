"""RoBERTa and ALBERT: parity with transformers on tiny random checkpoints,
their tokenizers (byte-level BPE, SentencePiece Unigram), sentence-order
pairs, sharding, planning, and an ALBERT directory fine-tuned and exported."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from bigmodel_jax import config_loader, export, plan, runs, train
from bigmodel_jax.data import mlm_text
from bigmodel_jax.dataio.wordpiece import WordPiece
from bigmodel_jax.hf import bert as bert_hf
from bigmodel_jax.models import bert
from conftest import sharded_and_single

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
CORPUS = os.path.join(os.environ["TFDS_DATA_DIR"], "..", "data",
                      "tinyshakespeare", "input.txt")
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=37, hidden_act="gelu",
            max_position_embeddings=40)
# transformers class -> (its config, ours: head, what it returns).
CHECKPOINTS = {
    "RobertaModel": (transformers.RobertaConfig(
        **TINY, type_vocab_size=1, layer_norm_eps=1e-5), "none"),
    "RobertaForMaskedLM": (transformers.RobertaConfig(
        **TINY, type_vocab_size=1), "mlm"),
    "RobertaForSequenceClassification": (transformers.RobertaConfig(
        **TINY, type_vocab_size=1, num_labels=3), "classifier"),
    "AlbertForPreTraining": (transformers.AlbertConfig(
        **TINY, embedding_size=16), "mlm"),
    "AlbertForSequenceClassification": (transformers.AlbertConfig(
        **TINY, embedding_size=16, num_hidden_groups=2, num_labels=3),
        "classifier"),
}


def _save_random(arch: str, directory) -> str:
  torch.manual_seed(0)
  config = CHECKPOINTS[arch][0]
  model = getattr(transformers, arch)(config).eval()
  with torch.no_grad():  # Random LayerNorms and biases too, not 1 and 0.
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(directory))
  return str(directory)


def _ids(pad_id: int) -> np.ndarray:
  ids = np.random.default_rng(0).integers(5, 99, (3, 11))
  ids[1, 7:], ids[2, 4:] = pad_id, pad_id
  return ids


@pytest.mark.parametrize("arch", sorted(CHECKPOINTS))
def test_tiny_random_checkpoints_equal_transformers_and_export_back(
    arch, tmp_path):
  directory = _save_random(arch, tmp_path)
  config_json, head = CHECKPOINTS[arch]
  config, params = bert.from_hf(
      directory, "tiny", head=head, dropout=0.0,
      nsp=arch.endswith("ForPreTraining") or None,
      num_classes=3 if head == "classifier" else None)
  model = bert.make(config)
  ids = _ids(config_json.pad_token_id)
  reference = getattr(transformers, arch).from_pretrained(directory).eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(
        ids != config_json.pad_token_id).long())
  ours = model.apply({"params": params}, ids)
  if head == "none":  # Padding positions included.
    pairs = [(ours, theirs.last_hidden_state)]
  elif arch.endswith("ForPreTraining"):
    pairs = [(ours["logits"], theirs.prediction_logits),
             (ours["nsp"], theirs.sop_logits)]
  else:
    pairs = [(ours, theirs.logits)]
  for a, b in pairs:
    np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=1e-4)
  # Export writes back every tensor the checkpoint's model reads.
  from safetensors.numpy import load_file
  written = {k.split(".", 1)[1] if k.startswith(("roberta.", "albert."))
             else k: v for k, v in load_file(
                 os.path.join(directory, "model.safetensors")).items()}
  for name, value in bert_hf.to_tensors(params, model.config).items():
    np.testing.assert_allclose(value, written[name], atol=1e-6,
                               err_msg=name)


def test_roberta_positions_follow_padding_as_transformers_counts_them():
  directory_free = bert.model_config("tiny", vocab_size=50, **bert.ROBERTA)
  model = bert.make(directory_free)
  left_padded = np.array([[1, 1, 0, 7, 8, 2]])  # <pad> <pad> <s> ... </s>
  right_padded = np.array([[0, 7, 8, 2, 1, 1]])
  params = nn.unbox(model.init(jax.random.key(0), right_padded))["params"]
  left = model.apply({"params": params}, left_padded)
  right = model.apply({"params": params}, right_padded)
  # The same real tokens at the same positions 2..5, wherever they sit.
  np.testing.assert_allclose(left[0, 2:], right[0, :4], atol=1e-5)


@pytest.fixture(scope="module")
def shakespeare_lines():
  with open(CORPUS) as f:
    return [line for line in f.read().splitlines() if line.strip()]


def test_byte_level_bpe_has_robertas_special_ids_and_encodes_any_text(
    shakespeare_lines, tmp_path):
  tok = WordPiece.train(shakespeare_lines, 400, kind="bpe")
  assert [tok.special_id(r) for r in ("start", "pad", "end", "unknown",
                                      "mask")] == [0, 1, 2, 3, 4]
  text = "Ünïcödé & emoji 🙂 — never seen"
  row = tok.encode_batch([text], 64)[0]
  assert row[0] == 0 and row[row != 1][-1] == 2
  assert tok.decode(row[1:][row[1:] != 2]) == text  # Byte-level: exact.
  tok.save(str(tmp_path / "tokenizer.json"))
  hf = transformers.PreTrainedTokenizerFast(
      tokenizer_file=str(tmp_path / "tokenizer.json"))
  assert hf(text)["input_ids"] == row[row != 1].tolist()


def test_unigram_has_alberts_special_ids_and_marks_word_starts(
    shakespeare_lines):
  tok = WordPiece.train(shakespeare_lines, 600, kind="unigram")
  assert [tok.special_id(r) for r in ("pad", "unknown", "start", "end",
                                      "mask")] == [0, 1, 2, 3, 4]
  tokens = tok.tokenizer.encode("Hear me, Speak!").tokens
  assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
  assert tokens[1].startswith("\u2581") and "".join(tokens[1:-1]).replace(
      "\u2581", " ").strip() == "hear me, speak!"
  assert tok.decode(tok.encode_batch(["Hear me, Speak!"], 16)[0]).replace(
      "[CLS]", "").replace("[SEP]", "").strip() == "hear me, speak!"


def test_sentence_order_pairs_swap_the_halves_of_one_run():
  lines = [np.arange(10 * i + 5, 10 * i + 9) for i in range(39)]  # 4 tokens.
  halves = mlm_text.split_pairs(lines, 16)
  pairs = mlm_text.pair_rows(halves, np.arange(13), np.random.default_rng(0),
                             16, 2, 3, 0, kind="sop")
  assert 0.2 < pairs["nsp_targets"].mean() < 0.8
  for i, (row, swapped) in enumerate(zip(pairs["rows"],
                                         pairs["nsp_targets"])):
    seps = np.flatnonzero(row == 3)
    first, second = row[1:seps[0]].tolist(), row[seps[0] + 1:seps[1]].tolist()
    a, b = halves[i]  # Both halves are the row's own: only order tells.
    assert (first, second) == ((b, a) if swapped else (a, b))


@pytest.mark.parametrize("settings", [
    {**bert.ROBERTA, "max_positions": 18}, {**bert.ALBERT, "embed_dim": 16}],
                         ids=["roberta", "albert"])
def test_sharded_encoder_equals_single_device(settings):
  model = bert.make(bert.model_config(
      "tiny", vocab_size=64, emb_dim=32, mlp_dim=64, head="mlm", nsp=True,
      dropout=0.0, **settings))
  ids = _ids(settings.get("pad_id", 0))[:, :8] % 64
  ids = np.concatenate([ids, ids[:1]])  # A batch of 4 over data x fsdp.
  sharded, single = sharded_and_single(model, ids)
  for key in ("logits", "nsp"):
    np.testing.assert_allclose(sharded[key], single[key], atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant, vocab, published", [
    ("roberta-large", 50265, 355_359_744), ("albert-xxlarge", 30000,
                                            222_595_584)])
def test_the_planner_plans_the_largest_variants(variant, vocab, published):
  config = config_loader.load(
      os.path.join(EXPERIMENTS, "bert_finetune.py:full"),
      {"init_from.hf_dir": None, "input.batch_size": 8})
  config.model = bert.model_config(variant, vocab_size=vocab,
                                   head="classifier", num_classes=2)
  result = plan.plan(config)
  width = config.model.emb_dim  # Published: transformers' *Model, pooler
  assert result["parameters"] == published + 2 * width + 2  # included.
  assert result["temp_bytes"] > 0


def test_an_albert_directory_fine_tunes_and_exports(shakespeare_lines,
                                                    tmp_path):
  """An ALBERT directory as the Hub ships it (config.json,
  model.safetensors, a SentencePiece tokenizer.json) initialises a
  rt-polarity classifier, which exports as AlbertForSequenceClassification."""
  hub = tmp_path / "albert"
  _save_random("AlbertForPreTraining", hub)
  tok = WordPiece.train(shakespeare_lines, 99, kind="unigram")
  transformers.AlbertTokenizerFast(tokenizer_object=tok.tokenizer).save_pretrained(
      str(hub))
  fields = bert_hf.config_fields(str(hub))
  config = config_loader.load(
      os.path.join(EXPERIMENTS, "bert_finetune.py:full"),
      {"init_from.hf_dir": str(hub), "input.vocab_file": str(
          hub / "tokenizer.json"), "input.seq_len": 16, "input.batch_size": 8,
       "total_steps": 2, "eval_every_steps": 2, "checkpoint_every_steps": 2,
       "optimizer.warmup_steps": 1})
  config.model = bert.model_config("tiny", head="classifier", pool="cls",
                                   **fields)
  workdir = str(tmp_path / "run")
  train.train(config, workdir)
  assert runs.load(workdir).step == 2
  export.main(["--workdir", workdir, "--out", str(tmp_path / "hf")])
  exported = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert exported["architectures"] == ["AlbertForSequenceClassification"]
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  row = tok.encode_batch(["To be, or not"], 16)[0]
  assert hf_tok("To be, or not")["input_ids"] == row[row != 0].tolist()
