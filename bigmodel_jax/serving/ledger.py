"""API keys, holds and the usage ledger, in SQLite or PostgreSQL.

An SQLite file by default; a PostgreSQL URL (`postgresql+psycopg://...`)
when several server processes share one ledger: every limit is enforced in
the database, so it holds across processes. Keys are random, shown once, and
stored only as SHA-256 hashes. A call first claims a hold of the most it may
use (refused if the key's quota or credit cannot cover it, or if its request
id is in flight or already billed); its usage row settles the hold in the
same transaction; a failed call releases it; a dead server's holds expire.
Money is integer nano-dollars (1e-9 USD), so sums are exact. Every write
goes through one writer thread that commits what is queued together (group
commit, writes.py), each caller waiting for its own.

  ledger = Ledger("sqlite:///ledger.sqlite")
  key, secret = ledger.create_key("acme", quota_tokens=1_000_000)
"""
import concurrent.futures
import dataclasses
import datetime
import hashlib
import secrets

import sqlalchemy as sa

from bigmodel_jax.errors import ConfigError, NotFound
from bigmodel_jax.serving import tables, writes
from bigmodel_jax.serving.tables import keys, usage
from bigmodel_jax.serving.writes import Hold

KEY_PREFIX = "bmj-"
NANO = 10**9  # Nano-dollars per dollar.
MAX_NAME = 100  # Characters in a key name.


def usd(nano: int) -> str:
  """Exact dollars: nano-dollars with all nine decimals."""
  sign, nano = "-" * (nano < 0), abs(int(nano))
  return f"{sign}{nano // NANO}.{nano % NANO:09d}"


@dataclasses.dataclass(frozen=True)
class Key:
  id: int
  name: str
  prefix: str
  revoked: bool
  quota_tokens: int | None
  rate_per_minute: float | None
  credit_nanousd: int | None
  admin: bool = False


@dataclasses.dataclass(frozen=True)
class Price:
  """USD per call and per 1,000 input / output units."""
  per_call: float = 0.0
  per_1k_input: float = 0.0
  per_1k_output: float = 0.0

  def nanousd(self, input_units: int, output_units: int) -> int:
    """The exact price of one call, rounded to the nano-dollar."""
    per_1k = (input_units * round(self.per_1k_input * NANO) +
              output_units * round(self.per_1k_output * NANO))
    return round(self.per_call * NANO) + (per_1k + 500) // 1000


def check_name(name: str) -> str:
  if not (0 < len(name) <= MAX_NAME and name.isprintable() and name.strip()):
    raise ConfigError(f"A key name has 1 to {MAX_NAME} printable "
                      f"characters; got {name[:MAX_NAME]!r}"
                      f"{'...' if len(name) > MAX_NAME else ''}.")
  return name


def hash_key(secret: str) -> str:
  return hashlib.sha256(secret.encode()).hexdigest()


def now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


class Ledger:
  """Keys, holds and usage rows in the database at `url` (tables made if
  absent, an earlier version's upgraded in place)."""

  def __init__(self, url: str):
    self.url = url
    self.engine = tables.engine(url)
    self._writer = writes.Writer(self.engine)
    try:
      tables.create(self.engine)
    except sa.exc.OperationalError as e:
      raise ConfigError(f"Cannot open the ledger database {url!r}: "
                        f"{e.orig}") from e

  # Keys.

  def create_key(self, name: str, *, quota_tokens: int | None = None,
                 rate_per_minute: float | None = None,
                 credit_usd: float | None = None, admin: bool = False
                 ) -> tuple[Key, str]:
    """A new key and its secret (the only time the secret exists); an
    `admin` key also sees every key's usage in the console."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = dict(name=check_name(name), prefix=secret[:12],
               key_hash=hash_key(secret), created_at=now(),
               quota_tokens=quota_tokens, used_tokens=0, spent_nanousd=0,
               held_tokens=0, held_nanousd=0, rate_per_minute=rate_per_minute,
               credit_nanousd=(None if credit_usd is None
                               else round(credit_usd * NANO)), admin=admin)
    with self.engine.begin() as db:
      key_id = db.execute(keys.insert().values(**row)).inserted_primary_key[0]
    return self._key({**row, "id": key_id, "revoked_at": None}), secret

  @staticmethod
  def _key(row) -> Key:
    row = dict(row)
    return Key(row["id"], row["name"], row["prefix"],
               row["revoked_at"] is not None, row["quota_tokens"],
               row["rate_per_minute"], row["credit_nanousd"],
               bool(row["admin"]))

  def authenticate(self, secret: str) -> Key | None:
    """The key of a secret, or None (unknown or revoked)."""
    with self.engine.connect() as db:
      row = db.execute(keys.select().where(
          keys.c.key_hash == hash_key(secret))).mappings().first()
    return None if row is None or row["revoked_at"] else self._key(row)

  def list_keys(self) -> list[tuple[Key, datetime.datetime]]:
    with self.engine.connect() as db:
      rows = db.execute(keys.select().order_by(keys.c.id)).mappings().all()
    return [(self._key(r), r["created_at"]) for r in rows]

  def revoke(self, name_or_prefix: str) -> list[Key]:
    """Revokes the keys with this name or secret prefix; returns them."""
    match = sa.or_(keys.c.name == name_or_prefix,
                   keys.c.prefix == name_or_prefix[:12])
    with self.engine.begin() as db:
      rows = db.execute(keys.select().where(
          match, keys.c.revoked_at.is_(None))).mappings().all()
      if not rows:
        raise NotFound(f"No active key named {name_or_prefix!r} (or with "
                       "that prefix); see `billing keys list`.")
      db.execute(keys.update().where(keys.c.id.in_([r["id"] for r in rows]))
                 .values(revoked_at=now()))
    return [self._key(r) for r in rows]

  # Writes, queued to the writer thread (group commit); each returns a
  # future (see writes.py).

  def take_rate(self, key_id: int) -> concurrent.futures.Future:
    """0, or the seconds until the key's bucket has a request again."""
    return self._writer.submit(lambda db: writes.take_rate(db, key_id))

  def claim(self, key_id: int, request_id: str, tokens: int, nanousd: int,
            lease: float, replayable: bool = True
            ) -> concurrent.futures.Future:
    """A Hold of `tokens` and `nanousd` for `lease` seconds, or OverLimit,
    InFlight or (a `replayable` id's) Billed."""
    return self._writer.submit(lambda db: writes.claim(
        db, key_id, request_id, tokens, nanousd, lease, replayable))

  def release(self, hold: Hold) -> concurrent.futures.Future:
    """Frees what a call that was not billed reserved."""
    return self._writer.submit(lambda db: writes.release(db, hold))

  def renew(self, hold_ids: list, lease: float) -> concurrent.futures.Future:
    """Extends the leases of calls still in flight."""
    return self._writer.submit(lambda db: writes.renew(db, hold_ids, lease))

  def forget_answers(self, older_than: datetime.datetime,
                     since: datetime.datetime | None = None
                     ) -> concurrent.futures.Future:
    """Clears the answers kept for replays of calls before `older_than`
    (from `since`, when the ones before were cleared already)."""
    return self._writer.submit(lambda db: writes.forget_answers(
        db, older_than, since))

  def submit(self, row: dict, hold: Hold | None = None
             ) -> concurrent.futures.Future:
    """Queues a served call's usage row, settling `hold`; done once it is
    committed (or failed)."""
    row = {"request_hash": None, "answer": None, **row, "created_at": now()}
    return self._writer.submit(lambda db: writes.settle(db, row, hold))

  def record(self, **row) -> None:
    """Commits one usage row (returns once it is durable)."""
    self.submit(row).result()

  def spent(self, key_id: int) -> tuple[int, int]:
    """(tokens, nano-dollars) a key has used so far."""
    with self.engine.connect() as db:
      tokens, money = db.execute(sa.select(
          keys.c.used_tokens, keys.c.spent_nanousd).where(
              keys.c.id == key_id)).one()
    return int(tokens), int(money)

  def invoices(self, start: datetime.datetime, end: datetime.datetime,
               key_id: int | None = None) -> list[dict]:
    """Per key and model, the calls in [start, end) (of one key, or all):
    counts and totals."""
    query = (sa.select(
        keys.c.name, keys.c.prefix, usage.c.model, usage.c.unit,
        sa.func.count().label("calls"),
        sa.func.sum(usage.c.input_units).label("input_units"),
        sa.func.sum(usage.c.output_units).label("output_units"),
        sa.func.sum(usage.c.price_nanousd).label("price_nanousd"))
             .join(keys, keys.c.id == usage.c.key_id)
             .where(usage.c.created_at >= start, usage.c.created_at < end,
                    *([] if key_id is None else [usage.c.key_id == key_id]))
             .group_by(keys.c.name, keys.c.prefix, usage.c.model, usage.c.unit)
             .order_by(keys.c.name, usage.c.model))
    with self.engine.connect() as db:
      return [dict(r) for r in db.execute(query).mappings()]

  def rows(self) -> list[dict]:
    """Every usage row (tests and audits)."""
    with self.engine.connect() as db:
      return [dict(r) for r in db.execute(
          usage.select().order_by(usage.c.id)).mappings()]
