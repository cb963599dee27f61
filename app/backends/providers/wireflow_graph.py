"""Wireflow's Clarity upscaler as data: the node catalog, the workflow graph, the poll body.

:mod:`app.backends.providers.wireflow` speaks the HTTP protocol; this module holds the pure
functions it relies on, kept apart because they are where Wireflow's unverified shapes are
absorbed (and tested without a server):

* :func:`find_node` reads the upscaler's ports and config ranges from ``GET /api/v1/nodes``,
  whatever shape the catalog comes in; :func:`fallback_spec` is the documented guess;
* :func:`node_config` turns canonical parameters into that node's ``config``, refusing what it
  cannot take; :func:`graph` builds the two-node ``input:image → upscaler`` workflow;
* :func:`unwrap`, :func:`execution_id`, :func:`poll_outputs` and :func:`poll_error` read the
  execute and poll answers defensively (``data`` wrapper or not, several result layouts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.backends.base import ErrorKind, JobError
from pipeline.params import UpscaleParams

__all__ = [
    "GRAPH_VERSION",
    "INPUT_NODE",
    "NODE_TYPE",
    "SYNONYMS",
    "UPSCALE_NODE",
    "ConfigField",
    "NodeSpec",
    "catalog_lists_nodes",
    "execution_id",
    "fallback_spec",
    "find_node",
    "graph",
    "node_config",
    "poll_error",
    "poll_outputs",
    "unwrap",
]

NODE_TYPE = "process:clarityai_crystal_upscaler"  # from the brief; confirmed via the catalog
INPUT_NODE, UPSCALE_NODE = "img", "up"
GRAPH_VERSION = 1  # bump when the graph changes shape, so cached workflows are not reused

SYNONYMS: dict[str, tuple[str, ...]] = {  # canonical field → config keys a node may use
    "scale_factor": ("scale_factor", "scaleFactor", "scale", "upscale_factor", "upscaleFactor"),
    "creativity": ("creativity",),
    "resemblance": ("resemblance",),
    "dynamic": ("dynamic", "hdr"),
    "prompt": ("prompt",),
    "negative_prompt": ("negative_prompt", "negativePrompt"),
    "num_inference_steps": ("num_inference_steps", "numInferenceSteps", "steps"),
    "sharpen": ("sharpen",),
    "seed": ("seed",),
    "output_format": ("output_format", "outputFormat"),
}
_OPTIONAL = ("seed", "output_format")  # harmless to drop: no seed to honour; saved locally as asked
_MEDIA_PORTS = ("image", "media", "url")  # what the input:image node emits


@dataclass(frozen=True)
class ConfigField:
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class NodeSpec:
    node_type: str
    in_port: str  # the upscaler's image input, without the "in-" prefix
    config: Mapping[str, ConfigField]


def fallback_spec() -> NodeSpec:
    """The documented guess when the catalog cannot be read: ClarityAI Crystal's own inputs
    (scale 1–16 per Wireflow, creativity an integer 0–10 as ClarityAI's API has it)."""
    config = {"scale_factor": ConfigField(False, 1, 16), "creativity": ConfigField(True, 0, 10)}
    return NodeSpec(NODE_TYPE, "image", config)


def unwrap(body: Any) -> Any:
    """``body.data ?? body``: Wireflow's answers come both ways."""
    if isinstance(body, dict) and isinstance(body.get("data"), dict | list):
        return body["data"]
    return body


def _name(item: Any) -> str:
    raw = item if isinstance(item, str) else ""
    if isinstance(item, dict):
        raw = str(item.get("key") or item.get("id") or item.get("name") or item.get("handle") or "")
    return raw.removeprefix("in-").removeprefix("out-")


def _field(item: Mapping[str, Any]) -> ConfigField:
    kind = str(item.get("type") or item.get("dataType") or "").lower()
    low = item.get("min", item.get("minimum"))
    high = item.get("max", item.get("maximum"))
    return ConfigField(
        kind in ("integer", "int"),
        float(low) if isinstance(low, int | float) else None,
        float(high) if isinstance(high, int | float) else None,
    )


def _entries(catalog: Any) -> list[dict[str, Any]]:
    body = unwrap(catalog)
    if isinstance(body, dict):
        listed = next((body[k] for k in ("nodes", "items") if isinstance(body.get(k), list)), None)
        by_type = [{"nodeType": k, **v} for k, v in body.items() if isinstance(v, dict)]
        body = listed if listed is not None else by_type
    return [e for e in body if isinstance(e, dict)] if isinstance(body, list) else []


def _type_of(entry: Mapping[str, Any]) -> str:
    return str(entry.get("nodeType") or entry.get("type") or entry.get("id") or "")


def catalog_lists_nodes(catalog: Any) -> bool:
    """Whether ``catalog`` is in a shape :func:`find_node` understands (some entry has a type)."""
    return any(_type_of(e) for e in _entries(catalog))


def find_node(catalog: Any, node_type: str) -> NodeSpec | None:
    """The upscaler's ports and config from ``GET /nodes`` (``{nodes: [{nodeType, inputs:
    [{key, isPort, type, min, max}], outputs}]}``, a bare list, or a dict by type); a
    renamed Crystal upscaler is accepted too. None when the catalog lists no such node."""
    entries = _entries(catalog)
    chosen = next((e for e in entries if _type_of(e) == node_type), None) or next(
        (
            e
            for e in entries
            if "crystal" in _type_of(e).lower() and "upscal" in _type_of(e).lower()
        ),
        None,
    )
    if chosen is None:
        return None
    ports: list[str] = []
    config: dict[str, ConfigField] = {}
    for item in chosen.get("inputs") or []:
        name = _name(item)
        kind = str(item.get("type") or "").lower() if isinstance(item, dict) else "image"
        port = item.get("isPort") if isinstance(item, dict) else True
        if name and (port is True or (port is None and kind in ("image", "media", "url"))):
            ports.append(name)
        elif name and isinstance(item, dict):
            config[name] = _field(item)
    for key in ("config", "configSchema"):
        schema = chosen.get(key)
        if isinstance(schema, dict):
            props = schema.get("properties", schema)
            for name, item in props.items() if isinstance(props, dict) else ():
                if isinstance(item, dict):
                    config.setdefault(name, _field(item))
    port = next((p for p in _MEDIA_PORTS if p in ports), ports[0] if ports else "image")
    return NodeSpec(_type_of(chosen), port, config)


def node_config(
    spec: NodeSpec, fields: Mapping[str, Any], defaults: UpscaleParams, label: str
) -> dict[str, Any]:
    """The upscaler node's ``config`` for the canonical ``fields``; a value the node cannot
    take (no such key, outside its range) is refused unless it is the default."""
    config: dict[str, Any] = {}
    problems: dict[str, list[str]] = {}
    for name, value in fields.items():
        key = next((k for k in SYNONYMS[name] if k in spec.config), None)
        if key is None:
            if name not in _OPTIONAL and value != getattr(defaults, name):
                problems[name] = [f"the {spec.node_type} node has no {name} setting"]
            continue
        if value is None:
            continue
        rule = spec.config[key]
        if name == "creativity" and rule.integer and (rule.maximum or 0) > 1:
            low = rule.minimum or 0.0  # canonical 0–1 spread over the node's integer range
            value = round(low + value * ((rule.maximum or 0) - low))
        if isinstance(value, int | float) and not isinstance(value, bool):
            if rule.integer and not float(value).is_integer():
                problems[name] = [f"must be a whole number on this node (got {value:g})"]
                continue
            low, high = rule.minimum, rule.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                problems[name] = [f"must be from {low:g} to {high:g} on this node (got {value:g})"]
                continue
            value = int(value) if rule.integer else value
        config[key] = value
    if problems:
        listed = "; ".join(f"{k}: {v[0]}" for k, v in problems.items())
        raise JobError(
            ErrorKind.invalid_request,
            f"{label} cannot run these settings ({listed}). Change them, or run the job on "
            "another backend.",
            details={"fields": problems},
        )
    return config


def graph(spec: NodeSpec, image: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The two-node graph: the image input wired into the upscaler (handle keys must match)."""
    out = spec.in_port if spec.in_port in _MEDIA_PORTS else "image"

    def node(node_id: str, x: int, label: str, node_type: str, **data: Any) -> dict[str, Any]:
        category = node_type.partition(":")[0]
        data = {"label": label, "nodeType": node_type, "category": category, **data}
        return {"id": node_id, "type": "basedNode", "position": {"x": x, "y": 0}, "data": data}

    source = {"image": image, "imageUrl": image}
    return {
        "nodes": [
            node(INPUT_NODE, 0, "Image", "input:image", inputType="image", config=source),
            node(UPSCALE_NODE, 400, "Crystal Upscaler", spec.node_type, config=dict(config)),
        ],
        "edges": [
            {"id": "e1", "source": INPUT_NODE, "target": UPSCALE_NODE}
            | {"sourceHandle": f"out-{out}", "targetHandle": f"in-{spec.in_port}"}
        ],
    }


def execution_id(body: Any) -> str | None:
    """``executionRuns[0].id`` (full execute) or ``executionId`` (targeted execute, /run)."""
    for candidate in (body, unwrap(body)):
        if not isinstance(candidate, dict):
            continue
        runs = candidate.get("executionRuns")
        if isinstance(runs, list) and runs and isinstance(runs[0], dict) and runs[0].get("id"):
            return str(runs[0]["id"])
        if candidate.get("executionId"):
            return str(candidate["executionId"])
    return None


def _urls(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith(("https://", "http://", "data:")) else []
    if isinstance(value, list):
        return [url for item in value for url in _urls(item)]
    if isinstance(value, dict):
        for key in ("url", "outputUrl", "urls", "outputUrls", "images", "image"):
            if value.get(key):
                return _urls(value[key])
    return []


def _node_records(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    results = body.get("nodeResults")
    runs = results.get("nodeRuns") if isinstance(results, dict) else body.get("nodeRuns")
    records = [*(body.get("nodeStates") or []), *(runs or [])]
    return [r for r in records if isinstance(r, dict)]


def poll_outputs(body: Mapping[str, Any], node: str, input_node: str) -> tuple[str, ...]:
    """Result URLs, best first: ``finalOutput``, then the upscaler's own, then any other
    node's but the input's (whose output is the input image itself)."""
    mine: list[str] = []
    others: list[str] = []
    for record in _node_records(body):
        urls = _urls(record.get("outputUrls")) or _urls(record.get("outputUrl"))
        urls = urls or _urls(record.get("output"))
        if record.get("nodeId") == node:
            mine += urls
        elif record.get("nodeId") != input_node:
            others += urls
    return tuple(dict.fromkeys(_urls(body.get("finalOutput")) + mine + others))


def poll_error(body: Mapping[str, Any], node: str) -> str:
    """The failing nodes' errors (e.g. a moderation rejection), then the top-level error."""
    parts = []
    for record in _node_records(body):
        error = record.get("error")
        text = error.get("message") if isinstance(error, dict) else error
        if text and str(text) not in parts:
            parts.append(str(text))
    top = body.get("error")
    top_text = top.get("message") if isinstance(top, dict) else top
    if top_text and not any(str(top_text) in p or p in str(top_text) for p in parts):
        parts.append(str(top_text))
    return "; ".join(parts) or "no reason given"
