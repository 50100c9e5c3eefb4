"""Who may call, and whether they may make this call.

Every call is authenticated by its bearer key (401; a valid key is looked
up again after `key_cache_seconds`, so a revocation takes effect within
that time), rate-limited per key
with a token bucket (429 with Retry-After), and checked against the key's
token quota (429) and prepaid credit (402) with what the call may use at
most (prompt + n x max_tokens), counting this process's calls in flight, so
a key can never go over. Usage and money come from the ledger, so several
processes sharing one database see the same totals (limits on calls in
flight and the rate are per process).
"""
import asyncio
import collections
import math
import threading
import time

from bigmodel_jax.serving.ledger import NANO, Key, Ledger, Price


class ApiError(Exception):
  """An error answered as OpenAI's {"error": {...}} JSON with a status."""

  def __init__(self, status: int, message: str, kind: str,
               code: str | None = None, headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.kind = status, message, kind
    self.code, self.headers = code, headers or {}


class Gate:

  def __init__(self, ledger: Ledger, prices: dict, key_cache_seconds: float):
    self.ledger, self.prices = ledger, prices
    self.key_cache_seconds = key_cache_seconds
    self._known = {}  # Secret -> (key, time looked up).
    self._buckets = {}  # Key id -> (tokens left, time).
    self._held = collections.defaultdict(lambda: [0, 0])  # Tokens, nano-USD.
    self._lock = threading.Lock()

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

  def check_rate(self, key: Key) -> None:
    """Takes one request from the key's bucket (capacity: one minute)."""
    if not key.rate_per_minute:
      return
    rate = key.rate_per_minute / 60
    with self._lock:
      left, then = self._buckets.get(key.id, (key.rate_per_minute, None))
      now = time.monotonic()
      if then is not None:
        left = min(key.rate_per_minute, left + (now - then) * rate)
      if left < 1:
        self._buckets[key.id] = (left, now)
        wait = math.ceil((1 - left) / rate)
        raise ApiError(429, f"Rate limit of {key.rate_per_minute:g} requests "
                       f"per minute reached; retry in {wait} s.",
                       "rate_limit_error", "rate_limit_exceeded",
                       {"Retry-After": str(wait)})
      self._buckets[key.id] = (left - 1, now)

  async def hold(self, key: Key, model: str, input_units: int,
                 most_output: int) -> tuple:
    """Reserves the most this call may use, or raises 429/402."""
    if key.quota_tokens is None and key.credit_nanousd is None:
      return None
    tokens, spent = await asyncio.to_thread(self.ledger.spent, key.id)
    most = (input_units + most_output,
            self.price(model).nanousd(input_units, most_output))
    with self._lock:
      held = self._held[key.id]
      if (key.quota_tokens is not None and
          tokens + held[0] + most[0] > key.quota_tokens):
        raise ApiError(429, f"Token quota exhausted: {tokens + held[0]} of "
                       f"{key.quota_tokens} used, this call may use up to "
                       f"{most[0]}.", "insufficient_quota", "quota_exceeded")
      if (key.credit_nanousd is not None and
          spent + held[1] + most[1] > key.credit_nanousd):
        raise ApiError(402, f"Prepaid credit exhausted: ${(spent + held[1]) / NANO:.6f}"
                       f" of ${key.credit_nanousd / NANO:.6f} spent, this call "
                       f"may cost up to ${most[1] / NANO:.6f}.",
                       "insufficient_quota", "credit_exhausted")
      held[0] += most[0]
      held[1] += most[1]
    return key.id, most

  def release(self, holding) -> None:
    if holding is not None:
      key_id, most = holding
      with self._lock:
        self._held[key_id][0] -= most[0]
        self._held[key_id][1] -= most[1]
