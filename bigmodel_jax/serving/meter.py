"""One metered call: its ledger row is committed before its last bytes leave.

A call that fails or is rejected writes no row and costs nothing; a served
call writes exactly one (status 200), a stream the client abandoned one
with status 499 charged for the prompt and the tokens actually sent.
"""
import asyncio
import dataclasses
import time
import uuid

from bigmodel_jax.serving.gate import Gate
from bigmodel_jax.serving.ledger import Key


@dataclasses.dataclass
class Call:
  gate: Gate
  metrics: object
  key: Key
  model: str
  endpoint: str
  request_id: str = dataclasses.field(
      default_factory=lambda: f"req-{uuid.uuid4().hex}")
  unit: str = "tokens"
  holding: tuple | None = None
  started: float = dataclasses.field(default_factory=time.monotonic)
  recorded: bool = False

  def row(self, status: int, input_units: int, output_units: int) -> dict:
    price = self.gate.price(self.model).nanousd(input_units, output_units)
    return dict(request_id=self.request_id, key_id=self.key.id,
                model=self.model, endpoint=self.endpoint, unit=self.unit,
                input_units=input_units, output_units=output_units,
                latency_ms=(time.monotonic() - self.started) * 1000,
                status=status, price_nanousd=price)

  def _after(self, row: dict) -> None:
    self.recorded = True
    self.gate.release(self.holding)
    self.holding = None
    self.metrics.tokens.labels(self.model, "input").inc(row["input_units"])
    self.metrics.tokens.labels(self.model, "output").inc(row["output_units"])

  async def commit(self, input_units: int, output_units: int,
                   status: int = 200) -> None:
    """Queues the row and waits until it is durable."""
    row = self.row(status, input_units, output_units)
    await asyncio.wrap_future(self.gate.ledger.submit(row))
    self._after(row)

  def commit_abandoned(self, input_units: int, output_units: int) -> None:
    """From a cancelled stream: the write runs on in a worker thread."""
    row = self.row(499, input_units, output_units)
    self.gate.ledger.submit(row)  # Committed by the ledger's writer.
    self._after(row)

  def close(self) -> None:
    """Frees what an unrecorded (failed or rejected) call reserved."""
    if not self.recorded:
      self.gate.release(self.holding)
      self.holding = None
