"""What a request brings, checked: its JSON body as a schema, the texts or
images in it, its X-Request-Id, and the hash that tells two calls apart.
Each refusal is an ApiError (400, 408, 413 or 415) naming what is wrong."""
import asyncio
import base64
import binascii
import hashlib
import json

import pydantic
from fastapi import Request

from bigmodel_jax.serving.gate import ApiError

MAX_REQUEST_ID = 100  # Characters of an X-Request-Id.
PARSE_IN_THREAD = 1 << 16  # Bodies of more bytes are parsed off the loop.


def _validation_message(error: pydantic.ValidationError) -> str:
  errors = error.errors()
  first = errors[0]
  where = ".".join(str(p) for p in first["loc"]) or "body"
  more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
  return f"Invalid request: {where}: {first['msg']}{more}."


def _not_json(constant: str):
  raise ValueError(f"{constant} is not a JSON number")


def _parse(data: bytes, schema):
  try:
    value = json.loads(data, parse_constant=_not_json)
  except (ValueError, RecursionError) as e:  # Decode errors are ValueErrors.
    reason = ("nested too deeply" if isinstance(e, RecursionError)
              else str(e)[:200])
    raise ApiError(400, f"Malformed JSON body: {reason}.",
                   "invalid_request_error", "invalid_json") from None
  try:
    return schema.model_validate(value)
  except pydantic.ValidationError as e:
    raise ApiError(400, _validation_message(e), "invalid_request_error",
                   "invalid_request") from None
  except RecursionError:
    raise ApiError(400, "Malformed JSON body: nested too deeply.",
                   "invalid_request_error", "invalid_json") from None


async def read_body(request: Request, schema, limit: int, seconds: float):
  """The JSON body as `schema`, or 415 / 413 / 408 / 400 with what is
  wrong."""
  kind = request.headers.get("content-type", "")
  if kind.split(";")[0].strip().lower() != "application/json":
    raise ApiError(415, f"Send the body as JSON (Content-Type: "
                   f"application/json), not {kind or 'no content type'!r}.",
                   "invalid_request_error", "unsupported_media_type")
  declared = request.headers.get("content-length")
  if declared and declared.isdigit() and int(declared) > limit:
    raise ApiError(413, f"The body has {declared} bytes; the limit is "
                   f"{limit}.", "invalid_request_error", "body_too_large")
  data = bytearray()
  try:
    async with asyncio.timeout(seconds):
      async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
          raise ApiError(413, f"The body is over the limit of {limit} "
                         "bytes.", "invalid_request_error", "body_too_large")
  except TimeoutError:
    raise ApiError(408, f"The body did not arrive within {seconds:g} s.",
                   "invalid_request_error", "body_timeout") from None
  if len(data) > PARSE_IN_THREAD:
    return await asyncio.to_thread(_parse, bytes(data), schema)
  return _parse(bytes(data), schema)


def request_id(value: str | None) -> str | None:
  """The client's X-Request-Id, or 400 when it is not one."""
  if value is not None and not (
      0 < len(value) <= MAX_REQUEST_ID and value.isascii() and
      value.isprintable() and " " not in value):
    raise ApiError(400, f"X-Request-Id must be 1 to {MAX_REQUEST_ID} "
                   f"printable ASCII characters without spaces; got "
                   f"{len(value)} characters.", "invalid_request_error",
                   "invalid_request_id")
  return value


def request_hash(endpoint: str, body) -> str:
  """What makes two calls the same call (streamed or not: a replay can
  answer either way)."""
  fields = body.model_dump_json(exclude={"stream", "stream_options"})
  return hashlib.sha256(f"{endpoint} {fields}".encode()).hexdigest()


def texts(value, limit: int) -> list[str]:
  texts = [value] if isinstance(value, str) else list(value or [])
  if not texts:
    raise ApiError(400, "Give at least one input.", "invalid_request_error",
                   "empty_input")
  if len(texts) > limit:
    raise ApiError(400, f"{len(texts)} inputs in one request; the limit is "
                   f"{limit}.", "invalid_request_error", "too_many_inputs")
  return texts


def image_bytes(text: str) -> bytes:
  if text.startswith("data:"):
    text = text.partition(",")[2]
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError):
    raise ApiError(400, "An image is not valid base64.",
                   "invalid_request_error", "invalid_image") from None
