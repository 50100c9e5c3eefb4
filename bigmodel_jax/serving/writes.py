"""The ledger's writes, each a function of one open transaction, and the
writer thread that runs them: whatever is queued together commits together
(group commit: one sync to disk for the batch), each caller waiting on its
own future. A write that refuses (a call over its key's limits, a request id
in flight or billed) returns the refusal rather than raising, so it never
aborts the others; a write that fails makes the batch run again one write
to a transaction, so only the failing one fails.

Every write starts with a write statement, so SQLite takes its write lock
first (waiting its busy timeout) and never fails to upgrade a stale read;
every write touches a key's holds before the key's row, so PostgreSQL's row
locks are always taken in one order.
"""
import concurrent.futures
import dataclasses
import threading
import time

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from bigmodel_jax.serving.tables import holds, keys, usage


class Refusal(Exception):
  """A write's answer that its caller receives as an exception."""


class OverLimit(Refusal):
  """The key's quota ("quota") or credit ("credit") cannot cover the call:
  `used` settled, `held` reserved by calls in flight, of `limit`."""

  def __init__(self, which: str, used: int, held: int, limit: int):
    super().__init__(which)
    self.which, self.used, self.held, self.limit = which, used, held, limit


class InFlight(Refusal):
  """A call with this request id is being served now."""


class Billed(Refusal):
  """A call with this request id was billed: its usage row's status,
  output units, request hash and kept answer (None once forgotten)."""

  def __init__(self, row: dict):
    super().__init__(row["status"])
    self.row = row


@dataclasses.dataclass(frozen=True)
class Hold:
  """What one call in flight reserved."""
  id: int
  key_id: int
  tokens: int
  nanousd: int


class Writer:
  """Runs queued writes on `engine` in one thread (see module doc)."""

  def __init__(self, engine: sa.Engine):
    self.engine = engine
    self._pending, self._thread = [], None
    self._lock = threading.Lock()
    self._wake = threading.Condition(self._lock)

  def submit(self, write) -> concurrent.futures.Future:
    """Queues `write(db)`; the future holds what it returned. A queued
    write always runs: its future cannot be cancelled (a caller that leaves
    while waiting, e.g. a cancelled task, does not undo it)."""
    future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    with self._lock:
      self._pending.append((write, future))
      if self._thread is None or not self._thread.is_alive():
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="ledger")
        self._thread.start()
      self._wake.notify()
    return future

  def _loop(self) -> None:
    while True:
      with self._lock:
        while not self._pending:
          self._wake.wait()
        batch, self._pending = self._pending, []
      try:
        with self.engine.begin() as db:
          results = [write(db) for write, _ in batch]
      except Exception:  # noqa: BLE001 — one write may be bad: try each.
        for write, future in batch:
          try:
            with self.engine.begin() as db:
              _answer(future, write(db))
          except Exception as e:  # noqa: BLE001
            future.set_exception(e)
      else:
        for (_, future), result in zip(batch, results):
          _answer(future, result)


def _answer(future, result) -> None:
  if isinstance(result, Refusal):
    future.set_exception(result)
  else:
    future.set_result(result)


def _unheld(tokens: int, nanousd: int) -> dict:
  """The key-row values that give back what holds reserved."""
  return dict(held_tokens=keys.c.held_tokens - tokens,
              held_nanousd=keys.c.held_nanousd - nanousd)


def _deleted(db, hold) -> bool:
  """Deletes a hold; False if it expired and was swept already."""
  return bool(db.execute(holds.delete().where(holds.c.id == hold.id)
                         ).rowcount)


def release(db, hold) -> None:
  """Deletes a hold and returns its amounts to the key."""
  if _deleted(db, hold):
    db.execute(keys.update().where(keys.c.id == hold.key_id).values(
        **_unheld(hold.tokens, hold.nanousd)))


def _sweep(db, key_id: int, clock: float) -> bool:
  """Deletes the key's expired holds (their servers died) and returns
  their amounts; whether there were any."""
  expired = db.execute(holds.delete().where(
      holds.c.key_id == key_id, holds.c.expires_at < clock).returning(
          holds.c.tokens, holds.c.nanousd)).all()
  if expired:
    db.execute(keys.update().where(keys.c.id == key_id).values(**_unheld(
        sum(t for t, _ in expired), sum(m for _, m in expired))))
  return bool(expired)


def _new_hold(db, **values) -> int | None:
  """Inserts a hold; None if the key's request id has one already."""
  dialect = postgresql if db.dialect.name == "postgresql" else sqlite
  return db.execute(dialect.insert(holds).values(**values)
                    .on_conflict_do_nothing().returning(holds.c.id)
                    ).scalar()


def _reserve(db, key_id: int, tokens: int, nanousd: int) -> bool:
  """Adds to the key's held amounts if settled + held + these fit."""
  return bool(db.execute(keys.update().where(
      keys.c.id == key_id,
      sa.or_(keys.c.quota_tokens.is_(None), keys.c.used_tokens +
             keys.c.held_tokens + tokens <= keys.c.quota_tokens),
      sa.or_(keys.c.credit_nanousd.is_(None), keys.c.spent_nanousd +
             keys.c.held_nanousd + nanousd <= keys.c.credit_nanousd)
  ).values(held_tokens=keys.c.held_tokens + tokens,
           held_nanousd=keys.c.held_nanousd + nanousd)).rowcount)


def claim(db, key_id: int, request_id: str, tokens: int, nanousd: int,
          lease: float, replayable: bool) -> Hold | Refusal:
  """Reserves `tokens` and `nanousd` for a call for `lease` seconds: its
  Hold, or OverLimit, InFlight (the id is being served) or, for a
  `replayable` (client-chosen) id, Billed (it was). The hold goes in before
  the billed check, so a claim racing the commit of the same id in another
  process waits for it and then sees its row. Expired holds are swept only
  when they are in the way."""
  clock = time.time()
  hold = dict(key_id=key_id, request_id=request_id, tokens=tokens,
              nanousd=nanousd, expires_at=clock + lease)
  hold_id = _new_hold(db, **hold)
  if hold_id is None and _sweep(db, key_id, clock):
    hold_id = _new_hold(db, **hold)
  if hold_id is None:
    return InFlight(request_id)
  billed = replayable and db.execute(sa.select(
      usage.c.status, usage.c.output_units, usage.c.request_hash,
      usage.c.answer).where(usage.c.key_id == key_id,
                            usage.c.request_id == request_id)
                                     ).mappings().first()
  if not billed and (_reserve(db, key_id, tokens, nanousd) or (
      _sweep(db, key_id, clock) and _reserve(db, key_id, tokens, nanousd))):
    return Hold(hold_id, key_id, tokens, nanousd)
  db.execute(holds.delete().where(holds.c.id == hold_id))
  if billed:
    return Billed(dict(billed))
  row = db.execute(keys.select().where(keys.c.id == key_id)).mappings().one()
  if (row["quota_tokens"] is not None and row["used_tokens"] +
      row["held_tokens"] + tokens > row["quota_tokens"]):
    return OverLimit("quota", row["used_tokens"], row["held_tokens"],
                     row["quota_tokens"])
  return OverLimit("credit", row["spent_nanousd"], row["held_nanousd"],
                   row["credit_nanousd"])


def settle(db, row: dict, hold) -> None:
  """A served call's usage row; its key's totals grow and its hold, if not
  swept already, is settled, in one update."""
  totals = dict(
      used_tokens=keys.c.used_tokens + (
          row["input_units"] + row["output_units"]
          if row["unit"] == "tokens" else 0),
      spent_nanousd=keys.c.spent_nanousd + row["price_nanousd"])
  if hold is not None and _deleted(db, hold):
    totals.update(_unheld(hold.tokens, hold.nanousd))
  db.execute(usage.insert().values(**row))
  db.execute(keys.update().where(keys.c.id == row["key_id"]).values(
      **totals))


def rate_level(clock: float):
  """The requests left in a key's bucket at `clock` (SQL; None: no rate)."""
  rate = keys.c.rate_per_minute
  filled = (sa.func.coalesce(keys.c.rate_left, rate) +
            (clock - sa.func.coalesce(keys.c.rate_at, clock)) * rate / 60)
  return sa.case((filled > rate, rate), else_=filled)


def take_rate(db, key_id: int) -> float:
  """Takes one request from the key's bucket (capacity: its rate per
  minute, refilled continuously); 0, or the seconds until one is left."""
  clock = time.time()
  level = rate_level(clock)
  if db.execute(keys.update().where(keys.c.id == key_id, level >= 1).values(
      rate_left=level - 1, rate_at=clock)).rowcount:
    return 0.0
  left, per_minute = db.execute(sa.select(level, keys.c.rate_per_minute)
                                .where(keys.c.id == key_id)).one()
  return 0.0 if per_minute is None else (1 - left) * 60 / per_minute


def renew(db, hold_ids: list, lease: float) -> None:
  if hold_ids:
    db.execute(holds.update().where(holds.c.id.in_(hold_ids)).values(
        expires_at=time.time() + lease))


def forget_answers(db, older_than, since=None) -> int:
  """Clears the kept answers of calls before `older_than` (and from
  `since`: older ones were cleared before, so the index range stays short)."""
  window = [usage.c.created_at < older_than, usage.c.answer.is_not(None)]
  if since is not None:
    window.append(usage.c.created_at >= since)
  return db.execute(usage.update().where(*window).values(answer=None)
                    ).rowcount
