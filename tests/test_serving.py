"""Serving: continuous batching equals one sequence at a time, sharded equals
one device, and a real server process answers OpenAI clients over HTTP."""
import base64
import concurrent.futures
import contextlib
import io
import json
import subprocess
import sys
import threading
import time

import httpx
import hypothesis
import jax
import numpy as np
import openai
import pytest
from hypothesis import strategies as st
from PIL import Image

from bigmodel_jax import decoding, experiment, runs
from bigmodel_jax.serving import process
from bigmodel_jax.serving.completions import Choice, StopMatcher
from bigmodel_jax.serving.generation import Generator
from bigmodel_jax.serving.ledger import Ledger
from conftest import generate_all, model_server


@pytest.fixture(scope="module")
def char_run(servable):
  return servable("char")


PROMPTS = [[5], [7, 8, 9], list(range(1, 20)), [3, 3], list(range(10, 27)),
           [1, 2, 3, 4], [9]]
LENGTHS = [12, 5, 13, 9, 1, 15, 8]


def _greedy_without_cache(run, forward, prompt, length) -> list:
  """Greedy ids from whole forward passes over the text so far (no cache:
  the reference continuous batching must equal)."""
  size = run.parts["decode"]
  text = list(prompt)
  for _ in range(length):
    logits = forward(np.array([text + [0] * (size - len(text))]))
    text.append(int(np.argmax(logits[0, len(text) - 1])))
  return text[len(prompt):]


def test_a_scanned_model_serves_one_slot_from_its_cache_axis_names(
    tiny_config):
  """The slot axis comes from the cache variables' logical names: scanned
  layers put a "layers" axis before it, and one slot is no special case."""
  exp = experiment.build(tiny_config(model__scan_layers=True),
                         jax.devices()[:1])
  variables = exp.factory.init(jax.random.key(0)).variables
  size = exp.config.model.block_size
  generator = Generator(exp.model, variables, exp.layout, length=size,
                        slots=1)
  prompts = [[5, 6, 7], [9]]
  got = generate_all(generator, prompts, [6, 6], temperature=0.0)
  generator.close()
  for prompt, ids in zip(prompts, got):
    np.testing.assert_array_equal(ids, decoding.generate(
        exp.model, variables["params"], np.asarray([prompt]), 6,
        jax.random.key(0), context=size, temperature=0.0)[0])


@contextlib.contextmanager
def _backend_compiles():
  """Counts XLA compilations (of any thread) inside the block."""
  events = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def test_continuous_batching_equals_one_sequence_at_a_time(char_run):
  """Warm-up compiles each decode and prefill program once; seven requests
  of every length through three slots then compile nothing. (XLA's
  compilations are counted: jit's dispatch cache may hold fewer entries
  than it compiled.)"""
  run = runs.load(char_run)
  generator = Generator(run.model, run.variables, run.layout,
                        length=run.parts["decode"], slots=3,
                        steps=4)
  with _backend_compiles() as warm_up:
    generator.warm_up()
  with _backend_compiles() as serving:
    got = generate_all(generator, PROMPTS, LENGTHS, temperature=0.0)
  generator.close()
  assert len(warm_up) == len(generator.row_buckets) + len(
      generator.prefill_rows) * len(generator.buckets)
  assert serving == []
  forward = jax.jit(lambda tokens: run.model.apply(run.variables, tokens))
  for prompt, length, ids in zip(PROMPTS, LENGTHS, got):
    assert ids == _greedy_without_cache(run, forward, prompt, length)


def test_a_seeded_request_does_not_depend_on_its_neighbours(char_run):
  run = runs.load(char_run)
  generator = Generator(run.model, run.variables, run.layout,
                        length=run.parts["decode"], slots=4)
  settings = dict(temperature=1.0, top_k=20, top_p=0.9, seed=7)
  alone = generate_all(generator, [[5, 6]], [20], **settings)[0]
  crowded = generate_all(generator, [[1], [5, 6], [2, 2, 2]], [20, 20, 20],
                      **settings)
  assert crowded[1] == alone and crowded[0] != alone
  generator.close()


def test_sharded_serving_equals_one_device(char_run):
  outputs = []
  for mesh, devices in (({"data": 1}, jax.devices()[:1]),
                        ({"data": 2, "tensor": 4}, None)):
    run = runs.load(char_run, mesh=mesh, devices=devices)
    generator = Generator(run.model, run.variables, run.layout,
                          length=run.parts["decode"], slots=4)
    outputs.append(generate_all(generator, PROMPTS[:4], LENGTHS[:4],
                             temperature=0.0))
    leaf = jax.tree.leaves(generator.cache)[0]
    generator.close()
  assert outputs[0] == outputs[1]
  assert len(leaf.sharding.device_set) == 8 and any(leaf.sharding.spec)


def test_sampling_settings_per_row():
  logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
  keys = jax.random.split(jax.random.key(1), 4)
  greedy = np.argmax(logits, -1)
  one = np.ones(4, np.float32)
  for temperature, top_k, top_p in ((0 * one, 0 * one, one),
                                    (one, one, one),  # top_k = 1
                                    (one, 0 * one, one * 1e-6)):
    np.testing.assert_array_equal(decoding.sample(
        logits, keys, temperature, top_k.astype(int), top_p), greedy)
  top2 = np.argsort(-np.asarray(logits), -1)[:, :2]
  for seed in range(20):
    ids = decoding.sample(logits, jax.random.split(jax.random.key(seed), 4),
                          one * 2, np.full(4, 2), one)
    assert all(i in row for i, row in zip(np.asarray(ids), top2))


class _Chars:
  """A served model whose ids are character codes."""

  def decode(self, ids):
    return "".join(map(chr, ids))


def test_stop_strings_are_held_back_and_cut():
  choice = Choice(_Chars(), ["END"])
  shown = [choice.add([ord(c)], None) for c in "abcEN"]
  assert "".join(shown) == "abc" and choice.finish is None
  assert choice.add([ord("D")], None) == "" and choice.finish == "stop"
  assert choice.text == "abc"
  other = Choice(_Chars(), ["END"])
  assert "".join(other.add([ord(c)], None) for c in "aEx") == "aEx"


def _first_stop(text: str, stops: list[str]) -> int | None:
  """Where the stop string that ends first in `text` starts (reference)."""
  for end in range(1, len(text) + 1):
    for stop in stops:
      if text[:end].endswith(stop):
        return end - len(stop)
  return None


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(
    stops=st.lists(st.text("ab", min_size=1, max_size=6), min_size=1,
                   max_size=4),
    pieces=st.lists(st.text("abc", max_size=5), max_size=8))
def test_stop_matching_equals_the_plain_search(stops, pieces):
  matcher, text, found = StopMatcher(stops), "", None
  for piece in pieces:
    start = matcher.feed(piece)
    text += piece
    if start is not None:
      found = start
      break
    # What is held back is the longest end that begins a stop string.
    assert matcher.held == max([k for s in stops for k in range(1, len(s))
                                if text.endswith(s[:k])] + [0])
  assert found == _first_stop(text, stops)


# A real server, over HTTP.


@pytest.fixture(scope="module")
def server(servable, tmp_path_factory):
  with model_server(servable, tmp_path_factory.mktemp("server"),
                    ["char", "chat", "bert", "vit"],
                    ["--config.slots=4", "--config.max_body_bytes=20000",
                     "--config.encoder_window_ms=50",
                     "--config.prices.default.per_call=0.001"]) as s:
    s.key = process.create_key(s.db, "tests")
    yield s


def _post(server, path, body, key=None, headers=None):
  headers = {"Authorization": f"Bearer {key or server.key}", **(headers or {})}
  return httpx.post(server.url + path, json=body, headers=headers,
                    timeout=60)


def _rows(server) -> list:
  return Ledger(server.db).rows()


def test_openai_clients_work_unmodified(server):
  client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.key)
  assert {m.id for m in client.models.list().data} == {"char", "chat", "bert",
                                                      "vit"}
  completion = client.completions.create(model="char", prompt="ROMEO:",
                                         max_tokens=10, temperature=0)
  assert completion.usage.completion_tokens == 10
  assert len(completion.choices[0].text) == 10
  chat = client.chat.completions.create(
      model="chat", messages=[{"role": "user", "content": "Hello?"}],
      max_tokens=8, seed=1)
  assert chat.choices[0].message.role == "assistant"
  assert chat.usage.completion_tokens <= 8
  streamed = client.chat.completions.create(
      model="chat", messages=[{"role": "user", "content": "Hello?"}],
      max_tokens=8, seed=1, stream=True,
      stream_options={"include_usage": True})
  chunks = list(streamed)
  text = "".join(c.choices[0].delta.content or "" for c in chunks
                 if c.choices)
  assert text == chat.choices[0].message.content
  assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
  as_floats = client.embeddings.create(model="bert", input=["a fine film"],
                                       encoding_format="float")
  as_base64 = client.embeddings.create(model="bert", input=["a fine film"])
  np.testing.assert_allclose(as_base64.data[0].embedding,
                             as_floats.data[0].embedding, rtol=1e-6)
  assert np.linalg.norm(as_floats.data[0].embedding) == pytest.approx(1, 1e-5)


def test_streamed_completion_equals_the_whole_one_and_both_are_billed(server):
  body = {"model": "char", "prompt": "KING", "max_tokens": 20, "seed": 5,
          "n": 2, "temperature": 1.0}
  before = len(_rows(server))
  whole = _post(server, "/v1/completions", body).json()
  texts, usage = ["", ""], None
  with httpx.stream("POST", server.url + "/v1/completions",
                    json={**body, "stream": True,
                          "stream_options": {"include_usage": True}},
                    headers={"Authorization": f"Bearer {server.key}"}) as r:
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in r.iter_lines() if line.startswith("data: ")]
  assert lines[-1] == "data: [DONE]"
  for line in lines[:-1]:
    chunk = json.loads(line[6:])
    for choice in chunk["choices"]:
      texts[choice["index"]] += choice["text"]
    usage = chunk.get("usage") or usage
  assert texts == [c["text"] for c in whole["choices"]]
  assert texts[0] != texts[1]  # n choices sample differently.
  assert usage == whole["usage"] == {"prompt_tokens": 4,
                                     "completion_tokens": 40,
                                     "total_tokens": 44}
  rows = _rows(server)[before:]
  assert [(r["input_units"], r["output_units"], r["status"]) for r in rows] \
      == [(4, 40, 200)] * 2


def test_every_call_needs_a_valid_unrevoked_key(server):
  body = {"model": "char", "prompt": "A", "max_tokens": 2}
  assert httpx.post(server.url + "/v1/completions", json=body).status_code \
      == 401
  assert _post(server, "/v1/completions", body, key="bmj-wrong").status_code \
      == 401
  key = process.create_key(server.db, "short-lived")
  assert _post(server, "/v1/completions", body, key=key).status_code == 200
  subprocess.run([sys.executable, "-m", "bigmodel_jax.billing", "--db",
                  server.db, "keys", "revoke", "short-lived"], check=True)
  time.sleep(1.1)  # The server looks a valid key up again after 1 s.
  answer = _post(server, "/v1/completions", body, key=key)
  assert answer.status_code == 401
  assert "revoked" in answer.json()["error"]["message"]


def test_rate_limit_answers_429_with_retry_after(server):
  key = process.create_key(server.db, "slow", "--rate", "2")
  body = {"model": "char", "prompt": "A", "max_tokens": 1}
  statuses = [_post(server, "/v1/completions", body, key=key) for _ in
              range(3)]
  assert [s.status_code for s in statuses] == [200, 200, 429]
  assert int(statuses[-1].headers["retry-after"]) >= 1
  assert "Rate limit of 2" in statuses[-1].json()["error"]["message"]


def test_quota_and_credit_stop_calls_before_they_go_over(server):
  body = {"model": "char", "prompt": "ABCD", "max_tokens": 6}  # 10 tokens.
  key = process.create_key(server.db, "quota", "--quota-tokens", "25")
  statuses = [_post(server, "/v1/completions", body, key=key).status_code
              for _ in range(3)]
  assert statuses == [200, 200, 429]
  # per_call 0.001 + 10 tokens: 0.001 + (4 x 0.0005 + 6 x 0.0015) / 1000.
  key = process.create_key(server.db, "prepaid", "--credit", "0.0025")
  answers = [_post(server, "/v1/completions", body, key=key) for _ in range(3)]
  assert [a.status_code for a in answers] == [200, 200, 402]
  assert "credit exhausted" in answers[-1].json()["error"]["message"]
  rows = [r for r in _rows(server) if r["status"] == 200 and
          r["output_units"] == 6 and r["input_units"] == 4]
  assert {r["price_nanousd"] for r in rows} == {1_000_000 + 11_000}


def _png(pixels: np.ndarray) -> str:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, "PNG")
  return base64.b64encode(out.getvalue()).decode()


@pytest.mark.parametrize("path,body,kwargs,status,message", [
    ("/v1/completions", None, {"content": b"{nope",
                               "headers": {"content-type": "application/json"}},
     400, "Malformed JSON"),
    ("/v1/completions", {"model": "char"}, {}, 400, "prompt: Field required"),
    ("/v1/completions", {"model": "char", "prompt": "A" * 40}, {}, 400,
     "context of 32"),
    ("/v1/completions", {"model": "char", "prompt": "A", "max_tokens": 99},
     {}, 400, "max_tokens=99"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "A"}, {}, 404,
     "does not exist"),
    ("/v1/completions", {"model": "char", "prompt": "A" * 30000}, {}, 413,
     "limit"),
    ("/v1/completions", None, {"content": b"model=char",
                               "headers": {"content-type": "text/plain"}},
     415, "JSON"),
    ("/v1/chat/completions", {"model": "char", "messages": [
        {"role": "user", "content": "hi"}]}, {}, 400, "does not serve"),
    ("/v1/completions", {"model": "char", "prompt": "A", "temperature": -1},
     {}, 400, "temperature"),
    ("/v1/classify", {"model": "vit", "images": ["bm90IGFuIGltYWdl"]}, {}, 400,
     "Not a readable image"),
    ("/v1/embeddings", {"model": "bert", "input": []}, {}, 400,
     "at least one"),
])
def test_bad_input_gets_a_clear_json_error_and_costs_nothing(
    server, path, body, kwargs, status, message):
  before = len(_rows(server))
  headers = {"Authorization": f"Bearer {server.key}",
             **kwargs.pop("headers", {})}
  answer = httpx.post(server.url + path, headers=headers, timeout=60,
                      **({"json": body} if body is not None else {}), **kwargs)
  assert answer.status_code == status
  error = answer.json()["error"]
  assert message in error["message"] and "Traceback" not in answer.text
  assert len(_rows(server)) == before


def test_classifiers_answer_labels_and_probabilities(server, servable):
  with open(f"{servable('bert')}/class_names.json") as f:
    names = json.load(f)
  text = _post(server, "/v1/classify", {
      "model": "bert", "input": ["a good film", "a bad film"]}).json()
  assert [d["label"] in names for d in text["data"]] == [True, True]
  assert sum(text["data"][0]["probabilities"].values()) == pytest.approx(1)
  assert text["usage"]["tokens"] == 10  # [CLS] a good/bad film [SEP].
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = [_png((digits.images[i] * 255 / 16).astype(np.uint8))
            for i in range(3)]
  answer = _post(server, "/v1/classify", {"model": "vit",
                                          "images": images}).json()
  assert len(answer["data"]) == 3 and answer["usage"] == {"images": 3}
  assert _rows(server)[-1]["unit"] == "images"


def _encoder_calls(server) -> tuple[float, float]:
  """(inputs, calls) of the embedder so far, from /metrics."""
  values = {line.split()[0]: float(line.split()[1]) for line in httpx.get(
      server.url + "/metrics").text.splitlines()
            if line.startswith("bmj_encoder_batch_size_")}
  key = '{model="bert",route="embedder"}'
  return (values["bmj_encoder_batch_size_sum" + key],
          values["bmj_encoder_batch_size_count" + key])


def test_concurrent_encoder_calls_are_batched_and_unchanged(server):
  texts = [f"review number {i} was {'great' if i % 2 else 'dull'}"
           for i in range(12)]
  single = [_post(server, "/v1/embeddings", {"model": "bert", "input": t})
            .json()["data"][0]["embedding"] for t in texts]
  inputs, calls = _encoder_calls(server)
  with concurrent.futures.ThreadPoolExecutor(12) as pool:
    together = list(pool.map(lambda t: _post(
        server, "/v1/embeddings", {"model": "bert", "input": t}).json(),
                             texts))
  np.testing.assert_allclose([t["data"][0]["embedding"] for t in together],
                             single, atol=1e-5)
  more_inputs, more_calls = _encoder_calls(server)
  assert more_inputs - inputs == 12 and more_calls - calls < 12


def test_an_abandoned_stream_is_charged_for_the_tokens_sent(server):
  before = len(_rows(server))
  with httpx.stream("POST", server.url + "/v1/completions", json={
      "model": "char", "prompt": "A", "max_tokens": 30, "stream": True},
                    headers={"Authorization": f"Bearer {server.key}"}) as r:
    received = 0
    for line in r.iter_lines():
      received += line.startswith("data: ")
      if received == 3:
        break
  for _ in range(100):
    rows = _rows(server)[before:]
    if rows:
      break
    threading.Event().wait(0.1)
  assert len(rows) == 1 and rows[0]["status"] == 499
  assert received <= rows[0]["output_units"] < 30


def test_metrics_count_calls_tokens_and_slots(server):
  _post(server, "/v1/completions", {"model": "char", "prompt": "A",
                                    "max_tokens": 3})
  text = httpx.get(server.url + "/metrics").text
  assert 'bmj_requests_total{endpoint="completions",model="char",status="200"}' \
      in text
  assert 'bmj_tokens_total{direction="output",model="char"}' in text
  for name in ("bmj_batch_occupancy", "bmj_queue_depth",
               "bmj_request_seconds_bucket",
               "bmj_time_to_first_token_seconds_bucket"):
    assert name in text


def test_a_retried_request_id_replays_the_answer_and_is_billed_once(server):
  body = {"model": "char", "prompt": "A", "max_tokens": 2}
  headers = {"X-Request-Id": "client-order-17"}
  first = _post(server, "/v1/completions", body, headers=headers)
  again = _post(server, "/v1/completions", body, headers=headers)
  other = _post(server, "/v1/completions", {**body, "max_tokens": 3},
                headers=headers)
  assert first.status_code == again.status_code == 200
  assert first.headers["x-request-id"] == "client-order-17"
  assert again.json() == first.json() and again.headers["x-replayed"]
  assert other.status_code == 409
  assert other.json()["error"]["code"] == "request_id_reused"
  assert [r["request_id"] for r in _rows(server)].count("client-order-17") == 1
