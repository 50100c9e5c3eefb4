"""The HTTP API: OpenAI's routes, metered calls, JSON errors.

  app = api.create_app({"shakespeare": served}, ledger, config)

Routes: POST /v1/completions, /v1/chat/completions, /v1/embeddings,
/v1/classify; GET /v1/models (key required, free), /healthz and /metrics
(Prometheus; no key: keep them on a private network). A metered call is
authenticated, rate-limited, parsed, checked against the model and the
key's quota and credit, served, and written to the ledger before its last
bytes leave. Every error is {"error": {"message", "type", "code"}} with
its status, never a traceback.
"""
import asyncio
import base64
import binascii
import json
import logging
import time

import numpy as np
import pydantic
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from bigmodel_jax.serving import schemas, settings
from bigmodel_jax.serving.completions import Generation, check_length
from bigmodel_jax.serving.gate import ApiError, Gate
from bigmodel_jax.serving.meter import Call
from bigmodel_jax.serving.metrics import Metrics
from bigmodel_jax.serving.models import BadInput

ENDPOINT_NAMES = {"completions": "/v1/completions",
                  "chat": "/v1/chat/completions",
                  "embeddings": "/v1/embeddings", "classify": "/v1/classify"}


def _error(status: int, message: str, kind: str, code=None, headers=None):
  return JSONResponse({"error": {"message": message, "type": kind,
                                 "param": None, "code": code}},
                      status_code=status, headers=headers)


def _validation_message(error: pydantic.ValidationError) -> str:
  errors = error.errors()
  first = errors[0]
  where = ".".join(str(p) for p in first["loc"]) or "body"
  more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
  return f"Invalid request: {where}: {first['msg']}{more}."


async def _read_body(request: Request, schema, limit: int):
  """The JSON body as `schema`, or 415 / 413 / 400 with what is wrong."""
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
  async for chunk in request.stream():
    data += chunk
    if len(data) > limit:
      raise ApiError(413, f"The body is over the limit of {limit} bytes.",
                     "invalid_request_error", "body_too_large")
  try:
    value = json.loads(bytes(data))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ApiError(400, f"Malformed JSON body: {e}.",
                   "invalid_request_error", "invalid_json") from None
  try:
    return schema.model_validate(value)
  except pydantic.ValidationError as e:
    raise ApiError(400, _validation_message(e), "invalid_request_error",
                   "invalid_request") from None


def _texts(value, limit: int) -> list[str]:
  texts = [value] if isinstance(value, str) else list(value or [])
  if not texts:
    raise ApiError(400, "Give at least one input.", "invalid_request_error",
                   "empty_input")
  if len(texts) > limit:
    raise ApiError(400, f"{len(texts)} inputs in one request; the limit is "
                   f"{limit}.", "invalid_request_error", "too_many_inputs")
  return texts


def _image_bytes(text: str) -> bytes:
  if text.startswith("data:"):
    text = text.partition(",")[2]
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError):
    raise ApiError(400, "An image is not valid base64.",
                   "invalid_request_error", "invalid_image") from None


def create_app(served: dict, ledger, config) -> FastAPI:
  app = FastAPI(title="bigmodel_jax", docs_url=None, redoc_url=None,
                openapi_url=None)
  gate = Gate(ledger, settings.prices(config), config.key_cache_seconds)
  metrics = Metrics(served)
  limit, max_inputs = config.max_body_bytes, config.max_inputs

  @app.exception_handler(ApiError)
  async def api_error(request, e: ApiError):
    return _error(e.status, e.message, e.kind, e.code, e.headers)

  @app.exception_handler(HTTPException)
  async def http_error(request, e: HTTPException):
    return _error(e.status_code, f"{request.method} {request.url.path}: "
                  f"{e.detail}.", "invalid_request_error")

  @app.exception_handler(Exception)
  async def server_error(request, e: Exception):
    logging.exception("Unhandled error in %s", request.url.path)
    return _error(500, "Internal server error; nothing was charged.",
                  "server_error")

  def model_of(name: str, endpoint: str):
    if name not in served:
      raise ApiError(404, f"The model {name!r} does not exist; this server "
                     f"has {sorted(served)}.", "invalid_request_error",
                     "model_not_found")
    model = served[name]
    if endpoint not in model.endpoints:
      raise ApiError(400, f"Model {name!r} does not serve "
                     f"{ENDPOINT_NAMES[endpoint]}; it serves "
                     f"{[ENDPOINT_NAMES[e] for e in model.endpoints]}.",
                     "invalid_request_error", "unsupported_endpoint")
    return model

  async def metered(request: Request, endpoint: str, schema, handler):
    """Auth, rate, body, model, then `handler(model, body, call)`."""
    started, status, name = time.monotonic(), 500, "-"
    call = None
    try:
      key = await gate.authenticate(request.headers.get("authorization"))
      gate.check_rate(key)
      body = await _read_body(request, schema, limit)
      name = body.model
      model = model_of(body.model, endpoint)
      call = Call(gate, metrics, key, model.name, endpoint)
      if request.headers.get("x-request-id"):
        call.request_id = request.headers["x-request-id"][:100]
      response = await handler(model, body, call)
      response.headers["x-request-id"] = call.request_id
      status = response.status_code
      if isinstance(response, StreamingResponse):
        call = None  # The stream closes it when it ends.
      return response
    except ApiError as e:
      status = e.status
      raise
    except BadInput as e:
      status = 400
      raise ApiError(400, str(e), "invalid_request_error",
                     "invalid_input") from None
    except sa.exc.IntegrityError:
      status = 409
      raise ApiError(409, "This X-Request-Id was used before; nothing was "
                     "charged.", "invalid_request_error",
                     "duplicate_request_id") from None
    finally:
      if call is not None:
        call.close()
      metrics.requests.labels(name, endpoint, str(status)).inc()
      metrics.latency.labels(name, endpoint).observe(
          time.monotonic() - started)

  async def generate(request, model, body, call, prompts, max_tokens, chat):
    if len(prompts) * body.n > max_inputs or body.n > config.max_n:
      raise ApiError(400, f"n={body.n} x {len(prompts)} prompts is over the "
                     f"limit (n <= {config.max_n}, {max_inputs} choices).",
                     "invalid_request_error", "too_many_choices")
    for prompt in prompts:
      check_length(model, prompt, max_tokens)
    call.holding = await gate.hold(call.key, model.name,
                                   sum(len(p) for p in prompts),
                                   len(prompts) * body.n * max_tokens)
    generation = Generation(model, body, prompts, max_tokens, chat=chat,
                            call=call)
    generation.start()
    if body.stream:
      async def events():
        try:
          async for event in generation.stream(
              metrics.first_token.labels(model.name).observe):
            yield event
        finally:
          call.close()
      return StreamingResponse(events(), media_type="text/event-stream")
    try:
      return JSONResponse(await generation.whole(request.is_disconnected))
    finally:
      generation.cancel()

  @app.post("/v1/completions")
  async def completions(request: Request):
    async def handle(model, body, call):
      prompts = [model.prompt_ids(p) for p in _texts(body.prompt, max_inputs)]
      longest = max(len(p) for p in prompts)
      max_tokens = body.max_tokens or max(1, min(
          config.default_max_tokens, model.context - longest))
      return await generate(request, model, body, call, prompts, max_tokens,
                            chat=False)
    return await metered(request, "completions", schemas.Completion, handle)

  @app.post("/v1/chat/completions")
  async def chat(request: Request):
    async def handle(model, body, call):
      prompt = model.prompt_ids(messages=[m.model_dump()
                                          for m in body.messages])
      max_tokens = (body.max_completion_tokens or body.max_tokens or
                    max(1, model.context - len(prompt)))
      return await generate(request, model, body, call, [prompt], max_tokens,
                            chat=True)
    return await metered(request, "chat", schemas.ChatCompletion, handle)

  async def encode(model, call, batcher, inputs, most_units):
    call.holding = await gate.hold(call.key, model.name, most_units, 0)
    results = await asyncio.gather(*(asyncio.wrap_future(batcher.submit(x))
                                     for x in inputs))
    units = sum(count for _, count in results)
    await call.commit(units, 0)
    return [vector for vector, _ in results], units

  @app.post("/v1/embeddings")
  async def embeddings(request: Request):
    async def handle(model, body, call):
      texts = _texts(body.input, max_inputs)
      vectors, tokens = await encode(model, call, model.embedder, texts,
                                     len(texts) * model.run.config.input.seq_len)
      data = [{"object": "embedding", "index": i, "embedding": (
          base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
          if body.encoding_format == "base64" else np.asarray(v).tolist())}
              for i, v in enumerate(vectors)]
      return JSONResponse({"object": "list", "data": data, "model": model.name,
                           "usage": {"prompt_tokens": tokens,
                                     "total_tokens": tokens}})
    return await metered(request, "embeddings", schemas.Embeddings, handle)

  @app.post("/v1/classify")
  async def classify(request: Request):
    async def handle(model, body, call):
      if model.image_input is not None:
        if body.images is None:
          raise ApiError(400, f"Model {model.name!r} classifies images: send "
                         "base64 images in \"images\".",
                         "invalid_request_error", "missing_images")
        inputs = [model.image_input(_image_bytes(i))
                  for i in _texts(body.images, max_inputs)]
        call.unit, most = "images", len(inputs)
      else:
        if body.input is None:
          raise ApiError(400, f"Model {model.name!r} classifies text: send "
                         "\"input\".", "invalid_request_error",
                         "missing_input")
        inputs = _texts(body.input, max_inputs)
        most = len(inputs) * model.run.config.input.seq_len
      probabilities, units = await encode(model, call, model.classifier,
                                          inputs, most)
      names = model.class_names
      data = [{"index": i, "label": names[int(np.argmax(p))],
               "probabilities": {n: float(v) for n, v in zip(names, p)}}
              for i, p in enumerate(probabilities)]
      return JSONResponse({"object": "list", "data": data, "model": model.name,
                           "usage": {call.unit: units}})
    return await metered(request, "classify", schemas.Classify, handle)

  @app.get("/v1/models")
  async def models(request: Request):
    await gate.authenticate(request.headers.get("authorization"))
    return {"object": "list", "data": [
        {"id": name, "object": "model", "owned_by": "bigmodel_jax",
         "created": 0, "endpoints": [ENDPOINT_NAMES[e] for e in m.endpoints],
         "context_length": m.context if m.generator else None}
        for name, m in served.items()]}

  @app.get("/healthz")
  async def healthz():
    return {"status": "ok", "models": sorted(served)}

  @app.get("/metrics")
  async def prometheus():
    data, kind = metrics.exposition()
    return Response(data, media_type=kind)

  return app
