"""The OpenAPI description of the server (a test checks it against the app's routes)."""

from __future__ import annotations

ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}}
TOP = {
    "type": "object",
    "properties": {"index": {"type": "integer"}, "label": {"type": "string"}, "score": {"type": "number"}},
}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


CLASSIFY_RESULT = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "precision": {"type": "string"},
        "top": {"type": "array", "items": TOP},
        "decode_ms": {"type": "number"},
        "preprocess_ms": {"type": "number"},
        "model_ms": {"type": "number"},
        "queue_ms": {"type": "number", "description": "waiting for a model worker"},
        "total_ms": {"type": "number"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
    },
}
UPLOAD = {
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
    },
    "required": True,
}


def error_responses(config) -> dict:
    """The error answers of ``POST /v1/classify``, with this server's limits."""
    return {
        "400": _json(ERROR, "no image in the request, or a Host header this server does not answer to"),
        "401": _json(ERROR, "bearer token missing or wrong"),
        "408": _json(ERROR, f"the body did not arrive within {config.body_timeout:g} s"),
        "413": _json(
            ERROR, f"body over {config.max_body} bytes, or an image over {config.max_pixels} pixels or too elongated"
        ),
        "415": _json(ERROR, "not a decodable image"),
        "500": _json(ERROR, "the model or the server failed (one line; the log says more)"),
        "503": _json(ERROR, f"queue full, or {config.max_connections} requests in progress; see Retry-After"),
    }


def paths(errors: dict) -> dict:
    no_camera = _json(ERROR, "no camera")
    return {
        "/v1/classify": {
            "post": {
                "summary": "top-k classes of one image",
                "requestBody": UPLOAD,
                "responses": {"200": _json(CLASSIFY_RESULT, "top-k with timings"), **errors},
            }
        },
        "/v1/model": {
            "get": {
                "summary": "labels, preprocessing spec, format, precision, file hash",
                "responses": {"200": _json({"type": "object"}, "the model"), "401": errors["401"]},
            }
        },
        "/healthz": {"get": {"summary": "liveness", "responses": {"200": _json({"type": "object"}, "ok")}}},
        "/": {"get": {"summary": "the web page", "responses": {"200": {"description": "HTML"}}}},
        "/v1/camera": {
            "get": {
                "summary": "the newest result of `floraedge run --publish` (with --camera)",
                "responses": {
                    "200": _json({"type": "object"}, "result"),
                    "401": errors["401"],
                    "404": no_camera,
                    "502": _json(ERROR, "the camera result file is malformed"),
                },
            }
        },
        "/camera.mjpg": {
            "get": {
                "summary": "MJPEG stream of the newest annotated frame (with --camera)",
                "responses": {
                    "200": {"description": "multipart/x-mixed-replace"},
                    "401": errors["401"],
                    "404": no_camera,
                    "503": _json(ERROR, "too many camera streams open"),
                },
            }
        },
        "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "JSON"}}}},
    }


def openapi_spec(config) -> dict:
    """The OpenAPI 3.1 document of a server started with ``config`` (a ``ServeConfig``)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "FloraEdge classifier", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths(error_responses(config)),
    }
