"""Every family x task in the tree, through every action, on tiny runs saved
by the code before the core's second pass (tests/data/legacy_runs): each
cell works, or is refused in one line naming the capability it lacks; the
runs' outputs are what that code gave to float32 rounding (XLA's CPU
kernels differ in the last bits between CPU models) and their greedy
samples are the same tokens."""
import io
import json
import pathlib
import shutil
import threading

import jax
import numpy as np
import pytest
from PIL import Image

from bigmodel_jax import (compress, config_loader, decoding, evaluate,
                          explain, export, runs, sample, train)
from bigmodel_jax.errors import UserError
from bigmodel_jax.serving import generation, models, settings
from conftest import OK, cli_result

pytestmark = pytest.mark.slow
LEGACY = pathlib.Path(__file__).resolve().parent / "data" / "legacy_runs"
TEXT = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" /
        "tinyshakespeare" / "input.txt")
# run -> action -> OK, or a phrase of the one-line refusal.
EXPECTED = {
    "gpt": dict(sample=OK, text=OK, export_hf=OK, export_jax=OK,
                compress=OK, train=OK, serve=["completions"], explain=OK),
    "gpt_distill": dict(sample=OK, text=OK, export_hf=OK, export_jax=OK,
                        compress=OK, train="is not a training run",
                        serve=["completions"], explain=OK),
    "bert": dict(sample="cannot generate", text="cannot score text",
                 export_hf=OK, export_jax=OK, compress=OK, train=OK,
                 serve=["embeddings", "classify"], explain=OK),
    "bert_mlm": dict(sample="cannot generate", text="cannot score text",
                     export_hf=OK, export_jax=OK, compress=OK, train=OK,
                     serve=["embeddings"], explain="cannot logit lens"),
    "vit": dict(sample="cannot generate", text="cannot score text",
                export_hf="has no ViTForImageClassification equivalent",
                export_jax=OK, compress=OK, train=OK,
                serve=["classify"], explain=OK),
    "resnet": dict(sample="cannot generate", text="cannot score text",
                   export_hf="no ResNetForImageClassification equivalent",
                   export_jax=OK, compress=OK, train=OK,
                   serve=["classify"], explain=OK),
    "gan": dict(sample="cannot generate", text="cannot score text",
                export_hf="has no Hugging Face export", export_jax=OK,
                compress=OK, train=OK, serve=["images"],
                explain="cannot logit lens"),
}


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
  """name -> a copy of the saved run (nothing writes into the tree)."""
  root = tmp_path_factory.mktemp("legacy")
  return {name: str(shutil.copytree(LEGACY / name, root / name))
          for name in EXPECTED}


def _check(result: str, expected: str) -> None:
  if expected == OK:
    assert result == OK, result
  else:
    assert expected in result, result


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_saved_runs_load_unchanged(legacy, name):
  run = runs.load(legacy[name])
  expected = np.load(LEGACY / name / "expected.npz")
  batch = {k[len("batch/"):]: expected[k] for k in expected.files
           if k.startswith("batch/")}
  out = export.run_outputs(run, batch)
  out = out if isinstance(out, dict) else {"outputs": out}
  assert sorted(out) == sorted(k[len("out/"):] for k in expected.files
                               if k.startswith("out/"))
  for key, value in out.items():
    np.testing.assert_allclose(value, expected[f"out/{key}"], rtol=1e-5,
                               atol=1e-7)
  if "sample" in expected.files:
    ids = np.asarray([run.tokenizer.encode("ROMEO:")])
    np.testing.assert_array_equal(decoding.generate(
        run.model, run.params, ids, 8, jax.random.key(0),
        context=run.parts["decode"], temperature=0.0), expected["sample"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_command_works_or_names_what_is_missing(legacy, name, tmp_path,
                                                      capsys):
  workdir, want = legacy[name], EXPECTED[name]
  split = runs.load(workdir).config.input.eval_split
  _check(cli_result(evaluate.main, ["--workdir", workdir, "--split", split],
              capsys), OK)
  _check(cli_result(evaluate.main, ["--workdir", workdir, "--text", str(TEXT),
                              "--tail", "0.002"], capsys), want["text"])
  _check(cli_result(sample.main, ["--workdir", workdir, "--prompt", "ROMEO:",
                            "--max_new_tokens", "4"], capsys), want["sample"])
  for fmt in ("hf", "jax"):
    _check(cli_result(export.main, ["--workdir", workdir, "--format", fmt,
                              "--examples", "2", "--out",
                              str(tmp_path / fmt)], capsys),
           want[f"export_{fmt}"])
  signature = json.loads((tmp_path / "jax" / "signature.json").read_text())
  # The model call its task declares: the GAN's takes images, latents
  # and labels.
  assert len(signature["inputs"]) == (3 if name == "gan" else 1)
  classifies = "classify" in runs.load(workdir).parts
  _check(cli_result(explain.main, ["--workdir", workdir, "--out",
                             str(tmp_path / "explained"), "--steps", "4"] +
              (["--split", split, "--examples", "2"] if classifies
               else ["--input", "ROMEO:"]), capsys), want["explain"])
  quantized = str(tmp_path / "int8")
  _check(cli_result(compress.main, ["--workdir", workdir, "--out", quantized,
                              "--method", "int8"], capsys), want["compress"])
  runs.load(quantized)  # The compressed run loads like any run.


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_saved_runs_resume_training(legacy, name, tmp_path):
  workdir = str(shutil.copytree(legacy[name], tmp_path / name))
  config = config_loader.load_json(str(pathlib.Path(workdir) /
                                       "config.json"))
  config.total_steps = 3
  try:
    last = train.train(config, workdir, jax.devices()[:1])
  except UserError as e:
    _check(f"error: {e}", EXPECTED[name]["train"])
    return
  _check(OK, EXPECTED[name]["train"])
  assert runs.load(workdir).step == 3 and last


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_serving_route_works_or_is_refused(legacy, name):
  config = settings.defaults()
  config.update(dict(slots=2, warm_up=False, encoder_window_ms=0.0))
  want = EXPECTED[name]["serve"]
  try:
    served = models.load(name, legacy[name], config)
  except UserError as e:
    assert isinstance(want, str) and want in str(e), e
    assert "\n" not in str(e)
    return
  assert served.endpoints == want
  if served.generator:
    ended = threading.Event()
    served.generator.submit(generation.Request(
        served.prompt_ids("ROMEO:"), 3,
        lambda ids, end: end is not None and ended.set()))
    assert ended.wait(60)
    served.generator.close()
  text = ["a fine film", "dull"]
  if served.embedder:
    vectors = [served.embedder.submit(t).result(60)[0] for t in text]
    np.testing.assert_allclose([np.linalg.norm(v) for v in vectors], 1,
                               rtol=1e-5)
  if served.image_generator:
    png, units = served.image_generator.submit(
        served.image_requests("", 1, None, 0)[0]).result(60)
    assert Image.open(io.BytesIO(png)).size == (8, 8) and units == 1
  if served.classifier:
    item = (served.image_input(_png(legacy[name])) if served.image_input
            else text[0])
    probabilities, _ = served.classifier.submit(item).result(60)
    assert len(probabilities) == len(served.class_names)
    assert abs(float(np.sum(probabilities)) - 1) < 1e-4


def _png(workdir: str) -> bytes:
  """A grey PNG image of the run's own size."""
  with open(pathlib.Path(workdir) / "config.json") as f:
    size = json.load(f)["input"]["image_size"]
  buffer = io.BytesIO()
  Image.fromarray(np.full((size, size), 128, np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()
