"""The ledger: keys stored as hashes, exact prices and invoices, exact
billing across a kill -9, a restart and the clients' retries, limits that
hold across three server processes sharing one PostgreSQL ledger, earlier
ledgers upgraded in place."""
import asyncio
import concurrent.futures
import csv
import datetime
import io
import json
import signal
import subprocess
import sys
import threading
import time
import types

import httpx
import pytest
import sqlalchemy as sa

from bigmodel_jax import billing
from bigmodel_jax.serving import process, settings, tables
from bigmodel_jax.serving.gate import Gate
from bigmodel_jax.serving.ledger import NANO, Ledger, Price
from bigmodel_jax.serving.writes import Billed, InFlight, OverLimit


def test_prices_are_exact_in_nano_dollars():
  price = Price(per_call=0.001, per_1k_input=0.0005, per_1k_output=0.0015)
  assert price.nanousd(4, 6) == 1_000_000 + 2_000 + 9_000
  assert price.nanousd(1, 0) == 1_000_500
  assert Price(per_1k_input=5e-7).nanousd(1, 0) == 1  # Half a nano: up.
  assert sum(price.nanousd(3, 7) for _ in range(1000)) == 1000 * 1_012_000


def test_keys_are_shown_once_and_stored_as_hashes(tmp_path, capsys):
  db = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
  billing.main(["--db", db, "keys", "create", "--name", "acme",
                "--quota-tokens", "100", "--rate", "30"])
  secret = capsys.readouterr().out.strip().splitlines()[-1]
  assert secret.startswith("bmj-") and len(secret) > 40
  ledger = Ledger(db)
  assert ledger.authenticate(secret).name == "acme"
  assert ledger.authenticate(secret + "x") is None
  raw = (tmp_path / "ledger.sqlite").read_bytes()
  assert secret.encode() not in raw and secret[12:].encode() not in raw
  billing.main(["--db", db, "keys", "list"])
  listing = capsys.readouterr().out
  assert "acme" in listing and secret[:12] in listing and secret not in listing
  billing.main(["--db", db, "keys", "create", "--name", "ops", "--admin"])
  assert "Created admin key 'ops'" in capsys.readouterr().out
  billing.main(["--db", db, "keys", "list"])
  assert [line.split()[4] for line in capsys.readouterr().out.splitlines()[
      1:]] == ["active", "admin"]
  assert [k.admin for k, _ in ledger.list_keys()] == [False, True]
  billing.main(["--db", db, "keys", "revoke", "acme"])
  assert ledger.authenticate(secret) is None
  with pytest.raises(SystemExit):
    billing.main(["--db", db, "keys", "revoke", "nobody"])
  assert "No active key named 'nobody'" in capsys.readouterr().err


def _invoice(db: str) -> list[dict]:
  out = subprocess.run(
      [sys.executable, "-m", "bigmodel_jax.billing", "--db", db, "report",
       "--from", "2000-01-01", "--to", "2100-01-01", "--csv"],
      check=True, capture_output=True, text=True).stdout
  return list(csv.DictReader(io.StringIO(out)))


def call(url: str, key: str, request_id: str) -> tuple[dict, bool]:
  """(usage, replayed) of the call `request_id` names: "tT-N", streamed
  for odd N; the same body whenever it is retried."""
  body = {"model": "char", "prompt": "ROMEO:", "max_tokens": 12,
          "seed": len(request_id), "stream": int(request_id[-1]) % 2 == 1,
          "stream_options": {"include_usage": True}}
  headers = {"Authorization": f"Bearer {key}", "X-Request-Id": request_id}
  if not body["stream"]:
    answer = httpx.post(url + "/v1/completions", json=body, headers=headers,
                        timeout=30)
    answer.raise_for_status()
    return answer.json()["usage"], "x-replayed" in answer.headers
  usage, done = None, False
  with httpx.stream("POST", url + "/v1/completions", json=body,
                    headers=headers, timeout=30) as answer:
    answer.raise_for_status()
    for line in answer.iter_lines():
      if line == "data: [DONE]":
        done = True
      elif line.startswith("data: ") and '"usage"' in line:
        usage = json.loads(line[6:])["usage"]
  if not (done and usage):
    raise httpx.ReadError("the stream ended early")
  return usage, "x-replayed" in answer.headers


def _retry(url: str, key: str, request_id: str) -> tuple[dict, bool]:
  """The call again until its earlier try's hold has expired."""
  for _ in range(60):
    try:
      return call(url, key, request_id)
    except httpx.HTTPStatusError as e:
      if e.response.status_code != 409:
        raise
      time.sleep(int(e.response.headers["retry-after"]))
  raise AssertionError(f"{request_id} stayed in progress")


class _Clients:
  """Threads that call the server until stopped; what each call returned."""

  def __init__(self, url: str, key: str, count: int):
    self.url, self.key = url, key
    self.received, self.failed = {}, set()  # Request id -> usage; ids.
    self.stop = threading.Event()
    self.threads = [threading.Thread(target=self._loop, args=(i,))
                    for i in range(count)]
    for thread in self.threads:
      thread.start()

  def _loop(self, thread: int) -> None:
    calls = 0
    while not self.stop.is_set():
      request_id = f"t{thread}-{calls}"
      calls += 1
      try:
        self.received[request_id] = call(self.url, self.key, request_id)[0]
      except httpx.HTTPError:
        self.failed.add(request_id)
        if self.stop.wait(0.05):
          return

  def join(self) -> None:
    self.stop.set()
    for thread in self.threads:
      thread.join(60)


def _check_exact(db: str, received: dict, failed: set) -> list:
  rows = Ledger(db).rows()
  by_id = {r["request_id"]: r for r in rows}
  assert len(by_id) == len(rows)  # One row per call.
  for request_id, usage in received.items():
    row = by_id[request_id]
    assert (row["input_units"], row["output_units"], row["status"]) == (
        usage["prompt_tokens"], usage["completion_tokens"], 200)
  # The one gap no ordering closes: a row committed in the instant before
  # the kill whose answer had not left yet. Such a row can only be a whole
  # served call, and only the call each client had in flight at the kill.
  in_flight = {min(ids, key=lambda i: int(i.split("-")[1])) for ids in (
      [i for i in failed if i.startswith(f"t{t}-")]
      for t in {i.split("-")[0][1:] for i in failed})}
  cut = failed & set(by_id)
  assert cut <= in_flight, "a call that failed before the kill was billed"
  assert all(by_id[i]["status"] == 200 and by_id[i]["output_units"] == 12
             for i in cut)
  assert set(by_id) == set(received) | cut
  return rows, cut


@pytest.mark.slow
def test_billing_is_exact_through_kill_9_a_restart_and_retries(servable,
                                                               tmp_path):
  db = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
  key = process.create_key(db, "load")
  server = process.Server([servable("char")], names=["char"], db=db,
                          log=str(tmp_path / "server.log"),
                          args=["--config.slots=4",
                                "--config.prices.default.per_call=0.001"])
  clients = _Clients(server.url, key, 6)
  deadline = time.monotonic() + 120
  while len(clients.received) < 24 and time.monotonic() < deadline:
    time.sleep(0.05)
  server.process.send_signal(signal.SIGKILL)
  server.process.wait()
  clients.join()
  assert len(clients.received) >= 24 and clients.failed
  rows, cut = _check_exact(db, clients.received, clients.failed)
  price = Price(0.001, 0.0005, 0.0015)
  invoice = _invoice(db)
  billed = list(clients.received.values()) + [
      {"prompt_tokens": 6, "completion_tokens": 12}] * len(cut)
  assert len(invoice) == 1 and int(invoice[0]["calls"]) == len(rows)
  assert int(invoice[0]["input_units"]) == sum(
      u["prompt_tokens"] for u in billed)
  assert int(invoice[0]["output_units"]) == sum(
      u["completion_tokens"] for u in billed)
  assert round(float(invoice[0]["amount_usd"]) * NANO) == sum(
      price.nanousd(u["prompt_tokens"], u["completion_tokens"])
      for u in billed)
  # Restarted on the same ledger, the clients retry what failed: the calls
  # billed before the kill replay their answers, the others are served
  # now; every call is billed once, as its client finally received it.
  with process.Server([servable("char")], names=["char"], db=db,
                      log=str(tmp_path / "server2.log"),
                      args=["--config.hold_seconds=2"]) as again:
    retried = {i: _retry(again.url, key, i) for i in sorted(clients.failed)}
  assert {i for i, (_, replayed) in retried.items() if replayed} == cut
  received = {**clients.received,
              **{i: usage for i, (usage, _) in retried.items()}}
  after = Ledger(db).rows()
  assert len(after) == len(rows) + len(clients.failed - cut)
  assert {r["request_id"]: (r["input_units"], r["output_units"])
          for r in after} == {i: (u["prompt_tokens"], u["completion_tokens"])
                              for i, u in received.items()}


@pytest.mark.slow
def test_three_servers_on_one_postgresql_ledger_keep_every_limit(
    servable, postgres, tmp_path):
  """Concurrent calls spread over three processes: a key never passes its
  quota, its credit or its rate, whichever process serves it."""
  keys = {"quota": process.create_key(postgres, "q", "--quota-tokens", "100"),
          "credit": process.create_key(postgres, "c", "--credit", "0.0081"),
          "rate": process.create_key(postgres, "r", "--rate", "6")}
  with concurrent.futures.ThreadPoolExecutor(3) as pool:  # Start together.
    servers = list(pool.map(lambda i: process.Server(
        [servable("char")], names=["char"], db=postgres,
        log=str(tmp_path / f"server{i}.log"),
        args=["--config.slots=2", "--config.prices.default.per_call=0.001"]),
                            range(3)))
  body = {"model": "char", "prompt": "ABCD", "max_tokens": 6}  # 10 tokens.

  def post(job):
    name, i = job
    return name, httpx.post(
        servers[i % 3].url + "/v1/completions", json=body, timeout=60,
        headers={"Authorization": f"Bearer {keys[name]}"}).status_code
  started = time.monotonic()
  try:
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
      results = list(pool.map(post, [(n, i) for i in range(24)
                                     for n in keys]))
  finally:
    for server in servers:
      server.stop()
  elapsed = time.monotonic() - started
  served = {n: sum(1 for m, s in results if m == n and s == 200)
            for n in keys}
  # 10 calls of 10 tokens fill 100; $0.001011 a call: 8 fit in $0.0081;
  # 6 a minute: a full bucket of 6, refilled by one each 10 s.
  assert served["quota"] == 10 and served["credit"] == 8
  assert 6 <= served["rate"] <= 6 + int(elapsed / 10) + 1
  assert sorted({s for n, s in results if n != "rate"}) == [200, 402, 429]
  ledger = Ledger(postgres)
  totals = {key.name: ledger.spent(key.id) for key, _ in ledger.list_keys()}
  assert totals["q"][0] == 100 and totals["c"][1] == 8 * 1_011_000
  invoice = _invoice(postgres)
  assert {(r["name"], r["calls"]) for r in invoice} == {
      ("q", "10"), ("c", "8"), ("r", str(served["rate"]))}


def test_a_postgresql_ledger_of_the_earlier_version_is_upgraded(postgres):
  _write_old_ledger(postgres)
  _check_upgraded(postgres)


def test_report_totals_each_key_over_the_days_asked(tmp_path, capsys):
  db = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
  ledger = Ledger(db)
  price = Price(per_call=0.01, per_1k_output=0.002)
  for name, calls in (("acme", 3), ("zeta", 1)):
    key, _ = ledger.create_key(name)
    for i in range(calls):
      ledger.record(request_id=f"{name}-{i}", key_id=key.id, model="gpt",
                    endpoint="completions", unit="tokens", input_units=5,
                    output_units=500, latency_ms=1.0, status=200,
                    price_nanousd=price.nanousd(5, 500))
  assert ledger.spent(key.id) == (505, 11_000_000)  # zeta's running totals.
  billing.main(["--db", db, "report", "--from", "2000-01-01", "--to",
                "2100-12-31"])
  text = capsys.readouterr().out
  assert "total acme" in text and "0.033000000" in text
  assert "0.011000000" in text
  billing.main(["--db", db, "report", "--from", "2001-01-01", "--to",
                "2001-01-31", "--csv"])
  assert capsys.readouterr().out.strip().splitlines() == [
      "name,prefix,model,unit,calls,input_units,output_units,amount_usd"]


def _write_old_ledger(url: str) -> None:
  """A ledger as the version before key-scoped request ids wrote it: its
  tables, a key and one usage row."""
  old = sa.MetaData()
  keys = sa.Table(
      "api_keys", old, sa.Column("id", sa.Integer, primary_key=True),
      *(sa.Column(n, sa.String(l), nullable=False) for n, l in (
          ("name", 200), ("prefix", 16))),
      sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
      sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
      sa.Column("revoked_at", sa.DateTime(timezone=True)),
      sa.Column("quota_tokens", sa.BigInteger),
      sa.Column("rate_per_minute", sa.Float),
      sa.Column("credit_nanousd", sa.BigInteger),
      sa.Column("used_tokens", sa.BigInteger, nullable=False),
      sa.Column("spent_nanousd", sa.BigInteger, nullable=False))
  usage = sa.Table(
      "usage", old, sa.Column("id", sa.Integer, primary_key=True),
      sa.Column("request_id", sa.String(100), nullable=False, unique=True),
      sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"),
                nullable=False, index=True),
      *(sa.Column(n, sa.String(l), nullable=False) for n, l in (
          ("model", 200), ("endpoint", 50), ("unit", 10))),
      *(sa.Column(n, sa.BigInteger, nullable=False) for n in (
          "input_units", "output_units")),
      sa.Column("latency_ms", sa.Float, nullable=False),
      sa.Column("status", sa.Integer, nullable=False),
      sa.Column("price_nanousd", sa.BigInteger, nullable=False),
      sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                index=True))
  engine = sa.create_engine(url)
  old.create_all(engine)
  with engine.begin() as db:
    key_id = db.execute(keys.insert().values(
        name="old", prefix="bmj-old", key_hash="h" * 64,
        created_at=datetime.datetime.now(datetime.timezone.utc),
        quota_tokens=100, used_tokens=5, spent_nanousd=7)
                        ).inserted_primary_key[0]
    db.execute(usage.insert().values(
        request_id="order-1", key_id=key_id, model="m", endpoint="completions",
        unit="tokens", input_units=2, output_units=3, latency_ms=1.0,
        status=200, price_nanousd=7,
        created_at=datetime.datetime.now(datetime.timezone.utc)))
  engine.dispose()


def _check_upgraded(url: str) -> None:
  ledger = Ledger(url)
  Ledger(url)  # A second open finds nothing to upgrade.
  assert [r["request_id"] for r in ledger.rows()] == ["order-1"]
  old_key = ledger.list_keys()[0][0]
  assert not old_key.admin  # Keys from before admin keys read their own.
  with pytest.raises(Billed):  # Its billed id is still its.
    ledger.claim(old_key.id, "order-1", 1, 0, 60).result()
  hold = ledger.claim(old_key.id, "order-2", 95, 0, 60).result()
  with pytest.raises(OverLimit):  # 5 used + 95 held of 100.
    ledger.claim(old_key.id, "order-3", 1, 0, 60).result()
  ledger.release(hold).result()
  new_key, _ = ledger.create_key("new")
  ledger.record(request_id="order-1", key_id=new_key.id, model="m",
                endpoint="completions", unit="tokens", input_units=1,
                output_units=1, latency_ms=1.0, status=200, price_nanousd=1)
  assert len(ledger.rows()) == 2 and ledger.spent(old_key.id) == (5, 7)


def test_a_ledger_of_the_earlier_version_is_upgraded_in_place(tmp_path):
  url = f"sqlite:///{tmp_path / 'old.sqlite'}"
  _write_old_ledger(url)
  _check_upgraded(url)


def test_holds_of_a_dead_server_expire_and_free_their_key(tmp_path):
  ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
  key, _ = ledger.create_key("k", quota_tokens=10)
  ledger.claim(key.id, "lost", 10, 0, 0.05).result()  # Its server died.
  with pytest.raises(InFlight):
    ledger.claim(key.id, "lost", 10, 0, 60).result()
  with pytest.raises(OverLimit):
    ledger.claim(key.id, "other", 1, 0, 60).result()
  time.sleep(0.1)
  retried = ledger.claim(key.id, "lost", 10, 0, 60).result()  # Swept.
  ledger.release(retried).result()
  ledger.claim(key.id, "other", 10, 0, 60).result()
  with ledger.engine.connect() as db:
    assert db.execute(sa.select(tables.keys.c.held_tokens)).scalar() == 10
    assert db.execute(sa.select(sa.func.count()).select_from(
        tables.holds)).scalar() == 1


def test_a_caller_that_leaves_mid_write_keeps_no_hold_and_stops_nothing(
    tmp_path):
  """A task cancelled while its claim is queued (its client left): the
  writer thread survives, and the hold it got is released."""
  ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
  key, _ = ledger.create_key("k", quota_tokens=10)
  gate = Gate(ledger, {"default": Price()}, settings.defaults())
  call = types.SimpleNamespace(key=key, model="m", request_id="gone",
                               client_id=False)

  async def leave():
    task = asyncio.ensure_future(gate.hold(call, 10, 0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
      await task
  asyncio.run(leave())
  ledger.renew([], 1).result()  # Queued after the claim: it has run.
  for _ in range(50):
    with ledger.engine.connect() as db:
      held = db.execute(sa.select(tables.keys.c.held_tokens)).scalar()
    if held == 0:
      break
    time.sleep(0.1)
  assert held == 0
  assert ledger.claim(key.id, "next", 10, 0, 60).result().tokens == 10


def test_answers_are_kept_for_replays_until_their_time_is_up(tmp_path):
  ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
  key, _ = ledger.create_key("k")
  for request_id in ("old", "new"):
    ledger.record(request_id=request_id, key_id=key.id, model="m",
                  endpoint="e", unit="tokens", input_units=1, output_units=1,
                  latency_ms=1.0, status=200, price_nanousd=1,
                  answer='{"a": 1}')
  kept = lambda: {r["request_id"] for r in ledger.rows() if r["answer"]}
  between = ledger.rows()[1]["created_at"]
  assert ledger.forget_answers(between).result() == 1 and kept() == {"new"}
  # From `since` on only: what is older was cleared by the run before.
  later = between + datetime.timedelta(hours=1)
  assert ledger.forget_answers(later, since=later).result() == 0
  assert ledger.forget_answers(later, since=between).result() == 1
  assert kept() == set() and len(ledger.rows()) == 2  # Rows stay.


def test_key_names_are_checked_and_listed_safely(tmp_path, capsys):
  db = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
  with pytest.raises(SystemExit):
    billing.main(["--db", db, "keys", "create", "--name", "n" * 300])
  assert "1 to 100 printable" in capsys.readouterr().err
  ledger = Ledger(db)
  with ledger.engine.begin() as db_:  # A name written before the check.
    db_.execute(tables.keys.insert().values(
        name="evil\x1b[2J\x07", prefix="bmj-evil", key_hash="e" * 64,
        created_at=datetime.datetime.now(datetime.timezone.utc),
        used_tokens=0, spent_nanousd=0))
  billing.main(["--db", db, "keys", "list"])
  listing = capsys.readouterr().out
  assert "\x1b" not in listing and "evil\\x1b[2J\\x07" in listing


def test_invoices_show_exact_amounts(tmp_path, capsys):
  db = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
  ledger = Ledger(db)
  key, _ = ledger.create_key("exact")
  ledger.record(request_id="r", key_id=key.id, model="m", endpoint="e",
                unit="tokens", input_units=1, output_units=1, latency_ms=1.0,
                status=200, price_nanousd=4_751_500)
  billing.main(["--db", db, "report", "--from", "2000-01-01", "--to",
                "2100-01-01", "--csv"])
  assert capsys.readouterr().out.strip().endswith(",0.004751500")


def test_suggested_price_follows_measured_throughput(tmp_path, capsys,
                                                     servable):
  with open(tmp_path / "load_test.json", "w") as f:
    json.dump({"device": "test CPU", "rows": [
        {"batching": True, "concurrency": 32, "output_tokens_per_s": 2000.0},
        {"batching": False, "concurrency": 32,
         "output_tokens_per_s": 9000.0}]}, f)
  billing.main(["suggest-price", "--workdir", str(tmp_path),
                "--device-hour-usd", "0.72", "--margin", "0.5"])
  text = capsys.readouterr().out
  # 0.72 $/h / (2000 tok/s x 3600 s) x 1e6 = $0.1 per 1M tokens; x 1.5.
  assert "$0.1000 per 1M" in text and "$0.1500 per 1M" in text
  billing.main(["suggest-price", "--workdir", servable("char"),
                "--device-hour-usd", "2", "--accelerator", "NVIDIA H100",
                "--mfu", "0.3"])
  assert "NVIDIA H100 at 30% MFU" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    billing.main(["suggest-price", "--workdir", str(tmp_path / "none"),
                  "--device-hour-usd", "1"])
  assert "No load test" in capsys.readouterr().err
