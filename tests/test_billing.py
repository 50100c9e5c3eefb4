"""The ledger: keys stored as hashes, exact prices and invoices, exact
billing across a kill -9 and a restart, one PostgreSQL ledger shared by two
server processes."""
import concurrent.futures
import csv
import glob
import io
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import pytest

from bigmodel_jax import billing
from bigmodel_jax.serving import process
from bigmodel_jax.serving.ledger import NANO, Ledger, Price


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

  def _call(self, request_id: str, stream: bool) -> dict:
    body = {"model": "char", "prompt": "ROMEO:", "max_tokens": 12,
            "seed": len(request_id), "stream": stream,
            "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {self.key}",
               "X-Request-Id": request_id}
    if not stream:
      answer = httpx.post(self.url + "/v1/completions", json=body,
                          headers=headers, timeout=30)
      answer.raise_for_status()
      return answer.json()["usage"]
    usage, done = None, False
    with httpx.stream("POST", self.url + "/v1/completions", json=body,
                      headers=headers, timeout=30) as answer:
      answer.raise_for_status()
      for line in answer.iter_lines():
        if line == "data: [DONE]":
          done = True
        elif line.startswith("data: ") and '"usage"' in line:
          usage = json.loads(line[6:])["usage"]
    if not (done and usage):
      raise httpx.ReadError("the stream ended early")
    return usage

  def _loop(self, thread: int) -> None:
    calls = 0
    while not self.stop.is_set():
      request_id = f"t{thread}-{calls}"
      calls += 1
      try:
        self.received[request_id] = self._call(request_id, calls % 2 == 0)
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
def test_billing_is_exact_through_kill_9_and_a_restart(servable, tmp_path):
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
  # Restarted on the same ledger: the key works and the rows are kept.
  with process.Server([servable("char")], names=["char"], db=db,
                      log=str(tmp_path / "server2.log")) as again:
    answer = httpx.post(again.url + "/v1/completions", json={
        "model": "char", "prompt": "A", "max_tokens": 2},
                        headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200
  assert len(Ledger(db).rows()) == len(rows) + 1


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
      Ledger(url)
      break
    except Exception:  # noqa: BLE001 — not accepting connections yet.
      time.sleep(0.2)
  yield url
  server.terminate()
  server.wait(30)
  shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_servers_share_one_postgresql_ledger(servable, postgres,
                                                 tmp_path):
  key = process.create_key(postgres, "shared", "--quota-tokens", "60")
  body = {"model": "char", "prompt": "ABCD", "max_tokens": 6}  # 10 tokens.
  headers = {"Authorization": f"Bearer {key}"}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # Start together.
    servers = list(pool.map(lambda i: process.Server(
        [servable("char")], names=["char"], db=postgres,
        log=str(tmp_path / f"server{i}.log"), args=["--config.slots=2"]),
                            range(2)))
  try:
    statuses = [httpx.post(servers[i % 2].url + "/v1/completions", json=body,
                           headers=headers, timeout=60).status_code
                for i in range(7)]
  finally:
    for server in servers:
      server.stop()
  # Six calls of 10 tokens fill the quota, whichever process served them.
  assert statuses == [200] * 6 + [429]
  rows = Ledger(postgres).rows()
  assert len(rows) == 6 and {r["output_units"] for r in rows} == {6}
  invoice = _invoice(postgres)
  assert [(r["name"], r["calls"]) for r in invoice] == [("shared", "6")]


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
  assert "total acme" in text and "0.033000" in text and "0.011000" in text
  billing.main(["--db", db, "report", "--from", "2001-01-01", "--to",
                "2001-01-31", "--csv"])
  assert capsys.readouterr().out.strip().splitlines() == [
      "name,prefix,model,unit,calls,input_units,output_units,amount_usd"]


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
