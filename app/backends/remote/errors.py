"""Reading the providers' error answers: JSON of five shapes, plain text, or an HTML page.

Every provider wraps its errors differently (``{"error": "..."}``, Stripe-style
``{"error": {"message"}}``, FastAPI ``{"detail": [{loc, msg}]}``, RFC 7807 problem details, Zod
``details``), and some answer with HTML or plain text. These helpers never raise on any of them,
so a backend can turn whatever came back into a plain message and per-field errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["body_of", "field_errors", "is_content_rejection", "message_of", "object_of"]

_CONTENT_RULES = re.compile(
    r"nsfw|content[ _-]?polic|safety|moderat|inappropriate|flagged|responsible ai|\brai\b",
    re.I,
)


def object_of(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: for the optional objects of an
    answer (``urls``, ``metrics``, ``input``), which a provider may leave out or send as null."""
    return value if isinstance(value, dict) else {}


def body_of(response: httpx.Response) -> Any:
    """The JSON body, or the text (never raises; providers send HTML and plain text too)."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        try:
            return response.text
        except UnicodeDecodeError:
            return ""


def message_of(body: Any, status: int | None = None) -> str:
    """A short, plain message from any of the providers' error envelopes."""
    if isinstance(body, Mapping):
        for key in ("error", "detail", "message", "title"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
            if isinstance(value, Mapping):  # Stripe-style {"error": {"message": ...}}
                inner = value.get("message") or value.get("code")
                if inner:
                    return str(inner)
            if isinstance(value, list) and value:  # FastAPI [{loc, msg, type}]
                parts = []
                for item in value[:5]:
                    if isinstance(item, Mapping):
                        loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                        parts.append(f"{loc}: {item.get('msg', '')}".strip(": "))
                    else:
                        parts.append(str(item))
                return "; ".join(parts)
        return ""
    if isinstance(body, str):
        text = body.strip()
        if "<html" in text[:500].lower() or "<!doctype" in text[:500].lower():
            title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
            shown = f" ({title.group(1).strip()[:80]})" if title else ""
            return f"an HTML error page{shown}"
        return text[:300]
    return ""


def field_errors(body: Any) -> dict[str, list[str]]:
    """Per-field validation errors, from Zod ``details`` or FastAPI ``detail`` lists."""
    errors: dict[str, list[str]] = {}
    if not isinstance(body, Mapping):
        return errors
    details = body.get("details")
    if isinstance(details, Mapping):
        for path, messages in details.items():
            errors[str(path)] = [
                str(m) for m in (messages if isinstance(messages, list) else [messages])
            ]
    detail = body.get("detail")
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, Mapping):
                loc = ".".join(str(p) for p in item.get("loc", []) if p not in ("body", "input"))
                errors.setdefault(loc or "input", []).append(str(item.get("msg", "")))
    return errors


def is_content_rejection(message: str) -> bool:
    return bool(_CONTENT_RULES.search(message or ""))
