"""Two towers (CLIP): parity with transformers' CLIPModel, the mesh, captions
from every source, the evaluators by their definitions, and a trained run
through every command and the API (the official openai client)."""
import base64
import io
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest
import tensorflow_datasets as tfds
from flax import linen as nn
from PIL import Image

from bigmodel_jax import (compress, config_loader, decoding, evaluate,
                          experiment, explain, export, runs, sample)
from bigmodel_jax.data import image_captions
from bigmodel_jax.errors import ConfigError, NotExportable, NotFound
from bigmodel_jax.evaluators import retrieval
from bigmodel_jax.models import bert, captioner, two_towers
from bigmodel_jax.serving import process
from bigmodel_jax.serving.ledger import Ledger
from conftest import SERVABLE, cli_result, model_server, run_steps

CLIP = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" /
           "clip_digits.py")


def _tiny_clip(**overrides):
  config = two_towers.model_config("tiny", **{
      "vocab_size": 40, "eos_id": 39, "embed_dim": 16, **overrides})
  config.image.update(emb_dim=32, num_layers=2, num_heads=2, mlp_dim=48)
  config.text.update(emb_dim=24, num_layers=2, num_heads=3, block_size=12)
  return config


def _random_variables(model, images, tokens):
  """Every parameter random (norm scales and biases too), so a parity
  test cannot pass on ones and zeros."""
  params = nn.unbox(model.init(jax.random.key(0), images, tokens))["params"]
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return {"params": jax.tree.unflatten(tree, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])}


def test_clip_exports_and_imports_with_transformers_parity(tmp_path):
  config = _tiny_clip()
  model = two_towers.make(config)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
  tokens = rng.integers(1, 39, (3, 10)).astype(np.int32)
  tokens[:, 6], tokens[:, 7:] = 39, 0  # The end token, then padding.
  tokens[2, 3] = 39  # Pooled at the first end token.
  variables = _random_variables(model, images, tokens)
  hf = two_towers.export_hf(variables, config, None)
  folder = str(tmp_path / "clip")
  export._write_json(f"{folder}/config.json", hf.config)
  export._write_tensors(f"{folder}/model.safetensors", hf.tensors)
  ours = hf.outputs(model.apply(variables, images, tokens))
  theirs = hf.reference(folder, {"images": images, "texts": tokens})
  for name in ("image_embeds", "text_embeds"):
    np.testing.assert_allclose(ours[name], theirs[name], atol=1e-5)
  back = two_towers.load_hf(folder, config)
  jax.tree.map(np.testing.assert_array_equal, back,
               jax.tree.map(np.asarray, variables))
  # Each tower alone embeds as the pair does.
  np.testing.assert_allclose(model.apply(variables, tokens, embed=True),
                             ours["text_embeds"], atol=1e-6)
  other = _tiny_clip()
  other.text = bert.model_config("tiny", head="none", num_layers=1)
  other.text_pool = "first"
  with pytest.raises(NotExportable, match="no CLIPModel equivalent"):
    two_towers.export_hf({"params": {}}, other, None)
  with pytest.raises(ConfigError, match="differs"):
    two_towers.load_hf(folder, _tiny_clip(embed_dim=8))


def test_clip_variants_have_the_published_parameter_counts():
  # transformers' CLIPModel counts, less the class token's position row
  # that ours folds into the class token.
  published = {"clip-B/32": 151_277_313 - 768,
               "clip-B/16": 149_620_737 - 768,
               "clip-L/14": 427_616_513 - 1024}
  for variant, count in published.items():
    model = two_towers.make(two_towers.model_config(
        variant, vocab_size=49408, eos_id=49407))
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 224, 224, 3),
                                                 jnp.float32),
                            jax.ShapeDtypeStruct((1, 77), jnp.int32))
    assert two_towers.num_params(shapes) == count, variant


def _config(name: str, **overrides):
  """The tiny servable run `name`'s config (conftest.SERVABLE)."""
  spec, tiny = SERVABLE[name]
  return config_loader.load(str(pathlib.Path(CLIP).parent / spec),
                            {**tiny, **overrides})


def _clip_config(**overrides):
  return _config("clip", **overrides)


@pytest.mark.parametrize("name", ["clip", "caption"])
def test_every_mesh_gives_the_single_device_losses(name, tmp_path):
  """The contrastive negatives are the whole global batch, and the
  captioner's cross-attention sees its own image, however it is sharded."""
  vocab = str(tmp_path / "tokenizer.json")  # One vocabulary for both runs
  config = _config(name)                    # (WordPiece training's ids vary).
  image_captions.Input(config.input, seed=0, process_index=0,
                       process_count=1).tokenizer.save(vocab)
  single, _, _ = run_steps(_config(name, **{"input.vocab_file": vocab}),
                           jax.devices()[:1])
  sharded, _, _ = run_steps(_config(name, **{
      "input.vocab_file": vocab, "mesh.data": 2, "mesh.fsdp": 2,
      "mesh.tensor": 2}))
  np.testing.assert_allclose(sharded, single, rtol=2e-5)


def test_accumulation_and_dp_sgd_are_refused_in_one_line():
  with pytest.raises(ConfigError, match="negatives are the whole batch"):
    experiment.build(_clip_config(grad_accum_steps=2), jax.devices()[:1])
  with pytest.raises(ConfigError, match="couples the examples"):
    experiment.build(_clip_config(**{"dp.noise_multiplier": 1.0}),
                     jax.devices()[:1])


def _input(**fields):
  config = image_captions.input_config(
      fields.pop("source"), batch_size=4, image_size=8, channels=1,
      seq_len=24, train_pp="resize(8)|value_range(-1, 1)",
      eval_pp="resize(8)|value_range(-1, 1)", vocab_size=200, **fields)
  return image_captions.Input(config, seed=0, process_index=0,
                              process_count=1)


def _words(data, texts) -> list[str]:
  return [data.tokenizer.decode(row) for row in texts]


def test_digit_captions_hold_templates_out_of_training():
  data = _input(source="digits", held_out_templates=3)
  train, held_out = image_captions.digit_templates(3)
  spec = image_captions.batch_spec(data.config)
  batch = data.train_batch(0)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (s.shape, s.dtype) for k, s in spec.items()}
  def wording(row, label, templates) -> bool:  # Compared as token ids:
    name = image_captions.NAMES[label]        # held-out words may be [UNK].
    return any(np.array_equal(row, ids) for ids in data.encode(
        [t.format(name) for t in templates]))
  for step in range(3):
    batch = data.train_batch(step)
    for row, label in zip(batch["texts"], batch["targets"]):
      assert wording(row, label, train), data.tokenizer.decode(row)
  test = next(data.eval_batches("test"))
  for row, label in zip(test["texts"], test["targets"]):
    assert wording(row, label, held_out), data.tokenizer.decode(row)
    assert not wording(row, label, train)
  assert data.model_fields() == {
      "vocab_size": data.tokenizer.vocab_size, "eos_id": data.tokenizer.sep_id,
      "pad_id": data.tokenizer.pad_id, "image_size": 8, "channels": 1}
  with pytest.raises(ConfigError, match="hold out 0 to 8"):
    image_captions.digit_templates(9)


class ToyCaptions(tfds.core.GeneratorBasedBuilder):
  """An image-caption dataset's features (like coco_captions), mocked."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.
                                 FeaturesDict({
                                     "image": tfds.features.Image(
                                         shape=(None, None, 1)),
                                     "captions": tfds.features.Sequence({
                                         "text": tfds.features.Text()})}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(),
            "test": self._generate_examples()}

  def _generate_examples(self):
    yield from ()


def test_captions_from_tfds_by_name_and_from_a_folder(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    data = _input(source="tfds", dataset="toy_captions")
    batch = data.train_batch(0)
    assert batch["images"].shape == (4, 8, 8, 1)
    assert set(batch["targets"]) == {-1} and data.class_names is None
    assert sum(1 for _ in data.eval_batches("test")) == 2
  for split in ("train", "test"):
    folder = tmp_path / "pairs" / split
    folder.mkdir(parents=True)
    rows = []
    for i in range(5):
      Image.fromarray(np.full((10, 12), 40 * i, np.uint8)).save(
          folder / f"{i}.png")
      rows.append({"image": f"{i}.png", "caption": f"a grey square {i}"}
                  if i % 2 else {"image": f"{i}.png",
                                 "captions": [f"square {i}", "grey"]})
    (folder / "captions.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows))
  data = _input(source="folder", path=str(tmp_path / "pairs"))
  batch = next(data.eval_batches("test"))
  assert _words(data, batch["texts"])[:2] == ["square 0", "a grey square 1"]
  assert batch["images"].shape == (4, 8, 8, 1)
  with pytest.raises(NotFound, match="captions.jsonl"):
    _input(source="folder", path=str(tmp_path))


def test_retrieval_recalls_follow_their_definition():
  similarity = np.array([[0.9, 0.1, 0.5],    # own pair first
                         [0.8, 0.2, 0.5],    # own pair third
                         [0.4, 0.7, 0.4]])   # second, tied with another
  assert retrieval.recalls(similarity, (1, 2)) == {1: 1 / 3, 2: 2 / 3}
  labels = np.array([0, 1, 0])
  assert retrieval.class_recalls(similarity, labels, (1, 2)) == {
      1: 1 / 3, 2: 2 / 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny clip_digits run trained long enough to beat chance."""
  from bigmodel_jax import train
  workdir = str(tmp_path_factory.mktemp("clip_trained"))
  train.train(_clip_config(**{"total_steps": 600, "eval_every_steps": 600,
                              "checkpoint_every_steps": 600,
                              "log_every_steps": 300}), workdir,
              jax.devices()[:1])
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    return workdir, [json.loads(line) for line in f]


def test_a_trained_run_classifies_zero_shot_and_retrieves(trained):
  _, records = trained
  last = {k: v for r in records if r.get("step") == 600 for k, v in r.items()}
  # Chance: 10% for classes, 10% / 50% for class recall@1 / @5.
  assert last["zero_shot/accuracy"] > 0.3
  assert last["retrieval/image_to_text_class@1"] > 0.3
  assert last["linear_probe/accuracy"] > 0.5
  assert 0 <= last["retrieval/text_to_image@1"] <= 1


# run -> command -> "ok", or a phrase of its one-line refusal.
COMMANDS = {
    "clip": dict(sample="cannot generate", export_hf="ok",
                 explain="cannot logit lens"),
    "caption": dict(sample="does not continue text",
                    export_hf="has no Hugging Face export",
                    explain="cannot logit lens")}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_works_or_names_what_is_missing(name, servable,
                                                      tmp_path, capsys):
  workdir, want = servable(name), COMMANDS[name]
  def check(main, argv, expected):
    result = cli_result(main, argv, capsys)
    assert result == "ok" if expected == "ok" else expected in result, result
  check(evaluate.main, ["--workdir", workdir, "--split", "test"], "ok")
  check(sample.main, ["--workdir", workdir, "--max_new_tokens", "2"],
        want["sample"])
  for fmt in ("hf", "jax"):
    check(export.main, ["--workdir", workdir, "--format", fmt, "--examples",
                        "2", "--out", str(tmp_path / fmt)],
          want.get(f"export_{fmt}", "ok"))
  signature = json.loads((tmp_path / "jax" / "signature.json").read_text())
  assert len(signature["inputs"]) == 2  # Images and texts.
  check(explain.main, ["--workdir", workdir, "--out", str(tmp_path / "x"),
                       "--input", "a"], want["explain"])
  quantized = str(tmp_path / "int8")
  check(compress.main, ["--workdir", workdir, "--out", quantized, "--method",
                        "int8"], "ok")
  assert runs.load(quantized).capabilities == runs.load(workdir).capabilities


def _png(pixels: np.ndarray) -> str:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.slow
def test_embeddings_of_texts_and_images_share_one_space(servable,
                                                        tmp_path):
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = [_png((digits.images[i] * 255 / 16).astype(np.uint8))
            for i in range(3)]
  with model_server(servable, tmp_path, ["clip"], []) as server:
    key = process.create_key(server.db, "tests")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key)
    texts = client.embeddings.create(model="clip", input=["a handwritten "
                                                         "seven.", "nine"])
    pictures = client.embeddings.create(model="clip", input=[],
                                        extra_body={"images": images,
                                                    "input": None})
    vectors = np.array([d.embedding for d in texts.data + pictures.data])
    assert vectors.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    assert pictures.usage.model_dump()["images"] == 3
    assert [r["unit"] for r in Ledger(server.db).rows()][-1] == "images"
    with pytest.raises(openai.BadRequestError, match="not both"):
      client.embeddings.create(model="clip", input="x",
                               extra_body={"images": images})
    models = {m.id: m.model_dump() for m in client.models.list()}
    assert models["clip"]["input"] == "text+image"


# Captioning.
CAPTION = CLIP.replace("clip_digits", "caption_digits")


def _tiny_captioner():
  config = captioner.model_config("tiny", vocab_size=30, pad_id=0,
                                  image_size=8, channels=1)
  config.image.update(emb_dim=32, num_layers=1, num_heads=2, mlp_dim=48)
  config.text.update(emb_dim=24, num_layers=2, num_heads=2, block_size=12)
  return config


def test_cached_captioning_equals_the_full_forward():
  """Prefill with the image, then one token a call: the cache holds the
  image's encoding, and the logits are the uncached model's."""
  model = captioner.make(_tiny_captioner())
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  tokens = rng.integers(1, 30, (2, 7)).astype(np.int32)
  variables = _random_variables(model, tokens, images)
  full = model.apply(variables, tokens, images)
  logits, cache = model.apply(variables, tokens[:, :3], decode=True,
                              images=images, mutable=["cache"])
  steps = [logits]
  for t in range(3, 7):
    logits, cache = model.apply({**variables, **cache}, tokens[:, t:t + 1],
                                decode=True, mutable=["cache"])
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)
  # Greedy decoding through decoding.generate sees the same image.
  ids = decoding.generate(model, variables["params"], tokens[:, :2], 4,
                          jax.random.key(0), context=12, temperature=0.0,
                          inputs={"images": images})
  step = model.apply(variables, np.concatenate([tokens[:, :2], ids[:, :1]],
                                               1), images)
  np.testing.assert_array_equal(ids[:, 0], np.argmax(full[:, 1], -1))
  np.testing.assert_array_equal(ids[:, 1], np.argmax(step[:, 2], -1))


@pytest.fixture(scope="module")
def captions_trained(tmp_path_factory):
  """A tiny caption_digits run trained long enough to name digits."""
  from bigmodel_jax import train
  workdir = str(tmp_path_factory.mktemp("caption_trained"))
  overrides = {"input.batch_size": 64, "total_steps": 400,  # The recipe's
               "eval_every_steps": 400, "checkpoint_every_steps": 400,  # model.
               "log_every_steps": 400, "evals.captions.every_steps": 400}
  train.train(config_loader.load(CAPTION + ":cpu", overrides), workdir,
              jax.devices()[:1])
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    return workdir, [json.loads(line) for line in f]


def test_a_trained_captioner_names_the_digit(captions_trained, capsys,
                                             tmp_path):
  workdir, records = captions_trained
  last = {k: v for r in records if r.get("step") == 400 for k, v in r.items()}
  assert last["captions/class_accuracy"] > 0.25  # Chance: 10%.
  assert 0 < last["captions/bleu"] <= 100
  assert len(last["captions/captions"]) == 8
  from sklearn.datasets import load_digits
  picture = tmp_path / "seven.png"
  Image.fromarray((load_digits().images[7] * 255 / 16).astype(np.uint8)).save(
      picture)
  assert cli_result(sample.main, ["--workdir", workdir, "--image", str(picture),
                            "--temperature", "0", "--max_new_tokens", "10"],
              capsys) == "ok"
  assert "cannot generate" in cli_result(sample.main, ["--workdir", workdir],
                                        capsys)


@pytest.mark.slow
def test_a_captioner_answers_chat_with_an_image(servable, tmp_path):
  from sklearn.datasets import load_digits
  picture = _png((load_digits().images[3] * 255 / 16).astype(np.uint8))
  image = {"type": "image_url",
           "image_url": {"url": f"data:image/png;base64,{picture}"}}
  with model_server(servable, tmp_path, ["caption", "clip"], []) as server:
    key = process.create_key(server.db, "tests")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key)
    answer = client.chat.completions.create(
        model="caption", max_tokens=6, temperature=0, messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What digit is this?"}, image]}])
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.usage.prompt_tokens == 1 + 85  # [CLS] and the image.
    rows = Ledger(server.db).rows()
    assert rows[-1]["input_units"] == 86
    for messages, phrase in (
        ([{"role": "user", "content": "hello"}], "captions one image"),
        ([{"role": "user", "content": [image, image]}], "got 2")):
      with pytest.raises(openai.BadRequestError, match=phrase):
        client.chat.completions.create(model="caption", messages=messages)
    with pytest.raises(openai.BadRequestError, match="does not serve"):
      client.completions.create(model="caption", prompt="a")
    with pytest.raises(openai.BadRequestError, match="does not serve"):
      client.chat.completions.create(model="clip", messages=[
          {"role": "user", "content": [image]}])


def _clip_checkpoint(folder: pathlib.Path, texts: list[str]) -> None:
  """A CLIPModel directory as transformers writes one (random weights) with
  a byte-level BPE tokenizer of CLIP's special tokens."""
  import tokenizers
  import transformers
  bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
  bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
  bpe.decoder = tokenizers.decoders.ByteLevel()
  bpe.train_from_iterator(texts, tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  bpe.post_processor = tokenizers.processors.TemplateProcessing(
      single="<|startoftext|> $A <|endoftext|>", special_tokens=[
          (t, bpe.token_to_id(t)) for t in ("<|startoftext|>",
                                            "<|endoftext|>")])
  folder.mkdir()
  bpe.save(str(folder / "tokenizer.json"))
  config = transformers.CLIPConfig(
      projection_dim=16,
      text_config=dict(vocab_size=bpe.get_vocab_size(), hidden_size=32,
                       intermediate_size=128, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=32,
                       eos_token_id=bpe.token_to_id("<|endoftext|>")),
      vision_config=dict(hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2,
                         image_size=16, patch_size=4, num_channels=1))
  transformers.CLIPModel(config).save_pretrained(folder)


@pytest.mark.slow
def test_a_clip_checkpoint_directory_fine_tunes_and_goes_back(tmp_path,
                                                              capsys):
  train_templates, _ = image_captions.digit_templates(3)
  _clip_checkpoint(tmp_path / "clip", [
      t.format(n) for t in train_templates for n in image_captions.NAMES])
  from bigmodel_jax import train
  workdir = str(tmp_path / "run")
  config = _clip_config(**{
      "init_from.hf_dir": str(tmp_path / "clip"),
      "input.vocab_file": str(tmp_path / "clip" / "tokenizer.json"),
      "model.image.mlp_dim": 64, "model.text.block_size": 32,
      "total_steps": 3})
  train.train(config, workdir, jax.devices()[:1])
  assert cli_result(export.main, ["--workdir", workdir, "--format", "hf",
                            "--examples", "4", "--out",
                            str(tmp_path / "back")], capsys) == "ok"
  import transformers
  back = transformers.CLIPModel.from_pretrained(tmp_path / "back")
  assert back.config.text_config.eos_token_id == (
      runs.load(workdir).config.model.eos_id)
