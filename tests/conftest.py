"""Tests run on 8 forced CPU devices; TFDS reads the prepared data that ships
and the data home (raw files, rt-polarity) is ../shared/data: no download."""
import atexit
import contextlib
import functools
import glob
import http.server
import os
import pathlib
import pwd
import shutil
import subprocess
import tempfile
import threading
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ["JAX_PLATFORMS"] = "cpu"
_SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
os.environ.setdefault("TFDS_DATA_DIR", str(_SHARED / "tensorflow_datasets"))
os.environ.setdefault("BIGMODEL_JAX_DATA", str(_SHARED / "data"))
# One compilation cache for the session and the processes its tests start:
# the many identical small programs compile once (the suite takes a quarter
# less time). It starts empty, so nothing from another run is read.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="bigmodel_jax_compile_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

import pytest  # noqa: E402  (after XLA_FLAGS, before anything imports jax)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import sqlalchemy  # noqa: E402
from flax import linen as nn  # noqa: E402

from bigmodel_jax import config_loader, experiment  # noqa: E402
from bigmodel_jax.serving import process  # noqa: E402
from bigmodel_jax.serving.generation import Request  # noqa: E402

EXPERIMENT = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" /
                 "gpt_shakespeare_char.py")

# A GPT small enough to compile and train in seconds on CPU.
TINY = {
    "model.num_layers": 2, "model.num_heads": 2, "model.emb_dim": 32,
    "input.seq_len": 16, "input.batch_size": 8, "input.eval_steps": 2,
    "optimizer.warmup_steps": 2, "total_steps": 6, "log_every_steps": 1,
    "eval_every_steps": 3, "checkpoint_every_steps": 2,
}


# A tiny BERT classifier of planted_csv's texts, from bert_finetune.py.
PLANTED_BERT = {
    "init_from.hf_dir": None, "input.vocab_file": None,
    "input.vocab_size": 120, "input.seq_len": 12, "input.batch_size": 32,
    "model.num_layers": 2, "model.emb_dim": 32, "model.num_heads": 2,
    "model.mlp_dim": 64, "model.dropout": 0.0, "model.max_positions": 16,
    "total_steps": 120, "log_every_steps": 60, "eval_every_steps": 120,
    "checkpoint_every_steps": 120, "optimizer.learning_rate": 2e-3,
    "optimizer.warmup_steps": 10}


def planted_csv(path, rows: int = 900) -> list[str]:
  """A text,label CSV where only the token "zzgood" or "zzbad" (anywhere in
  7 random filler words; neither: "none") decides the label; the labels."""
  rng = np.random.default_rng(0)
  filler = [f"w{i}" for i in range(40)]
  lines, labels = ["text,label"], []
  for i in range(rows):
    words = list(rng.choice(filler, 7))
    label, planted = [("pos", "zzgood"), ("neg", "zzbad"), ("none", "")][i % 3]
    if planted:
      words.insert(int(rng.integers(0, 8)), planted)
    lines.append(f"{' '.join(words)},{label}")
    labels.append(label)
  pathlib.Path(path).write_text("\n".join(lines) + "\n")
  return labels


@pytest.fixture
def tiny_config():
  """Returns the tiny `cpu` config with extra overrides applied."""
  def make(**overrides):
    merged = {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return config_loader.load(EXPERIMENT + ":cpu", merged)
  return make


OK = "ok"


def cli_result(main, argv, capsys) -> str:
  """OK, or the one line a refused command printed."""
  try:
    main(argv)
  except SystemExit:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err
  capsys.readouterr()
  return OK


def expect_cli(main, argv, expected: str, capsys) -> None:
  """The command works (`expected` OK) or is refused in one line holding
  `expected`."""
  result = cli_result(main, argv, capsys)
  assert result == OK if expected == OK else expected in result, result


def check_every_command(workdir, tmp_path, capsys, *, split: str,
                        prompt: str, sample: str, export_hf: str,
                        explain: str) -> None:
  """A trained run evaluates, exports to JAX and compresses to int8 (with
  its capabilities kept); samples from `prompt`, exports to Hugging Face
  and explains `prompt` as expected (OK or a phrase of the refusal)."""
  from bigmodel_jax import compress, evaluate, explain as explain_cmd
  from bigmodel_jax import export, runs, sample as sample_cmd
  expect_cli(evaluate.main, ["--workdir", workdir, "--split", split], OK,
             capsys)
  expect_cli(sample_cmd.main, ["--workdir", workdir, "--prompt", prompt,
                               "--max_new_tokens", "80"], sample, capsys)
  expect_cli(export.main, ["--workdir", workdir, "--format", "hf", "--out",
                           str(tmp_path / "hf")], export_hf, capsys)
  expect_cli(export.main, ["--workdir", workdir, "--format", "jax",
                           "--examples", "2", "--out", str(tmp_path / "jax")],
             OK, capsys)
  expect_cli(explain_cmd.main, ["--workdir", workdir, "--out",
                                str(tmp_path / "x"), "--input", prompt],
             explain, capsys)
  quantized = str(tmp_path / "int8")
  expect_cli(compress.main, ["--workdir", workdir, "--out", quantized,
                             "--method", "int8"], OK, capsys)
  assert runs.load(quantized).capabilities == runs.load(workdir).capabilities


def run_steps(config, devices=None, steps=3):
  """(train losses, experiment, state) after `steps` steps from init."""
  exp = experiment.build(config, devices)
  state = exp.factory.init(jax.random.key(0))
  losses = []
  for step in range(steps):
    batch = exp.global_batch(exp.data.train_batch(step))
    state, metrics = exp.train_step(state, batch, jax.random.key(1))
    losses.append(float(metrics["train/loss"]))
  return losses, exp, state


def sharded_and_single(model, ids, mesh=(2, 2, 2)):
  """A freshly initialised model's outputs on `ids` with its parameters
  sharded by the rules over a data x fsdp x tensor mesh (jitted), and on
  one device."""
  from bigmodel_jax import sharding
  params = nn.unbox(model.init(jax.random.key(0), ids))["params"]
  layout = sharding.Layout(sharding.make_mesh(dict(zip(
      ("data", "fsdp", "tensor"), mesh))))
  shardings = layout.tree_shardings(
      jax.eval_shape(model.init, jax.random.key(0), ids))["params"]
  apply = layout.in_context(jax.jit(
      lambda p, x: model.apply({"params": p}, x)))
  return (apply(jax.device_put(params, shardings), ids),
          model.apply({"params": params}, ids))


def cached_logits(model, params, tokens, prefill: int):
  """Logits of a decoder run with its KV cache: `prefill` tokens in one
  call, then one token per call."""
  cache = jax.tree.map(jnp.zeros_like, model.init(
      jax.random.key(0), tokens, decode=True)["cache"])
  logits, v = model.apply({"params": params, "cache": cache},
                          tokens[:, :prefill], decode=True, mutable=["cache"])
  steps = [logits]
  for t in range(prefill, tokens.shape[1]):
    logits, v = model.apply({"params": params, "cache": v["cache"]},
                            tokens[:, t:t + 1], decode=True, mutable=["cache"])
    steps.append(logits)
  return jnp.concatenate(steps, 1)


def generate_all(generator, prompts, max_tokens, **settings) -> list:
  """Submits every prompt at once; the ids each got, in order."""
  outputs = [[] for _ in prompts]
  done = threading.Semaphore(0)

  def receiver(i):
    def deliver(tokens, finish):
      outputs[i].extend(tokens)
      if finish:
        done.release()
    return deliver
  for i, (prompt, most) in enumerate(zip(prompts, max_tokens)):
    generator.submit(Request(np.asarray(prompt, np.int32), most, receiver(i),
                             **settings))
  for _ in prompts:
    assert done.acquire(timeout=120)
  return outputs


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Serves a folder; under /cut/ it stops half-way through each file."""

  def do_GET(self):
    if not self.path.startswith("/cut/"):
      return super().do_GET()
    data = pathlib.Path(self.directory, self.path[len("/cut/"):]).read_bytes()
    self.send_response(200)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data[:len(data) // 2])
    self.close_connection = True

  def log_message(self, *args):
    del args


@pytest.fixture
def server(tmp_path):
  """(base URL, served folder) of an HTTP server on 127.0.0.1."""
  folder = tmp_path / "served"
  folder.mkdir()
  httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
  httpd.shutdown()
  httpd.server_close()


_EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
_SHORT = {"total_steps": 3, "log_every_steps": 1, "eval_every_steps": 3,
          "checkpoint_every_steps": 3, "optimizer.warmup_steps": 1}
# Tiny runs of each servable kind: (experiment, overrides).
SERVABLE = {
    "char": ("gpt_shakespeare_char.py:cpu", {
        "model.num_layers": 2, "model.num_heads": 2, "model.emb_dim": 32,
        "input.seq_len": 32, "input.batch_size": 8, "input.eval_steps": 1}),
    "chat": ("gpt_text.py:sft", {
        "model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2,
        "model.block_size": 64, "input.seq_len": 64, "input.vocab_size": 400,
        "input.batch_size": 8}),
    "bert": ("bert_finetune.py:full", {
        "model.num_layers": 2, "model.emb_dim": 32, "model.num_heads": 2,
        "model.mlp_dim": 64, "model.dropout": 0.0, "model.max_positions": 16,
        "init_from.hf_dir": None, "input.seq_len": 16, "input.batch_size": 8}),
    "clip": ("clip_digits.py:cpu", {
        "model.image.emb_dim": 32, "model.image.num_layers": 1,
        "model.image.num_heads": 2, "model.image.mlp_dim": 64,
        "model.text.emb_dim": 32, "model.text.num_layers": 1,
        "model.text.num_heads": 2, "model.embed_dim": 16,
        "input.batch_size": 32, "evals.zero_shot.every_steps": 0,
        "evals.retrieval.every_steps": 0}),
    "caption": ("caption_digits.py:cpu", {
        "model.image.emb_dim": 32, "model.image.num_layers": 1,
        "model.image.num_heads": 2, "model.image.mlp_dim": 64,
        "model.text.emb_dim": 32, "model.text.num_layers": 1,
        "model.text.num_heads": 2, "input.batch_size": 32,
        "evals.captions.every_steps": 0}),
    "lstm": ("rnn_shakespeare_char.py:cpu", {
        "model.hidden_dim": 32, "model.block_size": 64, "input.seq_len": 32,
        "input.batch_size": 8, "input.eval_steps": 1}),
    "transformer_xl": ("transformer_xl_char.py:cpu", {
        "model.num_layers": 2, "model.num_heads": 2, "model.emb_dim": 32,
        "model.mlp_dim": 64, "model.segment_len": 8, "model.mem_len": 8,
        "model.block_size": 64, "input.seq_len": 24, "input.batch_size": 8,
        "input.eval_steps": 1}),
    "gan": ("gan_digits.py:cond", {
        "model.features": 8, "model.hidden_dim": 16, "model.latent_dim": 8,
        "input.batch_size": 32, "total_steps": 150, "eval_every_steps": 150,
        "checkpoint_every_steps": 150, "optimizer.learning_rate": 2e-3}),
    "word2vec": ("word2vec_shakespeare.py:cpu", {
        "model.embed_dim": 16, "input.batch_size": 64, "input.eval_steps": 1}),
    "deberta": ("deberta_rt.py:cpu", {
        "model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2,
        "model.mlp_dim": 64, "model.dropout": 0.0, "model.max_positions": 16,
        "model.position_buckets": 8, "model.max_relative_positions": 16,
        "input.vocab_size": 500, "input.seq_len": 16,
        "input.batch_size": 8}),
    "t5": ("t5.py:rt", {
        "model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2,
        "model.head_dim": 16, "model.mlp_dim": 64, "model.dropout": 0.0,
        "input.vocab_size": 500, "input.source_len": 32,
        "input.batch_size": 32}),
    "vit": ("vit_digits.py:cpu", {
        "model.emb_dim": 32, "model.num_layers": 1, "model.num_heads": 2,
        "model.mlp_dim": 64, "input.batch_size": 32}),
}


def pytest_xdist_auto_num_workers(config):
  """`pytest -n auto`: one worker per usable core, at most 4; each holds its
  files' compiled programs and trained fixtures (with `--dist loadfile`)."""
  return max(1, min(4, len(os.sched_getaffinity(0))))


@pytest.fixture(scope="session")
def servable(tmp_path_factory):
  """name -> workdir of a tiny trained run (see SERVABLE), made on first use."""
  from bigmodel_jax import train
  cache = {}

  def get(name):
    if name not in cache:
      spec, overrides = SERVABLE[name]
      workdir = str(tmp_path_factory.mktemp(name))
      train.train(config_loader.load(str(_EXPERIMENTS / spec),
                                     {**_SHORT, **overrides}), workdir)
      cache[name] = workdir
    return cache[name]
  return get


@contextlib.contextmanager
def model_server(servable, folder, names: list, args: list):
  """A real server (`process.Server`) of the tiny runs `names` (compiled on
  use) on a new SQLite ledger in `folder`, whose URL is its `db`."""
  db = f"sqlite:///{folder / 'ledger.sqlite'}"
  with process.Server([servable(n) for n in names], names=names, db=db,
                      log=str(folder / "server.log"),
                      args=["--config.warm_up=false", *args]) as server:
    server.db = db
    yield server


def check_greedy_completions(servable, tmp_path, name: str, prompt: str,
                             tokens: int) -> None:
  """The server's greedy completion of the tiny run `name` (through the
  unmodified openai client) is the full forward pass's argmax, token after
  token, and so is `decoding.generate`'s."""
  import openai
  from bigmodel_jax import decoding, runs
  run = runs.load(servable(name))
  ids = np.zeros((1, len(run.tokenizer.encode(prompt)) + tokens), np.int32)
  start = ids.shape[1] - tokens
  ids[0, :start] = run.tokenizer.encode(prompt)
  forward = jax.jit(lambda ids: run.model.apply({"params": run.params}, ids))
  for t in range(start, ids.shape[1]):  # Causal: later zeros unread.
    ids[0, t] = int(jnp.argmax(forward(ids)[0, t - 1]))
  greedy = list(ids[0, start:])
  with model_server(servable, tmp_path, [name], []) as server:
    client = openai.OpenAI(base_url=server.url + "/v1",
                           api_key=process.create_key(server.db, "tests"))
    answer = client.completions.create(model=name, prompt=prompt,
                                       max_tokens=tokens, temperature=0)
  assert answer.choices[0].text == run.tokenizer.decode(greedy)
  assert answer.usage.completion_tokens == tokens
  sampled = decoding.generate(run.model, run.params, ids[:, :start], tokens,
                              jax.random.key(0), context=run.parts["decode"],
                              temperature=0.0)
  assert list(sampled[0]) == greedy


def _postgres_binaries() -> str | None:
  for folder in [os.path.dirname(shutil.which("initdb") or "")] + sorted(
      glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
    if folder and os.path.isfile(os.path.join(folder, "postgres")):
      return folder
  return None


@pytest.fixture
def postgres():
  """The URL of a PostgreSQL server started for this test (as the
  "postgres" user when the tests run as root), stopped afterwards."""
  binaries = _postgres_binaries()
  if binaries is None:
    if os.environ.get("BIGMODEL_JAX_REQUIRE_POSTGRES"):
      pytest.fail("PostgreSQL is not installed (apt-get install postgresql).")
    pytest.skip("PostgreSQL is not installed here; CI installs it.")
  folder = tempfile.mkdtemp(prefix="bmj-pg-")
  as_user = []
  if os.geteuid() == 0:  # initdb and postgres refuse to run as root.
    user = pwd.getpwnam("postgres")
    os.chown(folder, user.pw_uid, user.pw_gid)
    as_user = ["runuser", "-u", "postgres", "--"]
  data, port = os.path.join(folder, "data"), process.free_port()
  subprocess.run(as_user + [f"{binaries}/initdb", "-D", data, "-A", "trust",
                            "-U", "postgres"], check=True, capture_output=True)
  server = subprocess.Popen(
      as_user + [f"{binaries}/postgres", "-D", data, "-p", str(port), "-k",
                 folder, "-h", "127.0.0.1"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
  for _ in range(100):
    try:
      sqlalchemy.create_engine(url).connect().close()
      break
    except Exception:  # noqa: BLE001 — not accepting connections yet.
      time.sleep(0.2)
  yield url
  server.terminate()
  server.wait(30)
  shutil.rmtree(folder, ignore_errors=True)
