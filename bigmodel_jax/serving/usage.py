"""What the ledger says about usage, read for the console and `billing`:
each key's limits and their state, calls and spend per day, the latest
calls, and invoice lines as CSV. `key_id=None` reads every key's.

Days are UTC, computed in the database (SQLite and PostgreSQL alike), so a
month of a busy key is a few rows, not every call.
"""
import csv
import datetime
import io
import time

import sqlalchemy as sa

from bigmodel_jax.serving.ledger import usd
from bigmodel_jax.serving.tables import keys, usage
from bigmodel_jax.serving.writes import rate_level

INVOICE_FIELDS = ("name", "prefix", "model", "unit", "calls", "input_units",
                  "output_units", "amount_usd")


def day(text: str) -> datetime.datetime:
  """The UTC midnight starting a YYYY-MM-DD day (ValueError if not one)."""
  return datetime.datetime.strptime(text, "%Y-%m-%d").replace(
      tzinfo=datetime.timezone.utc)


def invoice_lines(lines: list[dict]) -> list[dict]:
  """Invoice lines (`Ledger.invoices`) with integer sums and exact dollars."""
  return [{**line, **{k: int(line[k]) for k in (
      "calls", "input_units", "output_units", "price_nanousd")},
           "amount_usd": usd(line["price_nanousd"])} for line in lines]


def invoice_csv(lines: list[dict]) -> str:
  """Invoice lines (`Ledger.invoices`) as CSV, the same for every reader."""
  out = io.StringIO()
  writer = csv.DictWriter(out, INVOICE_FIELDS, extrasaction="ignore")
  writer.writeheader()
  writer.writerows(invoice_lines(lines))
  return out.getvalue()


def _mine(key_id: int | None) -> list:
  return [] if key_id is None else [usage.c.key_id == key_id]


def _day(engine: sa.Engine):
  """A usage row's UTC day as text, YYYY-MM-DD."""
  if engine.dialect.name == "postgresql":
    return sa.func.to_char(sa.func.timezone("UTC", usage.c.created_at),
                           "YYYY-MM-DD")
  return sa.func.strftime("%Y-%m-%d", usage.c.created_at)  # Stored in UTC.


def daily(engine: sa.Engine, start: datetime.datetime,
          end: datetime.datetime, key_id: int | None = None) -> list[dict]:
  """Per UTC day in [start, end) with calls: calls, units in and out, and
  spend (days without calls are absent)."""
  day = _day(engine).label("day")
  query = (sa.select(day, sa.func.count().label("calls"),
                     sa.func.sum(usage.c.input_units).label("input_units"),
                     sa.func.sum(usage.c.output_units).label("output_units"),
                     sa.func.sum(usage.c.price_nanousd).label("price_nanousd"))
           .where(usage.c.created_at >= start, usage.c.created_at < end,
                  *_mine(key_id))
           .group_by(day).order_by(day))
  with engine.connect() as db:
    return [{**row, "input_units": int(row["input_units"]),
             "output_units": int(row["output_units"]),
             "amount_usd": usd(row["price_nanousd"]),
             "price_nanousd": int(row["price_nanousd"])}
            for row in db.execute(query).mappings()]


def calls(engine: sa.Engine, key_id: int | None = None, limit: int = 20,
          request_id: str | None = None) -> list[dict]:
  """The latest `limit` calls, newest first (or the one with `request_id`),
  without their kept answers."""
  query = (sa.select(usage.c.created_at, usage.c.request_id, keys.c.name,
                     keys.c.prefix, usage.c.model, usage.c.endpoint,
                     usage.c.unit, usage.c.input_units, usage.c.output_units,
                     usage.c.status, usage.c.latency_ms,
                     usage.c.price_nanousd)
           .join(keys, keys.c.id == usage.c.key_id).where(*_mine(key_id))
           .order_by(usage.c.id.desc()).limit(limit))
  if request_id is not None:
    query = query.where(usage.c.request_id == request_id)
  with engine.connect() as db:
    return [{**row, "created_at": _utc(row["created_at"]),
             "amount_usd": usd(row["price_nanousd"])}
            for row in db.execute(query).mappings()]


def key_states(engine: sa.Engine, key_id: int | None = None) -> list[dict]:
  """Each key's limits and where it stands: tokens used and held of its
  quota, dollars spent and held of its credit, requests left in its rate
  bucket now."""
  query = sa.select(keys.c.id, keys.c.name, keys.c.prefix, keys.c.admin,
                    keys.c.created_at, keys.c.revoked_at, keys.c.quota_tokens,
                    keys.c.used_tokens, keys.c.held_tokens,
                    keys.c.credit_nanousd, keys.c.spent_nanousd,
                    keys.c.held_nanousd, keys.c.rate_per_minute,
                    rate_level(time.time()).label("rate_left")
                    ).order_by(keys.c.id)
  if key_id is not None:
    query = query.where(keys.c.id == key_id)
  with engine.connect() as db:
    rows = db.execute(query).mappings().all()
  return [{"name": r["name"], "prefix": r["prefix"], "admin": bool(r["admin"]),
           "created_at": _utc(r["created_at"]),
           "revoked": r["revoked_at"] is not None,
           "quota_tokens": r["quota_tokens"],
           "used_tokens": int(r["used_tokens"]),
           "held_tokens": int(r["held_tokens"]),
           "credit_usd": (None if r["credit_nanousd"] is None
                          else usd(r["credit_nanousd"])),
           "spent_usd": usd(r["spent_nanousd"]),
           "held_usd": usd(r["held_nanousd"]),
           "rate_per_minute": r["rate_per_minute"],
           "rate_left": (None if r["rate_left"] is None
                         else round(float(r["rate_left"]), 3))}
          for r in rows]


def key_id_of(engine: sa.Engine, prefix: str) -> int | None:
  """The id of the key whose secret starts with `prefix` (12 characters)."""
  with engine.connect() as db:
    return db.execute(sa.select(keys.c.id).where(
        keys.c.prefix == prefix[:12])).scalar()


def _utc(when: datetime.datetime) -> str:
  """ISO 8601 in UTC (SQLite returns the stored UTC time without a zone)."""
  if when.tzinfo is None:
    when = when.replace(tzinfo=datetime.timezone.utc)
  return when.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")
