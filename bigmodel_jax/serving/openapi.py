"""The OpenAPI schema of the API, request bodies included: the routes read
their bodies themselves (for their own limits and errors), so FastAPI is
told their schemas, and "model" lists the served models."""
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi


def body_schema(schema) -> dict:
  """OpenAPI's requestBody of a route that reads `schema` itself."""
  return {"requestBody": {"required": True, "content": {"application/json": {
      "schema": schema.model_json_schema(
          ref_template="#/components/schemas/{model}")}}}}


def schema(app: FastAPI, paths: list, names: list) -> dict:
  """FastAPI's schema with the bodies' shared definitions as components and
  the served model `names` as the choices of "model"."""
  if app.openapi_schema is None:
    document = get_openapi(title=app.title, version=app.version,
                           routes=app.routes)
    components = document.setdefault("components", {}).setdefault(
        "schemas", {})
    for path in paths:
      body = document["paths"][path]["post"]["requestBody"]
      fields = body["content"]["application/json"]["schema"]
      components.update(fields.pop("$defs", {}))
      fields["properties"]["model"]["enum"] = names
    app.openapi_schema = document
  return app.openapi_schema
