"""API keys and the usage ledger, in any SQLAlchemy database.

An SQLite file by default; a PostgreSQL URL (`postgresql+psycopg://...`)
when several server processes share one ledger. Keys are random, shown once,
and stored only as SHA-256 hashes. One usage row per served call: key, model,
endpoint, input and output units (tokens, or images), latency, HTTP status
and price. Money is integer nano-dollars (1e-9 USD), so sums are exact.
Rows from concurrent calls are committed together by one writer thread
(group commit), each call waiting for its own row's commit.

  ledger = Ledger("sqlite:///ledger.sqlite")
  key, secret = ledger.create_key("acme", quota_tokens=1_000_000)
"""
import concurrent.futures
import dataclasses
import datetime
import hashlib
import secrets
import threading

import sqlalchemy as sa

from bigmodel_jax.errors import ConfigError, NotFound

KEY_PREFIX = "bmj-"
NANO = 10**9  # Nano-dollars per dollar.

metadata = sa.MetaData()
keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),  # Shown in listings.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("quota_tokens", sa.BigInteger),  # None: unlimited.
    sa.Column("rate_per_minute", sa.Float),  # None: unlimited.
    sa.Column("credit_nanousd", sa.BigInteger),  # Prepaid; None: invoiced.
    # Running totals of the key's usage rows, updated in the same
    # transaction as the rows (quota checks read one row, not a sum).
    sa.Column("used_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("spent_nanousd", sa.BigInteger, nullable=False, default=0),
)
usage = sa.Table(
    "usage", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("request_id", sa.String(100), nullable=False, unique=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"),
              nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(50), nullable=False),
    sa.Column("unit", sa.String(10), nullable=False),  # "tokens", "images".
    sa.Column("input_units", sa.BigInteger, nullable=False),
    sa.Column("output_units", sa.BigInteger, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),  # 499: client left.
    sa.Column("price_nanousd", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
              index=True),
)


@dataclasses.dataclass(frozen=True)
class Key:
  id: int
  name: str
  prefix: str
  revoked: bool
  quota_tokens: int | None
  rate_per_minute: float | None
  credit_nanousd: int | None


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


def hash_key(secret: str) -> str:
  return hashlib.sha256(secret.encode()).hexdigest()


def now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


def _engine(url: str) -> sa.Engine:
  try:
    engine = sa.create_engine(url, pool_pre_ping=not url.startswith(
        "sqlite"))  # A server's connections can drop; a file's cannot.
  except (sa.exc.ArgumentError, ImportError) as e:
    raise ConfigError(f"Cannot use the ledger database {url!r}: {e}") from e
  if engine.dialect.name == "sqlite":  # Readers do not block the server.
    @sa.event.listens_for(engine, "connect")
    def _wal(connection, _):
      connection.execute("PRAGMA journal_mode=WAL")
      connection.execute("PRAGMA synchronous=FULL")
      connection.execute("PRAGMA busy_timeout=10000")
  return engine


class Ledger:
  """Keys and usage rows in the database at `url` (tables made if absent)."""

  def __init__(self, url: str):
    self.url = url
    self.engine = _engine(url)
    self._pending, self._writer = [], None
    self._lock = threading.Lock()
    self._wake = threading.Condition(self._lock)
    try:
      metadata.create_all(self.engine)
    except sa.exc.OperationalError as e:
      raise ConfigError(f"Cannot open the ledger database {url!r}: "
                        f"{e.orig}") from e

  # Keys.

  def create_key(self, name: str, *, quota_tokens: int | None = None,
                 rate_per_minute: float | None = None,
                 credit_usd: float | None = None) -> tuple[Key, str]:
    """A new key and its secret (the only time the secret exists)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = dict(name=name, prefix=secret[:12], key_hash=hash_key(secret),
               created_at=now(), quota_tokens=quota_tokens, used_tokens=0,
               spent_nanousd=0,
               rate_per_minute=rate_per_minute,
               credit_nanousd=(None if credit_usd is None
                               else round(credit_usd * NANO)))
    with self.engine.begin() as db:
      key_id = db.execute(keys.insert().values(**row)).inserted_primary_key[0]
    return self._key({**row, "id": key_id, "revoked_at": None}), secret

  @staticmethod
  def _key(row) -> Key:
    row = dict(row)
    return Key(row["id"], row["name"], row["prefix"],
               row["revoked_at"] is not None, row["quota_tokens"],
               row["rate_per_minute"], row["credit_nanousd"])

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

  # Usage.

  def submit(self, row: dict) -> concurrent.futures.Future:
    """Queues a usage row; the future is done once the row is committed
    (or failed). Rows that wait together commit in one transaction (group
    commit): all of them or none."""
    future = concurrent.futures.Future()
    with self._lock:
      self._pending.append(({**row, "created_at": now()}, future))
      if self._writer is None or not self._writer.is_alive():
        self._writer = threading.Thread(target=self._write, daemon=True,
                                        name="ledger")
        self._writer.start()
      self._wake.notify()
    return future

  def record(self, **row) -> None:
    """Commits one usage row (returns once it is durable)."""
    self.submit(row).result()

  def _write(self) -> None:
    while True:
      with self._lock:
        while not self._pending:
          self._wake.wait()
        batch, self._pending = self._pending, []
      try:
        self._insert([row for row, _ in batch])
      except Exception:  # noqa: BLE001 — one row may be bad: try each.
        for row, future in batch:
          try:
            self._insert([row])
            future.set_result(None)
          except Exception as e:  # noqa: BLE001
            future.set_exception(e)
      else:
        for _, future in batch:
          future.set_result(None)

  def _insert(self, rows: list[dict]) -> None:
    """The rows and their keys' running totals, in one transaction."""
    totals = {}
    for row in rows:
      tokens, money = totals.get(row["key_id"], (0, 0))
      if row["unit"] == "tokens":
        tokens += row["input_units"] + row["output_units"]
      totals[row["key_id"]] = (tokens, money + row["price_nanousd"])
    with self.engine.begin() as db:
      db.execute(usage.insert(), rows)
      for key_id, (tokens, money) in sorted(totals.items()):
        db.execute(keys.update().where(keys.c.id == key_id).values(
            used_tokens=keys.c.used_tokens + tokens,
            spent_nanousd=keys.c.spent_nanousd + money))

  def spent(self, key_id: int) -> tuple[int, int]:
    """(tokens, nano-dollars) a key has used so far."""
    with self.engine.connect() as db:
      tokens, money = db.execute(sa.select(
          keys.c.used_tokens, keys.c.spent_nanousd).where(
              keys.c.id == key_id)).one()
    return int(tokens), int(money)

  def invoices(self, start: datetime.datetime, end: datetime.datetime
               ) -> list[dict]:
    """Per key and model, the calls in [start, end): counts and totals."""
    query = (sa.select(
        keys.c.name, keys.c.prefix, usage.c.model, usage.c.unit,
        sa.func.count().label("calls"),
        sa.func.sum(usage.c.input_units).label("input_units"),
        sa.func.sum(usage.c.output_units).label("output_units"),
        sa.func.sum(usage.c.price_nanousd).label("price_nanousd"))
             .join(keys, keys.c.id == usage.c.key_id)
             .where(usage.c.created_at >= start, usage.c.created_at < end)
             .group_by(keys.c.name, keys.c.prefix, usage.c.model, usage.c.unit)
             .order_by(keys.c.name, usage.c.model))
    with self.engine.connect() as db:
      return [dict(r) for r in db.execute(query).mappings()]

  def rows(self) -> list[dict]:
    """Every usage row (tests and audits)."""
    with self.engine.connect() as db:
      return [dict(r) for r in db.execute(
          usage.select().order_by(usage.c.id)).mappings()]
