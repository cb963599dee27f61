"""The OpenAPI document of the served model, as ``cog build`` writes it.

Cog serves ``.cog/openapi_schema.json`` (``/openapi.json``) and validates every prediction's
input against it; Replicate builds its form and its checks from the same document. ``cog build``
derives it from the runner's signature; this module does the same, following the layout of
Cog's own generator (``pkg/schema/openapi.go``): the ``Input`` object with ``x-order``, titles,
defaults, ``minimum``/``maximum``, ``nullable`` and ``format``, each input with choices as an
``allOf`` reference to an enumeration of its own name, the ``Output`` array of URIs, and the
fixed request, response and error schemas and paths.

The image inputs are :data:`~app.serve.inputs.ImageUrl` (``format: uri``, as Cog publishes a
``Path``) while the runner receives them as text, so ``clarifier serve`` writes this document
for coglet, and ``packaging/cog`` hands it to ``cog build`` (``COG_OPENAPI_SCHEMA``) instead of
letting Cog derive ``type: string`` from the annotation.

``python -m app.serve.schema [FILE]`` prints (or writes) it.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["input_schema", "main", "openapi_schema", "write_schema"]

_JSON_TYPES: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _title(name: str) -> str:
    return " ".join(word.capitalize() for word in name.split("_"))


def _unwrap(hint: Any) -> tuple[type, bool, str | None]:
    """(the base type, whether it is optional, its JSON-schema format) of an annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        (hint,) = args
    fmt = None
    if typing.get_origin(hint) is typing.Annotated:
        hint, *meta = typing.get_args(hint)
        from app.serve.inputs import URI

        fmt = "uri" if URI in meta else None
    if hint not in _JSON_TYPES:
        raise TypeError(f"no JSON type for the input annotation {hint!r}")
    return hint, optional, fmt


def input_schema(run: Callable[..., Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The ``Input`` object of a runner's ``run`` and the enumerations its choices refer to."""
    hints = typing.get_type_hints(run, include_extras=True)
    properties: dict[str, Any] = {}
    required: list[str] = []
    enums: dict[str, dict[str, Any]] = {}
    parameters = list(inspect.signature(run).parameters.values())[1:]  # without self
    for order, parameter in enumerate(parameters):
        info = parameter.default  # cog.FieldInfo
        base, optional, fmt = _unwrap(hints[parameter.name])
        prop: dict[str, Any] = {"x-order": order}
        json_type = _JSON_TYPES[base]
        if info.choices:
            enums[parameter.name] = {
                "title": parameter.name,
                "description": "An enumeration.",
                "enum": list(info.choices),
                "type": json_type,
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{parameter.name}"}]
        else:
            prop["title"] = _title(parameter.name)
            prop["type"] = json_type
            if fmt:
                prop["format"] = fmt
        if info.default is not None or optional:
            prop["default"] = info.default
        else:
            required.append(parameter.name)
        if optional:
            prop["nullable"] = True
        if info.description is not None:
            prop["description"] = info.description
        if info.ge is not None:
            prop["minimum"] = info.ge
        if info.le is not None:
            prop["maximum"] = info.le
        properties[parameter.name] = prop
    schema: dict[str, Any] = {"title": "Input", "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def openapi_schema(run: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The whole OpenAPI 3.0.2 document of a runner's ``run`` (default: Clarifier's)."""
    if run is None:
        from app.serve.runner import Runner

        run = Runner.run
    inputs, enums = input_schema(run)
    output = {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}
    schemas: dict[str, Any] = {"Input": inputs, "Output": output, **enums}
    schemas.update(_FIXED_SCHEMAS)
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": _PATHS,
        "components": {"schemas": schemas},
    }


def _ok(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": "Successful Response",
        "content": {"application/json": {"schema": schema or {}}},
    }


_INVALID = {
    "description": "Validation Error",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    },
}
_PATHS: dict[str, Any] = {
    "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": {"200": _ok()}}},
    "/health-check": {
        "get": {
            "summary": "Healthcheck",
            "operationId": "healthcheck_health_check_get",
            "responses": {"200": _ok()},
        }
    },
    "/predictions": {
        "post": {
            "summary": "Predict",
            "description": "Run a single prediction on the model",
            "operationId": "predict_predictions_post",
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/PredictionRequest"}
                    }
                }
            },
            "responses": {
                "200": _ok({"$ref": "#/components/schemas/PredictionResponse"}),
                "422": _INVALID,
            },
        }
    },
    "/predictions/{prediction_id}/cancel": {
        "post": {
            "summary": "Cancel",
            "operationId": "cancel_predictions__prediction_id__cancel_post",
            "parameters": [
                {
                    "required": True,
                    "schema": {"title": "Prediction Id", "type": "string"},
                    "name": "prediction_id",
                    "in": "path",
                }
            ],
            "responses": {"200": _ok(), "422": _INVALID},
        }
    },
}


def _string(title: str, fmt: str | None = None) -> dict[str, Any]:
    return {"title": title, "type": "string", **({"format": fmt} if fmt else {})}


_FIXED_SCHEMAS: dict[str, Any] = {
    "PredictionRequest": {
        "title": "PredictionRequest",
        "type": "object",
        "properties": {"id": _string("Id"), "input": {"$ref": "#/components/schemas/Input"}},
    },
    "PredictionResponse": {
        "title": "PredictionResponse",
        "type": "object",
        "properties": {
            "input": {"$ref": "#/components/schemas/Input"},
            "output": {"$ref": "#/components/schemas/Output"},
            "id": _string("Id"),
            "version": _string("Version"),
            "created_at": _string("Created At", "date-time"),
            "started_at": _string("Started At", "date-time"),
            "completed_at": _string("Completed At", "date-time"),
            "status": _string("Status"),
            "error": _string("Error"),
            "logs": _string("Logs"),
            "metrics": {"title": "Metrics", "type": "object"},
        },
    },
    "Status": {
        "title": "Status",
        "description": "An enumeration.",
        "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
        "type": "string",
    },
    "HTTPValidationError": {
        "title": "HTTPValidationError",
        "type": "object",
        "properties": {
            "detail": {
                "title": "Detail",
                "type": "array",
                "items": {"$ref": "#/components/schemas/ValidationError"},
            }
        },
    },
    "ValidationError": {
        "title": "ValidationError",
        "required": ["loc", "msg", "type"],
        "type": "object",
        "properties": {
            "loc": {
                "title": "Location",
                "type": "array",
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            },
            "msg": _string("Message"),
            "type": _string("Error Type"),
        },
    },
}


def write_schema(path: Path) -> Path:
    """Write the served model's document to ``path`` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(openapi_schema(), indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args:
        write_schema(Path(args[0]))
    else:
        sys.stdout.write(json.dumps(openapi_schema(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
