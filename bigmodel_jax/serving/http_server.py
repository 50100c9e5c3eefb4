"""uvicorn, with slow clients timed out and connections bounded.

uvicorn times out idle kept-alive connections but not a request head that
trickles in (or never comes): `HeadTimeout` closes a connection whose head
has not fully arrived `seconds` after the connection or after the first
byte of a request. Beyond `config.max_connections` connections, requests
are answered 503.
"""
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadTimeout(HttpToolsProtocol):
  seconds = 10.0
  _timer = None

  def _arm(self) -> None:
    if self._timer is None:
      self._timer = self.loop.call_later(self.seconds, self._too_slow)

  def _disarm(self) -> None:
    if self._timer is not None:
      self._timer.cancel()
      self._timer = None

  def _too_slow(self) -> None:
    self._timer = None
    if not self.transport.is_closing():
      self.transport.close()

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    self._arm()

  def connection_lost(self, exc) -> None:
    self._disarm()
    super().connection_lost(exc)

  def on_message_begin(self) -> None:
    super().on_message_begin()
    self._arm()

  def on_headers_complete(self) -> None:
    self._disarm()
    super().on_headers_complete()


def server(app, host: str, port: int, config) -> uvicorn.Server:
  """A uvicorn server for `app` with the serving config's limits."""
  protocol = type("Http", (HeadTimeout,),
                  {"seconds": config.header_timeout_seconds})
  return uvicorn.Server(uvicorn.Config(
      app, host=host, port=port, http=protocol, log_level="warning",
      limit_concurrency=config.max_connections, timeout_graceful_shutdown=5))
