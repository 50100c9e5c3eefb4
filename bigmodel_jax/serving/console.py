"""The console: a playground and a usage dashboard, served by the API app.

  GET /console                           the page (files in static/)
  GET /v1/usage/keys                     limits and where they stand
  GET /v1/usage/daily?from=&to=          calls, units and spend per UTC day
  GET /v1/usage/calls?limit=&request_id= the latest calls
  GET /v1/usage/invoices?from=&to=[&format=csv]   as `billing report`

The page is plain HTML, CSS and JavaScript from the package (no build step,
nothing from another origin, a strict Content-Security-Policy); it calls the
API with the key the user typed, kept in the tab's sessionStorage and only
ever sent in the Authorization header. The usage routes authenticate and
rate-limit like every API route and answer errors as its JSON. A key reads
its own usage; an admin key (`billing keys create --admin`) reads every
key's, or one key's with `key=PREFIX`. Dates are YYYY-MM-DD, both ends
included; by default the last 30 days (daily) or the month so far
(invoices).
"""
import asyncio
import datetime
import pathlib

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, Response

from bigmodel_jax.serving import usage
from bigmodel_jax.serving.gate import ApiError, Gate
from bigmodel_jax.serving.ledger import Key, now

STATIC = pathlib.Path(__file__).with_name("static")
FILES = {"": ("index.html", "text/html; charset=utf-8"),
         "/console.js": ("console.js", "text/javascript; charset=utf-8"),
         "/console.css": ("console.css", "text/css; charset=utf-8")}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; "
        "frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache"}
MAX_DAYS = 366  # Longest period of one daily or invoice request.
MAX_CALLS = 200  # Most calls listed by one request.


def _date(text: str, name: str) -> datetime.datetime:
  try:
    return usage.day(text)
  except ValueError:
    raise ApiError(400, f"{name}={text[:40]!r} is not a date; use "
                   "YYYY-MM-DD.", "invalid_request_error",
                   "invalid_date") from None


def _word(value: str | None, name: str) -> str | None:
  """A key prefix or request id: 1 to 100 printable ASCII characters, no
  spaces (anything else could match nothing, and some databases refuse
  it)."""
  if value is not None and not (0 < len(value) <= 100 and value.isascii()
                                and value.isprintable() and " " not in value):
    raise ApiError(400, f"{name} must be 1 to 100 printable ASCII characters "
                   "without spaces.", "invalid_request_error",
                   "invalid_parameter")
  return value


def period(start: str | None, end: str | None, default_start
           ) -> tuple[datetime.datetime, datetime.datetime]:
  """[first day, day after the last) from inclusive YYYY-MM-DD bounds; the
  last day defaults to today (UTC), the first to `default_start(last)`."""
  last = (_date(end, "to") if end else now().replace(
      hour=0, minute=0, second=0, microsecond=0))
  first = _date(start, "from") if start else default_start(last)
  if not first <= last or (last - first).days >= MAX_DAYS:
    raise ApiError(400, f"from={first:%Y-%m-%d} to={last:%Y-%m-%d}: the "
                   f"period must go forward and span at most {MAX_DAYS} "
                   "days.", "invalid_request_error", "invalid_period")
  return first, last + datetime.timedelta(days=1)


def add_routes(app: FastAPI, gate: Gate) -> None:
  engine = gate.ledger.engine

  def page(name: str, media_type: str):
    async def serve():
      return FileResponse(STATIC / name, media_type=media_type,
                          headers=HEADERS)
    return serve

  for path, (name, media_type) in FILES.items():
    app.get("/console" + path, include_in_schema=False)(page(name,
                                                             media_type))

  async def reader(request: Request, key: str | None) -> int | None:
    """The key id whose usage this request reads (None: every key's)."""
    caller: Key = await gate.authenticate(request.headers.get(
        "authorization"))
    await gate.check_rate(caller)
    if _word(key, "key") is None or key[:12] == caller.prefix:
      return None if caller.admin and key is None else caller.id
    if not caller.admin:
      raise ApiError(403, "Only an admin key reads other keys' usage.",
                     "permission_error", "not_admin")
    found = await asyncio.to_thread(usage.key_id_of, engine, key)
    if found is None:
      raise ApiError(404, f"No key with prefix {key[:12]!r}.",
                     "invalid_request_error", "key_not_found")
    return found

  @app.get("/v1/usage/keys")
  async def key_states(request: Request, key: str | None = None):
    """The calling key's limits and their state (an admin key: every key's)."""
    key_id = await reader(request, key)
    return {"object": "list", "data": await asyncio.to_thread(
        usage.key_states, engine, key_id)}

  @app.get("/v1/usage/daily")
  async def daily(request: Request, key: str | None = None,
                  start: str | None = Query(None, alias="from"),
                  end: str | None = Query(None, alias="to")):
    """Calls, units and spend per UTC day (last 30 days by default)."""
    key_id = await reader(request, key)
    first, after = period(start, end,
                          lambda last: last - datetime.timedelta(days=29))
    return {"object": "list", "from": f"{first:%Y-%m-%d}",
            "to": f"{after - datetime.timedelta(days=1):%Y-%m-%d}",
            "data": await asyncio.to_thread(usage.daily, engine, first,
                                            after, key_id)}

  @app.get("/v1/usage/calls")
  async def calls(request: Request, key: str | None = None,
                  limit: str = "20", request_id: str | None = None):
    """The latest calls, newest first (or the one with `request_id`)."""
    key_id = await reader(request, key)
    _word(request_id, "request_id")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_CALLS:
      raise ApiError(400, f"limit={limit[:20]!r}: give 1 to {MAX_CALLS}.",
                     "invalid_request_error", "invalid_limit")
    return {"object": "list", "data": await asyncio.to_thread(
        usage.calls, engine, key_id, int(limit), request_id)}

  @app.get("/v1/usage/invoices")
  async def invoices(request: Request, key: str | None = None,
                     start: str | None = Query(None, alias="from"),
                     end: str | None = Query(None, alias="to"),
                     format: str = "json"):  # noqa: A002 — the query's name.
    """Invoice lines per key and model; `format=csv` as `billing report
    --csv` writes them."""
    key_id = await reader(request, key)
    if format not in ("json", "csv"):
      raise ApiError(400, f"format={format[:20]!r}: give json or csv.",
                     "invalid_request_error", "invalid_format")
    first, after = period(start, end, lambda last: last.replace(day=1))
    lines = await asyncio.to_thread(gate.ledger.invoices, first, after,
                                    key_id)
    if format == "csv":
      name = (f"invoice-{first:%Y-%m-%d}-to-"
              f"{after - datetime.timedelta(days=1):%Y-%m-%d}.csv")
      return Response(usage.invoice_csv(lines), media_type="text/csv",
                      headers={"Content-Disposition":
                               f'attachment; filename="{name}"'})
    return {"object": "list", "data": usage.invoice_lines(lines)}
