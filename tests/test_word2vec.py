"""word2vec: the vocabulary and subsampling are gensim's, rows stay inside
their window and sentence, negatives follow unigram^0.75, the loss is
negative sampling's, training finds a planted neighbour structure, every
mesh equals one device, the word2vec export is read by gensim, and
/v1/embeddings serves the word vectors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import config_loader, runs, word_scores
from bigmodel_jax.data import word_contexts
from bigmodel_jax.serving import process
from bigmodel_jax.tasks import word2vec as task
from conftest import (OK, SERVABLE, _EXPERIMENTS, check_every_command,
                      expect_cli, model_server, run_steps)


def _config(**overrides):
  spec, tiny = SERVABLE["word2vec"]
  return config_loader.load(str(_EXPERIMENTS / spec), {**tiny, **overrides})


@pytest.fixture(scope="module")
def shakespeare():
  config = _config()
  return config, word_contexts.Input(config.input, seed=0, process_index=0,
                                     process_count=1)


def test_vocabulary_and_subsampling_are_gensims(shakespeare):
  from gensim.models import Word2Vec
  config, data = shakespeare
  reference = Word2Vec(min_count=config.input.min_count,
                       sample=config.input.sample)
  reference.build_vocab(word_contexts.sentences(config.input, "train"))
  ours = data.tokenizer
  ids = ours.word_ids()
  assert sorted(reference.wv.index_to_key) == sorted(ours.words[i]
                                                     for i in ids)
  for i in ids[::97]:
    word = ours.words[i]
    assert reference.wv.get_vecattr(word, "count") == ours.counts[i]
    np.testing.assert_allclose(
        reference.wv.get_vecattr(word, "sample_int") / 2**32, data.keep[i],
        atol=1e-8)


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_rows_stay_in_their_window_and_sentence(shakespeare, mode):
  config, _ = shakespeare
  config.input.mode = mode
  data = word_contexts.Input(config.input, seed=0, process_index=0,
                             process_count=1)
  batch = data.train_batch(7)
  np.testing.assert_array_equal(batch["targets"],
                                data.train_batch(7)["targets"])
  assert batch["inputs"].shape == (64, 1 if mode == "skipgram" else 10)
  tokens, corpus = data.train.tokens, data.train
  centre_word = batch["inputs"][:, 0] if mode == "skipgram" else (
      batch["targets"][:, 0])
  for row in range(64):  # Some occurrence of the pair fits the window.
    centres = np.flatnonzero(tokens == centre_word[row])
    context = ([batch["targets"][row, 0]] if mode == "skipgram" else
               [w for w in batch["inputs"][row] if w])
    assert any(all(any(tokens[p] == w for p in range(
        max(corpus.start[c], c - 5), min(corpus.end[c], c + 6)) if p != c)
                   for w in context) for c in centres), row
  # A negative equal to the true word does not count.
  clash = batch["targets"][:, 1:] == batch["targets"][:, :1]
  assert np.all(batch["weights"][:, 1:][clash] == 0)


def test_negatives_follow_the_unigram_distribution_to_three_quarters(
    shakespeare):
  _, data = shakespeare
  drawn = np.concatenate([data.train_batch(s)["targets"][:, 1:].ravel()
                          for s in range(300)])
  expected = data.tokenizer.counts ** 0.75
  expected = expected / expected.sum()
  seen = np.bincount(drawn, minlength=len(expected)) / len(drawn)
  top = np.argsort(-expected)[:20]
  np.testing.assert_allclose(seen[top], expected[top], rtol=0.1)
  assert seen[:2].sum() == 0  # Never padding or the unknown word.


def test_the_loss_is_negative_sampling():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 6)).astype(np.float32)
  weights = rng.uniform(size=(4, 6)).astype(np.float32)
  batch = {"weights": jnp.asarray(weights)}
  sums = task.Task(None).sums(jnp.asarray(logits), batch)
  log_sigmoid = lambda x: -np.log1p(np.exp(-x))  # noqa: E731
  expected = -(weights[:, 0] * log_sigmoid(logits[:, 0]) +
               (weights[:, 1:] * log_sigmoid(-logits[:, 1:])).sum(1)).sum()
  np.testing.assert_allclose(sums["loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(sums["count"], weights[:, 0].sum(), rtol=1e-6)


def test_training_finds_a_planted_neighbour_structure(tmp_path):
  """Four groups of six words, each sentence drawn from one group: every
  word's nearest neighbour is one of its group."""
  rng = np.random.default_rng(0)
  groups = [[g + s for s in ("ka", "lo", "mi", "nu", "pe", "ro")]
            for g in ("b", "d", "f", "h")]
  text = "\n\n".join(" ".join(rng.choice(groups[rng.integers(4)], 12))
                     for _ in range(400))
  (tmp_path / "corpus.txt").write_text(text)
  corpus = str(tmp_path / "corpus.txt")
  config = _config(**{"input.files.train": corpus,
                      "input.files.validation": corpus,
                      "input.min_count": 1, "input.sample": 0.0,
                      "input.window": 2, "input.batch_size": 128,
                      "optimizer.learning_rate": 3.0,
                      "optimizer.warmup_steps": 1, "total_steps": 150})
  losses, exp, state = run_steps(config, jax.devices()[:1], steps=150)
  assert np.mean(losses[-10:]) < losses[0] - 0.5, losses
  ids = exp.data.tokenizer.word_ids()
  words = [exp.data.tokenizer.words[i] for i in ids]
  vectors = word_scores.WordVectors(words, np.asarray(exp.model.apply(
      {"params": state.params}, ids, method="vectors")))
  group_of = {w: g for g, group in enumerate(groups) for w in group}
  for word in words:
    (nearest, _), = vectors.neighbours(word, 1)
    assert group_of[nearest] == group_of[word], (word, nearest)


def test_every_mesh_gives_the_single_device_losses():
  """Vocabulary rows split over "tensor" (where they divide), vector
  width over "fsdp", batch rows over "data" and "fsdp"."""
  single, _, _ = run_steps(_config(), jax.devices()[:1])
  sharded, _, _ = run_steps(_config(**{
      "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}))
  np.testing.assert_allclose(sharded, single, rtol=2e-5)


@pytest.mark.slow
def test_a_trained_run_goes_through_every_command(servable, tmp_path,
                                                  capsys):
  from bigmodel_jax import export
  from gensim.models import KeyedVectors
  workdir = servable("word2vec")
  check_every_command(workdir, tmp_path, capsys, split="validation",
                      prompt="ROMEO", sample="cannot generate",
                      export_hf="has no Hugging Face export",
                      explain="cannot logit lens")
  out = tmp_path / "vectors"
  expect_cli(export.main, ["--workdir", workdir, "--format", "word2vec",
                           "--out", str(out)], OK, capsys)
  run = runs.load(workdir)
  ids = run.tokenizer.word_ids()
  ours = np.asarray(run.model.apply(run.variables, ids, method="vectors"))
  for name in ("vectors.txt", "vectors.bin"):
    theirs = KeyedVectors.load_word2vec_format(str(out / name),
                                               binary=name.endswith(".bin"))
    assert theirs.index_to_key == [run.tokenizer.words[i] for i in ids]
    np.testing.assert_allclose(theirs.vectors, ours, rtol=1e-6)
  expect_cli(export.main, ["--workdir", servable("lstm"), "--format",
                           "word2vec", "--out", str(tmp_path / "no")],
             "cannot word vectors", capsys)


@pytest.mark.slow
def test_embeddings_of_words_are_their_unit_vectors(servable, tmp_path):
  import openai
  run = runs.load(servable("word2vec"))
  vectors = np.asarray(run.model.apply(
      run.variables, run.tokenizer.encode("king queen"), method="vectors"))
  with model_server(servable, tmp_path, ["word2vec"], []) as server:
    client = openai.OpenAI(base_url=server.url + "/v1",
                           api_key=process.create_key(server.db, "tests"))
    answer = client.embeddings.create(
        model="word2vec", input=["King", "king QUEEN!", "zyzzyva"])
  got = [np.asarray(d.embedding) for d in answer.data]
  unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
  np.testing.assert_allclose(got[0], unit(vectors[0]), atol=1e-6)
  np.testing.assert_allclose(got[1], unit(vectors.mean(0)), atol=1e-6)
  np.testing.assert_array_equal(got[2], 0)  # No word of the vocabulary.
  assert answer.usage.prompt_tokens == 4  # Words read, known or not.
