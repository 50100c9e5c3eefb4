"""Who may call, and whether they may make this call.

Every call is authenticated by its bearer key (401; a valid key is looked
up again after `key_cache_seconds`, so a revocation takes effect within
that time) and rate-limited with a token bucket (429 with Retry-After).
Before any work, a call of a key with a quota or credit, or with a request
id of its client's, claims a hold in the ledger of the most it may use
(prompt + n x max_tokens): 429 over the quota, 402 over the credit, 409 if
the same id is in flight, or the ledger's Billed if it was billed (the API
replays the stored answer). Limits, holds and buckets live in the ledger's
database, so they hold for any number of calls and of server processes
sharing it. Holds are leased for `hold_seconds` and renewed while their
calls run, so those of a server that dies expire.
"""
import asyncio
import datetime
import logging
import math
import time

from bigmodel_jax.serving.ledger import Key, Ledger, Price, now, usd
from bigmodel_jax.serving.writes import Hold, InFlight, OverLimit


class ApiError(Exception):
  """An error answered as OpenAI's {"error": {...}} JSON with a status."""

  def __init__(self, status: int, message: str, kind: str,
               code: str | None = None, headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.kind = status, message, kind
    self.code, self.headers = code, headers or {}


class Gate:

  def __init__(self, ledger: Ledger, prices: dict, config):
    self.ledger, self.prices = ledger, prices
    self.key_cache_seconds = config.key_cache_seconds
    self.lease = config.hold_seconds
    self._known = {}  # Secret -> (key, time looked up).
    self._live = set()  # Ids of the holds of calls in flight here.
    self._forgotten = None  # Answers before this time are cleared.

  def price(self, model: str) -> Price:
    return self.prices.get(model, self.prices["default"])

  async def authenticate(self, authorization: str | None) -> Key:
    scheme, _, secret = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
      raise ApiError(401, "Missing API key: send it as 'Authorization: "
                     "Bearer KEY'.", "invalid_request_error", "missing_key")
    secret = secret.strip()
    key, when = self._known.get(secret, (None, 0.0))
    if time.monotonic() - when > self.key_cache_seconds:
      key = await asyncio.to_thread(self.ledger.authenticate, secret)
      if key is not None:
        self._known[secret] = (key, time.monotonic())
      else:
        self._known.pop(secret, None)
    if key is None:
      raise ApiError(401, "Invalid or revoked API key.",
                     "invalid_request_error", "invalid_api_key")
    return key

  async def check_rate(self, key: Key) -> None:
    """Takes one request from the key's bucket (capacity: one minute)."""
    if not key.rate_per_minute:
      return
    wait = await asyncio.wrap_future(self.ledger.take_rate(key.id))
    if wait > 0:
      seconds = math.ceil(wait)
      raise ApiError(429, f"Rate limit of {key.rate_per_minute:g} requests "
                     f"per minute reached; retry in {seconds} s.",
                     "rate_limit_error", "rate_limit_exceeded",
                     {"Retry-After": str(seconds)})

  async def hold(self, call, input_units: int, most_output: int
                 ) -> Hold | None:
    """Reserves the most this call may use, or raises 429 / 402 / 409, or
    Billed when its request id was billed (see module doc)."""
    key = call.key
    if (key.quota_tokens is None and key.credit_nanousd is None and
        not call.client_id):
      return None  # Nothing to enforce, nothing to replay.
    tokens = input_units + most_output
    money = self.price(call.model).nanousd(input_units, most_output)
    claimed = self.ledger.claim(key.id, call.request_id, tokens, money,
                                self.lease, call.client_id)
    try:
      hold = await asyncio.wrap_future(claimed)
    except asyncio.CancelledError:  # The call is gone: free what it got.
      claimed.add_done_callback(self._unclaim)
      raise
    except InFlight:
      raise ApiError(409, f"A call with X-Request-Id {call.request_id!r} is "
                     "in progress; retry once it has ended.",
                     "invalid_request_error", "request_in_progress",
                     {"Retry-After": "1"}) from None
    except OverLimit as e:
      raise _over_limit(e, tokens, money) from None
    self._live.add(hold.id)
    return hold

  def settled(self, hold: Hold | None) -> None:
    """The call's usage row settled its hold."""
    if hold is not None:
      self._live.discard(hold.id)

  def release(self, hold: Hold | None) -> None:
    """Frees a hold in the background; should that fail, it expires."""
    if hold is not None:
      self._live.discard(hold.id)
      self.ledger.release(hold).add_done_callback(self._released)

  def _unclaim(self, done) -> None:
    if done.exception() is None:
      self.ledger.release(done.result()).add_done_callback(self._released)

  def _released(self, done) -> None:
    if done.exception() is not None:
      logging.error("Releasing a hold failed (%s); it expires within %s s",
                    done.exception(), self.lease)

  async def keep_leases(self, replay_hours: float) -> None:
    """Renews this server's holds (every third of a lease) and forgets
    answers older than `replay_hours`, until cancelled."""
    while True:
      await asyncio.sleep(self.lease / 3)
      try:
        await asyncio.wrap_future(self.ledger.renew(list(self._live),
                                                    self.lease))
        cutoff = now() - datetime.timedelta(hours=replay_hours)
        await asyncio.wrap_future(self.ledger.forget_answers(
            cutoff, self._forgotten))
        self._forgotten = cutoff
      except Exception:  # noqa: BLE001 — a database hiccup: try again.
        logging.exception("Renewing holds failed")


def _over_limit(e: OverLimit, tokens: int, money: int) -> ApiError:
  if e.which == "quota":
    return ApiError(429, f"Token quota exhausted: {e.used} of {e.limit} "
                    f"used and {e.held} reserved by calls in flight; this "
                    f"call may use up to {tokens}.", "insufficient_quota",
                    "quota_exceeded")
  return ApiError(402, f"Prepaid credit exhausted: ${usd(e.used)} of "
                  f"${usd(e.limit)} spent and ${usd(e.held)} reserved by "
                  f"calls in flight; this call may cost up to ${usd(money)}.",
                  "insufficient_quota", "credit_exhausted")
