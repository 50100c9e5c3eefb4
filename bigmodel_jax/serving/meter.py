"""One metered call: its ledger row is committed before its last bytes leave.

A call that fails or is rejected writes no row and costs nothing; a served
call writes exactly one (status 200), settling its hold in the same
transaction; a stream the client abandoned one with status 499 charged for
the prompt and the tokens actually sent. A call whose client chose its
request id keeps its answer in the row, for a retry to replay.
"""
import asyncio
import dataclasses
import json
import time
import uuid

from bigmodel_jax.serving.gate import Gate
from bigmodel_jax.serving.ledger import Key
from bigmodel_jax.serving.writes import Hold


@dataclasses.dataclass
class Call:
  gate: Gate
  metrics: object
  key: Key
  model: str
  endpoint: str
  request_hash: str
  request_id: str = dataclasses.field(
      default_factory=lambda: f"req-{uuid.uuid4().hex}")
  client_id: bool = False  # The client chose the request id.
  unit: str = "tokens"
  hold: Hold | None = None
  started: float = dataclasses.field(default_factory=time.monotonic)
  recorded: bool = False

  def row(self, status: int, input_units: int, output_units: int,
          answer: dict | None) -> dict:
    price = self.gate.price(self.model).nanousd(input_units, output_units)
    return dict(request_id=self.request_id, key_id=self.key.id,
                model=self.model, endpoint=self.endpoint, unit=self.unit,
                input_units=input_units, output_units=output_units,
                latency_ms=(time.monotonic() - self.started) * 1000,
                status=status, price_nanousd=price,
                request_hash=self.request_hash,
                answer=(json.dumps(answer) if self.client_id and answer
                        else None))

  def _after(self, row: dict) -> None:
    self.recorded = True
    self.gate.settled(self.hold)
    self.hold = None
    self.metrics.tokens.labels(self.model, "input").inc(row["input_units"])
    self.metrics.tokens.labels(self.model, "output").inc(row["output_units"])

  async def commit(self, input_units: int, output_units: int,
                   answer: dict) -> None:
    """Queues the row of a served call and waits until it is durable."""
    row = self.row(200, input_units, output_units, answer)
    await asyncio.wrap_future(self.gate.ledger.submit(row, self.hold))
    self._after(row)

  def commit_abandoned(self, input_units: int, output_units: int) -> None:
    """From a cancelled stream: the write runs on in a worker thread."""
    row = self.row(499, input_units, output_units, None)
    self.gate.ledger.submit(row, self.hold)  # Committed by the writer.
    self._after(row)

  def close(self) -> None:
    """Frees what an unrecorded (failed or rejected) call reserved."""
    if not self.recorded:
      self.gate.release(self.hold)
      self.hold = None
