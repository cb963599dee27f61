"""Wireflow's ClarityAI upscaler as data: the workflow, the execution, the poll answer.

Everything here is as Wireflow's guide "How to Upscale Images with ClarityAI via API" (seed 004)
documents it; :mod:`app.backends.providers.wireflow` speaks the HTTP around these pure
functions:

* :func:`node_params`: THE mapping from :class:`UpscaleParams` to the upscaler node's
  ``params``: ``scale_factor`` (an integer 1–16), ``creativity`` (a float 0.0–1.0) and
  ``output_format`` (png, jpg or webp); every other setting is refused, naming it;
* :func:`workflow`: the two-node graph of the guide's step 1, an ``input:text`` node whose
  ``params.prompt`` carries the image URL, wired ``out-prompt`` → ``in-image_url`` into
  ``process:clarityai_crystal_upscaler``; the body of ``POST /workflows`` and of the ``PUT
  /workflows/{id}`` that changes its params;
* :func:`execution`: the body of ``POST /workflows/{id}/execute``, which overrides only the
  input node's prompt with the image URL;
* :func:`result_urls` and :func:`failure`: the poll answer, whose upscaler node returns the
  image in ``outputs.images``; :func:`breakdown`: a 402's per-node credit costs in words.

Params the guide's own example leaves out are sent only when they differ from the node's
documented default (``creativity`` 0.0, ``output_format`` "png"), so the guide's example
settings produce the guide's example body, field for field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from app.backends.remote.fields import refusal, untaken
from pipeline.params import UpscaleParams

__all__ = [
    "INPUT_NODE",
    "NODE_DEFAULTS",
    "NODE_TYPE",
    "UPSCALE_NODE",
    "WORKFLOW_NAME",
    "breakdown",
    "execution",
    "failure",
    "node_params",
    "result_urls",
    "workflow",
]

NODE_TYPE = "process:clarityai_crystal_upscaler"
INPUT_NODE, UPSCALE_NODE = "input-1", "upscale-1"
WORKFLOW_NAME = "ClarityAI Image Upscaler"
# The node's params and their defaults, from the guide's parameter table.
NODE_DEFAULTS: dict[str, Any] = {"scale_factor": 2, "creativity": 0.0, "output_format": "png"}
SCALES = range(1, 17)  # "Upscale multiplier (1 to 16, capped at 64MP output)"
_TAKEN = frozenset(NODE_DEFAULTS)


def node_params(params: UpscaleParams, label: str) -> dict[str, Any]:
    """The upscaler node's ``params`` for ``params``; a ``JobError`` (invalid_request) naming
    every setting the node cannot express. ``scale_factor`` is always sent (as the guide's
    example does); ``creativity`` and ``output_format`` when they differ from the node's
    defaults."""
    where = f"{label}'s ClarityAI Crystal upscaler"
    problems = untaken(params, _TAKEN, where)
    scale = params.scale_factor
    if not float(scale).is_integer() or int(scale) not in SCALES:
        problems["scale_factor"] = [
            f"{where} takes a whole scale factor from 1 to 16 (got {scale:g})"
        ]
    if problems:
        raise refusal(label, problems)
    node: dict[str, Any] = {"scale_factor": int(scale)}
    if not math.isclose(params.creativity, NODE_DEFAULTS["creativity"], abs_tol=1e-12):
        node["creativity"] = float(params.creativity)
    if params.output_format != NODE_DEFAULTS["output_format"]:
        node["output_format"] = params.output_format
    return node


def workflow(params: Mapping[str, Any]) -> dict[str, Any]:
    """The guide's two-node workflow with the upscaler's ``params``."""
    return {
        "name": WORKFLOW_NAME,
        "nodes": [
            {
                "id": INPUT_NODE,
                "type": "basedNode",
                "position": {"x": 0, "y": 0},
                "data": {
                    "label": "Image URL",
                    "nodeType": "input:text",
                    "category": "input",
                    "params": {"prompt": ""},
                    "inputs": [],
                    "outputs": [{"id": "prompt", "type": "TEXT", "label": "Text"}],
                },
            },
            {
                "id": UPSCALE_NODE,
                "type": "basedNode",
                "position": {"x": 500, "y": 0},
                "data": {
                    "label": "ClarityAI Upscaler",
                    "nodeType": NODE_TYPE,
                    "category": "process",
                    "params": dict(params),
                    "inputs": [{"id": "image_url", "type": "IMAGE", "label": "Image"}],
                    "outputs": [{"id": "images", "type": "IMAGE", "label": "Upscaled Image"}],
                },
            },
        ],
        "edges": [
            {
                "id": "edge-1",
                "source": INPUT_NODE,
                "target": UPSCALE_NODE,
                "sourceHandle": "out-prompt",
                "targetHandle": "in-image_url",
            }
        ],
    }


def execution(image_url: str) -> dict[str, Any]:
    """The execute body: the input node's prompt set to the image URL, nothing else."""
    return {"nodes": [{"id": INPUT_NODE, "data": {"params": {"prompt": image_url}}}], "edges": []}


# --- reading the poll answer ------------------------------------------------------------------
def _nodes(body: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
    """``(node id, outputs, record)`` for every node the answer reports. The guide says only
    that "a completed response includes each node's output" and that the upscaler's is in
    ``outputs.images``: node records in a list (``nodes``, ``nodeRuns``,
    ``nodeResults.nodeRuns`` or ``nodeStates``, each naming its ``id`` or ``nodeId``) or in a
    mapping by node id (``nodes``), or the outputs themselves by node id (``outputs``)."""
    found: list[tuple[str, Mapping[str, Any], Mapping[str, Any]]] = []

    def record(node_id: Any, item: Any) -> None:
        if isinstance(item, Mapping):
            outputs = item.get("outputs", item.get("output"))
            found.append(
                (str(node_id or ""), outputs if isinstance(outputs, Mapping) else {}, item)
            )

    results = body.get("nodeResults")
    lists = (
        body.get("nodes"),
        body.get("nodeRuns"),
        results.get("nodeRuns") if isinstance(results, Mapping) else None,
        body.get("nodeStates"),
    )
    for container in lists:
        if isinstance(container, list):
            for item in container:
                if isinstance(item, Mapping):
                    record(item.get("id") or item.get("nodeId"), item)
        elif isinstance(container, Mapping):
            for node_id, item in container.items():
                record(node_id, item)
    by_node = body.get("outputs")
    if isinstance(by_node, Mapping):
        for node_id, outputs in by_node.items():
            if isinstance(outputs, Mapping):
                found.append((str(node_id), outputs, {}))
    return found


def _urls(value: Any) -> list[str]:
    """Image URLs from ``outputs.images``: a URL, a list of URLs, or ``{url}`` objects."""
    if isinstance(value, str):
        return [value] if value.startswith(("https://", "http://")) else []
    if isinstance(value, list):
        return [url for item in value for url in _urls(item)]
    if isinstance(value, Mapping):
        return _urls(value.get("url"))
    return []


def result_urls(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The upscaler node's ``outputs.images``, and nothing else: the input node's output is the
    input image's URL, which must never pass for the result."""
    urls = [
        url
        for node_id, outputs, _record in _nodes(body)
        if node_id == UPSCALE_NODE
        for url in _urls(outputs.get("images"))
    ]
    return tuple(dict.fromkeys(urls))


def failure(body: Mapping[str, Any]) -> str:
    """Why an execution FAILED: its ``error`` (the guide throws ``result.error``), then the
    nodes' own errors where the answer carries them."""
    parts: list[str] = []

    def add(value: Any) -> None:
        text = value.get("message") if isinstance(value, Mapping) else value
        if isinstance(text, str) and text.strip() and text.strip() not in parts:
            parts.append(text.strip())

    add(body.get("error"))
    for _node_id, _outputs, record in _nodes(body):
        add(record.get("error"))
    return "; ".join(parts) or "no reason given"


def breakdown(items: Any) -> str:
    """A 402's ``breakdown`` array ("showing per-node costs") in words: "ClarityAI Upscaler: 4".
    Each item's label and cost are read under the names the guide leaves open."""
    shown: list[str] = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, Mapping):
            continue
        name = next(
            (
                str(item[k])
                for k in ("nodeLabel", "label", "nodeId", "nodeType")
                if isinstance(item.get(k), str) and item[k]
            ),
            "a node",
        )
        cost = next(
            (
                item[k]
                for k in ("credits", "cost", "requiredCredits")
                if isinstance(item.get(k), int | float) and not isinstance(item.get(k), bool)
            ),
            None,
        )
        shown.append(f"{name}: {cost:g}" if cost is not None else name)
    return ", ".join(shown)
