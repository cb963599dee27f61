"""The line protocol between the job controller and the engine's worker process.

One JSON object per line. The controller writes commands to the worker's stdin; the worker
writes events to its stdout (everything else a library prints goes to stderr). Keeping the
schema here, in a module without torch, lets both sides share it while the controller's
process never imports the engine.

Commands (controller → worker)::

    {"op": "run", "job": ID, "input": PATH, "output": PATH, "params": {...}, "options": {...}}
    {"op": "cancel", "job": ID}
    {"op": "shutdown"}

Events (worker → controller)::

    {"ev": "ready", "pid": N, "device": "CPU (2 threads)"}
    {"ev": "progress", "job": ID, "stage": "pre-upscale", "done": 3, "total": 12, "message": "",
     "eta": SECONDS | null}                              # eta: the engine's estimate, if any
    {"ev": "preview", "job": ID, "png": BASE64}          # small PNG of the current canvas
    {"ev": "result", "job": ID, "output": PATH, "info": {...}, "timings": {...}, "warnings": [...]}
    {"ev": "error", "job": ID, "kind": KIND, "message": TEXT}
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ERROR_KINDS", "PROTOCOL_VERSION", "decode", "encode"]

PROTOCOL_VERSION = 1

# Error kinds the worker reports; the controller maps them onto its normalized job errors.
ERROR_KINDS = (
    "invalid_request",  # bad parameters or a bad input image: retrying will not help
    "model",  # a model file is missing, corrupt or unsupported
    "out_of_memory",
    "cancelled",
    "internal",  # a bug: the message carries the exception
)


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def decode(line: bytes | str) -> dict[str, Any]:
    """Parse one line; raises ValueError for anything that is not a JSON object."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"protocol message is not an object: {line!r:.200}")
    return message
