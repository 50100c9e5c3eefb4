"""Serving under attack: no call free or over its key's limits, bounded work
per request, faults that fail only their own calls, idempotent retries.
A server in a thread of this process, so tests can reach into its engine."""
import concurrent.futures
import json
import socket
import threading
import time

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck

from bigmodel_jax.serving import api, models, process, settings, tables
from bigmodel_jax.serving.ledger import Ledger


@pytest.fixture(scope="module")
def app_server(servable, tmp_path_factory):
  folder = tmp_path_factory.mktemp("safety")
  config = settings.defaults()
  config.update(dict(slots=4, warm_up=False, header_timeout_seconds=1.0,
                     body_timeout_seconds=1.0, hold_seconds=3.0))
  config.prices.default.per_call = 0.001
  ledger = Ledger(f"sqlite:///{folder / 'ledger.sqlite'}")
  served = {"char": models.load("char", servable("char"), config)}
  with process.InThread(api.create_app(served, ledger, config),
                        config) as server:
    server.ledger, server.served, server.config = ledger, served, config
    server.key = ledger.create_key("tests")[1]
    yield server
  served["char"].generator.close()


def _post(server, body, key=None, request_id=None, **kwargs):
  headers = {"Authorization": f"Bearer {key or server.key}"}
  if request_id is not None:
    headers["X-Request-Id"] = request_id
  return httpx.post(server.url + "/v1/completions", json=body,
                    headers=headers, timeout=60, **kwargs)


def _stream(server, body, key=None, request_id=None) -> tuple[int, str]:
  """(status, text) of a streamed completion."""
  headers = {"Authorization": f"Bearer {key or server.key}",
             "X-Request-Id": request_id}
  with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                    json={**body, "stream": True}, headers=headers) as r:
    lines = list(r.iter_lines())
  if r.status_code != 200:
    return r.status_code, "\n".join(lines)
  chunks = [json.loads(line[6:]) for line in lines
            if line.startswith("data: {")]
  return 200, "".join(c["choices"][0]["text"] for c in chunks
                      if c.get("choices"))


def _key_row(server, name: str) -> dict:
  with server.ledger.engine.connect() as db:
    return dict(db.execute(tables.keys.select().where(
        tables.keys.c.name == name)).mappings().one())


def _rows(server, request_id: str) -> list:
  return [r for r in server.ledger.rows() if r["request_id"] == request_id]


BODY = {"model": "char", "prompt": "ABCD", "max_tokens": 6, "seed": 3}


def test_a_request_id_is_its_keys_and_a_retry_replays_the_billed_answer(
    app_server):
  other = app_server.ledger.create_key("other")[1]
  first = _post(app_server, BODY, request_id="order-1")
  again = _post(app_server, BODY, request_id="order-1")
  assert first.status_code == again.status_code == 200
  assert again.json() == first.json() and again.headers["x-replayed"] == "true"
  # Another key's call with the same id is its own call, billed to it.
  theirs = _post(app_server, BODY, key=other, request_id="order-1")
  assert theirs.status_code == 200 and "x-replayed" not in theirs.headers
  assert len(_rows(app_server, "order-1")) == 2
  # A streamed retry of a billed stream replays its text, billed once.
  status, text = _stream(app_server, BODY, request_id="stream-1")
  assert (status, _stream(app_server, BODY, request_id="stream-1")) == (
      200, (200, text))
  assert len(_rows(app_server, "stream-1")) == 1
  # The same id for another request is refused before any token.
  status, text = _stream(app_server, {**BODY, "seed": 4},
                         request_id="stream-1")
  assert status == 409 and "different request" in text
  assert len(_rows(app_server, "stream-1")) == 1


def test_a_billed_id_costs_no_quota_and_a_long_one_is_refused(app_server):
  key = app_server.ledger.create_key("small", quota_tokens=30)[1]
  assert _post(app_server, BODY, key=key, request_id="q-1").status_code == 200
  assert _post(app_server, BODY, key=key, request_id="q-2").status_code == 200
  # 20 of 30 used: a third call (10 more) fits once, its replay is free.
  for _ in range(3):
    assert _post(app_server, BODY, key=key,
                 request_id="q-3").status_code == 200
  status, _ = _stream(app_server, BODY, key=key, request_id="q-3")
  assert status == 200
  over = _post(app_server, BODY, key=key, request_id="q-4")
  assert over.status_code == 429
  assert "30 of 30 used and 0 reserved" in over.json()["error"]["message"]
  assert _key_row(app_server, "small")["used_tokens"] == 30
  long_id = _post(app_server, BODY, request_id="x" * 101)
  assert long_id.status_code == 400
  assert long_id.json()["error"]["code"] == "invalid_request_id"
  assert not _rows(app_server, "x" * 101)


@pytest.mark.parametrize("field,value", [
    ("top_k", 2**31), ("n", 2**40), ("max_tokens", 2**63),
    ("seed", 2**32), ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", "s" * 1_000_000), ("model", "m" * 300)])
def test_values_the_engine_cannot_take_are_400(app_server, field, value):
  answer = _post(app_server, {**BODY, field: value})
  assert answer.status_code == 400, answer.text
  assert field in answer.json()["error"]["message"]


@pytest.mark.parametrize("content,reason", [
    (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    (b'{"model": "char", "prompt": "A", "max_tokens": 1' + b"0" * 5000 + b"}",
     "digits"),
    (b'{"model": "char", "prompt": "A", "temperature": NaN}', "NaN"),
    (b"\xff\xfe", "Malformed JSON")])
def test_hostile_json_is_400_and_keeps_the_connection(app_server, content,
                                                      reason):
  with httpx.Client(headers={"Authorization": f"Bearer {app_server.key}",
                             "Content-Type": "application/json"}) as client:
    answer = client.post(app_server.url + "/v1/completions", content=content)
    assert answer.status_code == 400 and reason in answer.text
    assert client.get(app_server.url + "/healthz").status_code == 200


def _until_refused(server, key: str, clients: int) -> list[int]:
  """Statuses of `clients` threads each calling until refused."""
  def client(_):
    statuses = [200]
    while statuses[-1] == 200:
      statuses.append(_post(server, BODY, key=key).status_code)
    return statuses[1:]
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    return sum(pool.map(client, range(clients)), [])


def test_concurrent_calls_never_take_a_key_over_its_quota_or_credit(
    app_server):
  """32 clients calling until refused: calls settle while others claim, so
  a check that reads the ledger apart from what is in flight goes over."""
  ledger = app_server.ledger
  quota = ledger.create_key("busy-quota", quota_tokens=405)[1]
  # per_call 0.001 + (4 x 0.0005 + 6 x 0.0015) / 1000 = $0.001011 a call.
  credit = ledger.create_key("busy-credit", credit_usd=0.0405)[1]
  by_quota = _until_refused(app_server, quota, 32)
  by_credit = _until_refused(app_server, credit, 32)
  assert by_quota.count(200) == 40 and set(by_quota) == {200, 429}
  assert by_credit.count(200) == 40 and set(by_credit) == {200, 402}
  row = _key_row(app_server, "busy-quota")
  assert (row["used_tokens"], row["held_tokens"]) == (400, 0)
  row = _key_row(app_server, "busy-credit")
  assert (row["spent_nanousd"], row["held_nanousd"]) == (40 * 1_011_000, 0)


def test_an_engine_fault_fails_only_its_calls_and_releases_their_holds(
    app_server, monkeypatch):
  generator = app_server.served["char"].generator
  key = app_server.ledger.create_key("faults", quota_tokens=10_000)[1]
  prefill = generator._run_prefill
  poisoned = app_server.served["char"].prompt_ids("QQQQ").tolist()

  def failing_prefill(started, bucket):
    if any(r.prompt.tolist() == poisoned for _, r in started):
      raise RuntimeError("injected prefill fault")
    return prefill(started, bucket)
  monkeypatch.setattr(generator, "_run_prefill", failing_prefill)
  bodies = [{**BODY, "prompt": p, "max_tokens": 8} for p in
            ("QQQQ", "ABCD", "EFGH", "IJKL", "MNOP")]
  with concurrent.futures.ThreadPoolExecutor(5) as pool:
    answers = list(pool.map(lambda b: _post(app_server, b, key=key), bodies))
  assert [a.status_code for a in answers] == [500, 200, 200, 200, 200]
  assert "nothing was charged" in answers[0].json()["error"]["message"]
  decode, failures = generator._run_decode, [1]

  def failing_decode(rows):
    if failures:
      failures.pop()
      raise RuntimeError("injected decode fault")
    return decode(rows)
  monkeypatch.setattr(generator, "_run_decode", failing_decode)
  assert _post(app_server, BODY, key=key).status_code == 500
  assert _post(app_server, BODY, key=key).status_code == 200
  for _ in range(50):  # Holds of failed calls are released in background.
    row = _key_row(app_server, "faults")
    if row["held_tokens"] == 0:
      break
    time.sleep(0.1)
  assert (row["used_tokens"], row["held_tokens"]) == (4 * 12 + 10, 0)


def test_slow_clients_are_cut_off(app_server):
  host, port = "127.0.0.1", app_server.port
  with socket.create_connection((host, port)) as idle:
    idle.settimeout(10)
    started = time.monotonic()
    assert idle.recv(100) == b""  # Closed: no head within 1 s.
    assert time.monotonic() - started < 5
  with socket.create_connection((host, port)) as trickle:
    trickle.settimeout(10)
    trickle.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    assert trickle.recv(100) == b""
  with socket.create_connection((host, port)) as slow_body:
    slow_body.settimeout(10)
    slow_body.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        f"{app_server.key}\r\nContent-Type: application/json\r\n"
        "Content-Length: 100\r\n\r\n{\"model\"".encode())
    assert b" 408 " in slow_body.recv(1000).split(b"\r\n")[0] + b" "
  config = app_server.config.copy_and_resolve_references()
  config.max_connections = 2
  app = api.create_app(app_server.served, app_server.ledger, config)
  with process.InThread(app, config) as small, \
      socket.create_connection((host, small.port)), \
      socket.create_connection((host, small.port)):
    time.sleep(0.2)  # Two connections open: a third request is refused.
    assert httpx.get(small.url + "/healthz").status_code == 503


def test_metrics_labels_take_only_served_model_names(app_server):
  for i in range(30):
    assert _post(app_server, {**BODY, "model": f"{i:02d}" * 100}).status_code \
        == 404
  text = httpx.get(app_server.url + "/metrics").text
  assert 'model="unknown"' in text and "01" * 100 not in text
  assert len(text) < 100_000


def _fit_to_char_model(case):
  """Completions shaped to the tiny character model (prompts of a few
  characters it knows, a few tokens each, every other field as generated),
  so that valid ones reach the engine."""
  body = case.body
  if isinstance(body, dict) and isinstance(body.get("prompt"), (str, list)):
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [
        body["prompt"]]
    body["prompt"] = [("".join(c for c in str(p) if c.isascii() and
                               c.isalpha()) or "A")[:8] for p in prompts
                      ] or "A"
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 0:
      body["max_tokens"] = body["max_tokens"] % 8 + 1
  return case


def test_every_route_answers_generated_requests_without_a_server_error(
    app_server):
  """Property-based, from the app's own OpenAPI schema: valid and invalid
  bodies on every route; never a 500 or a traceback, /healthz answers
  meanwhile, and no ledger row without a 2xx answer."""
  schema = schemathesis.openapi.from_dict(
      httpx.get(app_server.url + "/openapi.json").json())
  headers = {"Authorization": f"Bearer {app_server.key}"}
  answered, slowest = set(), [0.0]
  before = {r["request_id"] for r in app_server.ledger.rows()}
  stop = threading.Event()

  def watch_health():
    while not stop.wait(0.2):
      started = time.monotonic()
      httpx.get(app_server.url + "/healthz", timeout=30)
      slowest[0] = max(slowest[0], time.monotonic() - started)
  watcher = threading.Thread(target=watch_health)
  watcher.start()
  try:
    for operation in schema.get_all_operations():
      operation = operation.ok()
      modes = [schemathesis.GenerationMode.POSITIVE]
      if operation.method.upper() == "POST":  # Routes with a body.
        modes.append(schemathesis.GenerationMode.NEGATIVE)
      for mode in modes:
        @hypothesis.settings(max_examples=15, deadline=None, database=None,
                             derandomize=True,
                             suppress_health_check=list(HealthCheck))
        @hypothesis.given(case=operation.as_strategy(
            generation_mode=mode).map(_fit_to_char_model))
        def check(case):
          response = case.call(base_url=app_server.url, headers=headers,
                               timeout=60)
          assert response.status_code < 500, (case.body, response.text)
          assert "Traceback" not in response.text
          request_id = response.headers.get("x-request-id")  # A list here.
          if 200 <= response.status_code < 300 and request_id:
            answered.add(request_id[0])
        check()
  finally:
    stop.set()
    watcher.join()
  assert slowest[0] < 5
  billed = {r["request_id"] for r in app_server.ledger.rows()} - before
  assert billed <= answered and answered
