"""The console: its usage routes over HTTP, and the page in a real headless
browser (Debian's chromium through its chromedriver) against a real server."""
import base64
import datetime
import json
import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from bigmodel_jax.serving import process, tables, usage
from bigmodel_jax.serving.ledger import Ledger, usd
from conftest import model_server



def _today() -> str:
  """The UTC day now (a run may cross midnight: nothing caches it)."""
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def console(servable, tmp_path_factory):
  """A server of four kinds of model, a customer's key and an admin key."""
  with model_server(servable, tmp_path_factory.mktemp("console"),
                    ["char", "chat", "bert", "vit"],
                    ["--config.slots=2",
                     "--config.prices.default.per_call=0.001"]) as s:
    s.key = process.create_key(s.db, "alice", "--quota-tokens", "100000",
                               "--rate", "600")
    s.admin = process.create_key(s.db, "ops", "--admin")
    s.first_day = _today()
    yield s


def _get(console, path, secret=None, **params):
  headers = ({} if secret == "" else
             {"Authorization": f"Bearer {secret or console.key}"})
  return httpx.get(console.url + path, params=params, headers=headers,
                   timeout=60)


def _complete(console, key, prompt="ROMEO:", **extra):
  answer = httpx.post(console.url + "/v1/completions", json={
      "model": "char", "prompt": prompt, "max_tokens": 8, "temperature": 0,
      **extra}, headers={"Authorization": f"Bearer {key}"}, timeout=60)
  assert answer.status_code == 200, answer.text
  return answer


def _report(db, days: tuple, *args) -> str:
  """`billing report` of the UTC `days` (first, last)."""
  return subprocess.run(
      [sys.executable, "-m", "bigmodel_jax.billing", "--db", db, "report",
       "--from", days[0], "--to", days[1], *args], check=True,
      capture_output=True).stdout.decode()


def _key_id(db, name) -> int:
  return next(k.id for k, _ in Ledger(db).list_keys() if k.name == name)


def _lines_of(csv_text: str, name: str) -> str:
  header, *lines = csv_text.splitlines(keepends=True)
  return header + "".join(line for line in lines if line.startswith(name + ","))


# The usage routes, over HTTP.


def test_usage_routes_take_keys_and_limits_like_the_api_and_answer_json(
    console):
  for key, code in [("", "missing_key"), ("bmj-not-a-key", "invalid_api_key")]:
    answer = _get(console, "/v1/usage/calls", key)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == code
  slow = process.create_key(console.db, "slow-reader", "--rate", "2")
  assert [_get(console, "/v1/usage/keys", slow).status_code
          for _ in range(3)] == [200, 200, 429]
  refused = _get(console, "/v1/usage/keys", slow)
  assert refused.json()["error"]["type"] == "rate_limit_error"
  assert int(refused.headers["retry-after"]) >= 1
  for path, params, status, code in [
      ("/v1/usage/daily", {"from": "2026-13-01"}, 400, "invalid_date"),
      ("/v1/usage/daily", {"from": _today(), "to": "2020-01-01"}, 400,
       "invalid_period"),
      ("/v1/usage/invoices", {"from": "2020-01-01", "to": "2022-01-01"}, 400,
       "invalid_period"),
      ("/v1/usage/invoices", {"format": "xml"}, 400, "invalid_format"),
      ("/v1/usage/calls", {"limit": "0"}, 400, "invalid_limit"),
      ("/v1/usage/calls", {"limit": "1e9"}, 400, "invalid_limit"),
      ("/v1/usage/calls", {"request_id": "a\x00b"}, 400, "invalid_parameter"),
      ("/v1/usage/calls", {"key": console.admin[:12]}, 403, "not_admin")]:
    answer = _get(console, path, **params)
    assert answer.status_code == status, (path, params, answer.text)
    assert answer.json()["error"]["code"] == code
  answer = _get(console, "/v1/usage/calls", console.admin, key="bmj-unknown0")
  assert answer.json()["error"]["code"] == "key_not_found"


def test_a_key_reads_only_its_own_usage_and_an_admin_key_reads_every_key(
    console):
  bob = process.create_key(console.db, "bob")
  mine = {_complete(console, console.key).headers["x-request-id"],
          _complete(console, console.key, "JULIET:").headers["x-request-id"]}
  theirs = _complete(console, bob).headers["x-request-id"]

  def ids(secret, **params):
    return {c["request_id"] for c in _get(console, "/v1/usage/calls", secret,
                                          limit=200, **params).json()["data"]}
  assert mine <= ids(console.key) and theirs not in ids(console.key)
  assert ids(bob) == {theirs}
  assert mine | {theirs} <= ids(console.admin)
  assert ids(console.admin, key=bob[:12]) == {theirs}
  assert [k["name"] for k in _get(console, "/v1/usage/keys", bob).json()[
      "data"]] == ["bob"]
  assert {"alice", "bob", "ops"} <= {k["name"] for k in _get(
      console, "/v1/usage/keys", console.admin).json()["data"]}

  rows = Ledger(console.db).rows()
  for key, name in [(console.key, "alice"), (bob, "bob")]:
    key_id = _key_id(console.db, name)
    own = [r for r in rows if r["key_id"] == key_id]
    days = _get(console, "/v1/usage/daily", key).json()["data"]
    assert {d["day"] for d in days} <= {console.first_day, _today()}
    assert sum(d["calls"] for d in days) == len(own)
    assert sum(float(d["amount_usd"]) for d in days) == pytest.approx(
        float(usd(sum(r["price_nanousd"] for r in own))))
    assert sum(d["output_units"] for d in days) == sum(
        r["output_units"] for r in own)
    state = _get(console, "/v1/usage/keys", key).json()["data"][0]
    assert state["used_tokens"] == sum(r["input_units"] + r["output_units"]
                                       for r in own)
  days = console.first_day, _today()
  report = _report(console.db, days, "--csv")
  assert _get(console, "/v1/usage/invoices", console.admin, format="csv",
              **{"from": days[0], "to": days[1]}).text == report
  assert _get(console, "/v1/usage/invoices", bob, format="csv",
              **{"from": days[0], "to": days[1]}).text == _lines_of(
                  report, "bob")


def _usage_seen(url: str) -> dict:
  """What the usage reads return for three calls around a UTC midnight."""
  ledger = Ledger(url)
  a, _ = ledger.create_key("a", rate_per_minute=30, quota_tokens=1000)
  b, _ = ledger.create_key("b")
  utc = datetime.timezone.utc
  with ledger.engine.begin() as db:
    for i, (key, when) in enumerate([
        (a, datetime.datetime(2026, 11, 30, 23, 59, 59, tzinfo=utc)),
        (a, datetime.datetime(2026, 12, 1, 0, 0, 0, tzinfo=utc)),
        (b, datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=utc))]):
      db.execute(tables.usage.insert().values(
          request_id=f"r{i}", key_id=key.id, model="m", endpoint="completions",
          unit="tokens", input_units=i + 1, output_units=10, latency_ms=1.0,
          status=200, price_nanousd=1000 * (i + 1), created_at=when))
  start = datetime.datetime(2026, 11, 30, tzinfo=utc)
  end = datetime.datetime(2026, 12, 3, tzinfo=utc)
  seen = {"daily": usage.daily(ledger.engine, start, end),
          "daily a": usage.daily(ledger.engine, start, end, a.id),
          "calls": usage.calls(ledger.engine, limit=2),
          "call r0": usage.calls(ledger.engine, a.id, request_id="r0"),
          "states": usage.key_states(ledger.engine),
          "csv": usage.invoice_csv(ledger.invoices(start, end, b.id))
          .replace(b.prefix, "PREFIX")}
  for row in seen["calls"] + seen["call r0"] + seen["states"]:
    row["prefix"] = "PREFIX"  # Random, as the keys' creation times.
  for state in seen["states"]:
    del state["created_at"]
  return seen


def test_usage_reads_agree_on_sqlite_and_postgresql_in_utc_days(
    tmp_path, postgres, monkeypatch):
  monkeypatch.setenv("PGTZ", "America/Los_Angeles")  # A session not in UTC.
  seen = _usage_seen(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
  assert seen == _usage_seen(postgres)
  assert [(d["day"], d["calls"], d["amount_usd"]) for d in seen["daily"]] == [
      ("2026-11-30", 1, "0.000001000"), ("2026-12-01", 2, "0.000005000")]
  assert [d["day"] for d in seen["daily a"]] == ["2026-11-30", "2026-12-01"]
  assert [c["request_id"] for c in seen["calls"]] == ["r2", "r1"]
  assert seen["calls"][0]["created_at"] == "2026-12-01T12:00:00+00:00"
  assert [c["name"] for c in seen["call r0"]] == ["a"]
  assert seen["states"][0]["rate_left"] == 30
  assert seen["csv"].splitlines()[1:] == ["b,PREFIX,m,tokens,1,3,10,"
                                          "0.000003000"]


def test_the_page_comes_from_the_package_under_a_strict_policy(console):
  page = httpx.get(console.url + "/console", timeout=30)
  assert page.status_code == 200 and "text/html" in page.headers[
      "content-type"]
  policy = page.headers["content-security-policy"]
  assert "default-src 'none'" in policy and "script-src 'self'" in policy
  assert "frame-ancestors 'none'" in policy
  for asset in ("/console/console.js", "/console/console.css"):
    assert httpx.get(console.url + asset, timeout=30).status_code == 200
  missing = httpx.get(console.url + "/console/../../etc/passwd", timeout=30)
  assert missing.status_code == 404 and missing.json()["error"]["message"]
  assert "/console" not in json.dumps(httpx.get(
      console.url + "/openapi.json", timeout=30).json()["paths"])


# The page, in a browser.


def _executables() -> tuple[str, str] | None:
  browser = next(filter(None, map(shutil.which, [
      "chromium", "chromium-browser", "google-chrome"])), None)
  driver = shutil.which("chromedriver")
  return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  """Headless chromium (its network log kept) downloading into a folder."""
  found = _executables()
  if found is None:
    if os.environ.get("BIGMODEL_JAX_REQUIRE_BROWSER"):
      pytest.fail("chromium and chromedriver are not installed "
                  "(apt-get install chromium chromium-driver).")
    pytest.skip("chromium is not installed here; CI installs it.")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = found[0]
  for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--window-size=1200,1000"):
    options.add_argument(argument)
  options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
  driver = webdriver.Chrome(service=Service(found[1]), options=options)
  driver.downloads = tmp_path_factory.mktemp("downloads")
  driver.execute_cdp_cmd("Page.setDownloadBehavior", {
      "behavior": "allow", "downloadPath": str(driver.downloads)})
  driver.implicitly_wait(0)
  yield driver
  driver.quit()


class Page:
  """The console in `driver`: waits, fields and screenshots."""

  def __init__(self, driver, console, shots):
    from selenium.webdriver.support.ui import WebDriverWait
    self.driver, self.console, self.shots = driver, console, shots
    self.wait = WebDriverWait(driver, 60)
    driver.get(console.url + "/console")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()

  def __call__(self, element_id):
    return self.driver.find_element("id", element_id)

  def until(self, condition, message=""):
    return self.wait.until(lambda _: condition(), message)

  def visible(self, element_id) -> bool:
    return self(element_id).is_displayed()

  def shot(self, name):
    """A screenshot of the whole page, beyond the window."""
    size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})[
        "cssContentSize"]
    png = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": size["width"], "height": size["height"],
            "scale": 1}})["data"]
    (self.shots / f"{name}.png").write_bytes(base64.b64decode(png))

  def sign_in(self, key):
    """Signs in and waits for the tabs (or the sign-in error)."""
    self("key").clear()
    self("key").send_keys(key)
    self("sign-in-button").click()
    self.until(lambda: self.visible("tabs") or self("sign-in-error").text,
               "signing in did not end")

  def choose(self, select_id, value):
    from selenium.webdriver.support.ui import Select
    self.until(lambda: value in [o.get_attribute("value") for o in Select(
        self(select_id)).options], f"no {value} in #{select_id}")
    Select(self(select_id)).select_by_value(value)

  def loaded(self):
    """Waits until the usage tab has loaded everything it asked for."""
    self.until(lambda: self("usage").get_attribute("aria-busy") == "false",
               "the usage tab did not load")

  def show_usage(self):
    self("tab-usage").click()
    self.loaded()

  def run(self, text):
    self("prompt").clear()
    self("prompt").send_keys(text)
    self("run").click()
    self.until(lambda: self.visible("call-cost") or self("playground-error")
               .text, "the call did not end")
    assert not self("playground-error").text
    return self("cost-request").text

  def table(self, element_id) -> list[list[str]]:
    """A table's body cells, read in one step (the page may redraw it)."""
    return self.driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), "
        "row => Array.from(row.cells, cell => cell.textContent))",
        f"#{element_id} tbody tr")

  def invoice_days(self) -> tuple:
    """The invoice period the page asks for (first, last day)."""
    return (self("invoice-from").get_attribute("value"),
            self("invoice-to").get_attribute("value"))

  def downloaded(self, suffix=".csv") -> bytes:
    folder = self.driver.downloads
    self.until(lambda: [p for p in folder.iterdir() if p.name.endswith(
        suffix)], "nothing was downloaded")
    [path] = [p for p in folder.iterdir() if p.name.endswith(suffix)]
    data = path.read_bytes()
    path.unlink()
    return data


def _requested_urls(driver) -> list[str]:
  return [message["params"]["request"]["url"]
          for entry in driver.get_log("performance")
          for message in [json.loads(entry["message"])["message"]]
          if message["method"] == "Network.requestWillBeSent"]


def test_a_customer_signs_in_streams_a_prompt_and_sees_the_call_billed(
    console, browser, tmp_path):
  page = Page(browser, console, tmp_path)
  page.shot("signed-out")
  page.sign_in("bmj-wrong-key")
  assert page("sign-in-error").text == "Invalid or revoked API key."
  assert not page.visible("tabs") and not page.visible("usage")

  page.sign_in(console.key)
  page.choose("model", "char")
  page("max-tokens").clear()
  page("max-tokens").send_keys("24")
  page("temperature").clear()
  page("temperature").send_keys("0")
  request_id = page.run("ROMEO:")
  page.shot("playground")
  pieces = page("output").find_elements("class name", "piece")
  whole = _complete(console, console.admin, max_tokens=24).json()
  assert len(pieces) > 1, "the answer did not arrive in pieces"
  assert page("output").get_attribute("textContent") == whole["choices"][0][
      "text"]
  [row] = [r for r in Ledger(console.db).rows()
           if r["request_id"] == request_id]
  assert page("cost-price").get_attribute("data-usd") == usd(
      row["price_nanousd"])
  assert page("cost-input").text == f"{row['input_units']} tokens"
  assert page("cost-output").text == f"{row['output_units']} tokens" == (
      f"{whole['usage']['completion_tokens']} tokens")

  page.show_usage()
  assert any(request_id in r for r in page.table("calls-table"))
  used, _ = Ledger(console.db).spent(_key_id(console.db, "alice"))
  assert f"{used} of 100000 tokens used, 0 held" in page("key-state").text
  assert "Rate 600/min" in page("key-state").text
  assert len(page("charts").find_elements("css selector", "svg rect")) >= 3
  page("invoice-csv").click()
  report = _report(console.db, page.invoice_days(), "--csv")
  assert page.downloaded().decode() == _lines_of(report, "alice")
  page.shot("usage")
  assert not page.visible("admin")

  urls = _requested_urls(browser)
  assert urls and not [u for u in urls if not u.startswith((  # No origin
      console.url + "/", "blob:" + console.url + "/", "data:"))]  # but ours.
  assert not any(console.key in u or console.key[4:] in u for u in urls)
  assert console.key not in browser.current_url


def test_chat_embeddings_and_image_classes_in_the_playground(
    console, browser, tmp_path):
  page = Page(browser, console, tmp_path)
  page.sign_in(console.key)
  page.choose("model", "chat")
  page.choose("endpoint", "chat")
  page("max-tokens").clear()
  page("max-tokens").send_keys("8")
  page.run("Hello")
  page.run("And then?")
  messages = page("chat-log").find_elements("class name", "message")
  assert [m.get_attribute("class") for m in messages] == [
      "message user", "message assistant"] * 2
  assert messages[2].text == "And then?"

  page.choose("model", "bert")
  page.choose("endpoint", "classify")
  page.run("a gripping, funny film\na dull mess")
  direct = httpx.post(console.url + "/v1/classify", json={
      "model": "bert", "input": ["a gripping, funny film", "a dull mess"]},
      headers={"Authorization": f"Bearer {console.key}"}, timeout=60).json()
  for item in direct["data"]:
    assert f"#{item['index']}  {item['label']}" in page("output").text
  page.choose("endpoint", "embeddings")
  page.run("one\ntwo")
  assert "cosine(#0, #1)" in page("output").text

  page.choose("model", "vit")
  assert not page.visible("prompt") and page.visible("image")
  image = tmp_path / "digit.png"
  Image.fromarray(np.full((8, 8), 255, np.uint8)).save(image)
  page("image").send_keys(str(image))
  page("run").click()
  page.until(lambda: page.visible("call-cost"), "no answer for the image")
  assert page("cost-input").text == "1 images"
  page.shot("classify")


def test_an_admin_sees_every_key_and_names_are_shown_as_text(
    console, browser, tmp_path):
  hostile = process.create_key(console.db, "<img src=x onerror=alert(1)>")
  _complete(console, hostile)
  page = Page(browser, console, tmp_path)
  page.sign_in(console.admin)
  page.choose("model", "char")
  request_id = page.run("KING:")  # Its price is found among its own calls.
  [row] = [r for r in Ledger(console.db).rows() if r["request_id"] ==
           request_id and r["key_id"] == _key_id(console.db, "ops")]
  assert page("cost-price").get_attribute("data-usd") == usd(
      row["price_nanousd"])
  page.show_usage()
  assert page.visible("admin")
  names = [row[0] for row in page.table("keys-table")]
  assert {"alice", "ops", "<img src=x onerror=alert(1)>"} <= set(names)
  assert not browser.find_elements("css selector", "#usage img")
  calls = page.table("calls-table")
  assert {"alice", "<img src=x onerror=alert(1)>"} <= {r[1] for r in calls}
  page("invoice-csv").click()
  assert page.downloaded().decode() == _report(console.db,
                                              page.invoice_days(), "--csv")
  page.shot("admin")

  page.choose("key-filter", hostile[:12])
  page.loaded()
  assert {r[1] for r in page.table("calls-table")} == {
      "<img src=x onerror=alert(1)>"}
  page("sign-out").click()
  assert page.visible("sign-in") and not page.visible("usage")
  assert browser.execute_script(
      "return sessionStorage.length") == 0


def test_the_page_fits_a_phone_screen(console, browser, tmp_path):
  page = Page(browser, console, tmp_path)
  browser.set_window_size(390, 844)
  try:
    page.sign_in(console.key)
    for tab in ("playground", "usage"):
      page(f"tab-{tab}").click()
      if tab == "usage":
        page.loaded()
      assert page.visible(tab) and browser.execute_script(
          "return document.documentElement.scrollWidth <= window.innerWidth")
      page.shot(f"phone-{tab}")
  finally:
    browser.set_window_size(1200, 1000)
