"""The ledger's tables, its database engine, and the in-place upgrade of a
ledger written by an earlier version.

Money is integer nano-dollars. A key's row holds its limits and running
totals: used and spent (settled calls), held (the most that calls in flight
may still use) and its rate bucket, so every limit is one conditional
UPDATE of one row, atomic in SQLite and PostgreSQL alike. A hold row is one
call in flight: what it reserved and when its lease ends (a server that
dies leaves holds that expire). A usage row is one billed call; its request
id is unique per key, and it keeps the answer (for a client-chosen id) so a
retry replays it.
"""
import sqlalchemy as sa

from bigmodel_jax.errors import ConfigError

metadata = sa.MetaData()
_ZERO = sa.text("0")
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
    sa.Column("used_tokens", sa.BigInteger, nullable=False, default=0),
    sa.Column("spent_nanousd", sa.BigInteger, nullable=False, default=0),
    sa.Column("held_tokens", sa.BigInteger, nullable=False, default=0,
              server_default=_ZERO),
    sa.Column("held_nanousd", sa.BigInteger, nullable=False, default=0,
              server_default=_ZERO),
    sa.Column("rate_left", sa.Float),  # Requests left in the bucket.
    sa.Column("rate_at", sa.Float),  # Unix time of rate_left.
    sa.Column("admin", sa.Boolean, nullable=False, default=False,
              server_default=sa.false()),  # Sees every key's usage.
)
holds = sa.Table(
    "holds", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key_id", sa.Integer, sa.ForeignKey("api_keys.id"),
              nullable=False),
    sa.Column("request_id", sa.String(100), nullable=False),
    sa.Column("tokens", sa.BigInteger, nullable=False),
    sa.Column("nanousd", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.UniqueConstraint("key_id", "request_id", name="holds_key_request"),
)
usage = sa.Table(
    "usage", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("request_id", sa.String(100), nullable=False),
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
    sa.Column("request_hash", sa.String(64)),  # Of the parsed body.
    sa.Column("answer", sa.Text),  # JSON, kept for replays, then cleared.
    sa.UniqueConstraint("key_id", "request_id", name="usage_key_request"),
)


def engine(url: str) -> sa.Engine:
  try:
    made = sa.create_engine(url, pool_pre_ping=not url.startswith(
        "sqlite"))  # A server's connections can drop; a file's cannot.
  except (sa.exc.ArgumentError, ImportError) as e:
    raise ConfigError(f"Cannot use the ledger database {url!r}: {e}") from e
  if made.dialect.name not in ("sqlite", "postgresql"):
    raise ConfigError(f"The ledger needs SQLite or PostgreSQL, not "
                      f"{made.dialect.name} ({url!r}).")
  if made.dialect.name == "sqlite":  # Readers do not block the server.
    @sa.event.listens_for(made, "connect")
    def _wal(connection, _):
      connection.execute("PRAGMA journal_mode=WAL")
      connection.execute("PRAGMA synchronous=FULL")
      connection.execute("PRAGMA busy_timeout=10000")
  return made


def create(made: sa.Engine) -> None:
  """Makes the tables that are absent and upgrades older ones in place."""
  metadata.create_all(made)
  inspector = sa.inspect(made)
  with made.begin() as db:
    for table in (keys, usage):
      have = {c["name"] for c in inspector.get_columns(table.name)}
      for column in table.columns:
        if column.name not in have:
          ddl = sa.schema.CreateColumn(column).compile(dialect=made.dialect)
          db.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
    old = [u["name"] for u in inspector.get_unique_constraints("usage")
           if u["column_names"] == ["request_id"]]
    if old:  # Request ids were unique across keys before.
      _scope_request_ids(db, made.dialect.name, old[0])


def _scope_request_ids(db, dialect: str, constraint: str | None) -> None:
  if dialect != "sqlite":
    db.execute(sa.text(f'ALTER TABLE usage DROP CONSTRAINT "{constraint}"'))
    db.execute(sa.schema.AddConstraint(next(
        c for c in usage.constraints if c.name == "usage_key_request")))
    return
  # SQLite cannot drop a constraint: the table is copied into a new one.
  columns = ", ".join(c.name for c in usage.columns)
  db.execute(sa.text("ALTER TABLE usage RENAME TO usage_before_upgrade"))
  for index in usage.indexes:
    db.execute(sa.text(f"DROP INDEX IF EXISTS {index.name}"))
  usage.create(db)
  db.execute(sa.text(f"INSERT INTO usage ({columns}) SELECT {columns} "
                     "FROM usage_before_upgrade"))
  db.execute(sa.text("DROP TABLE usage_before_upgrade"))
