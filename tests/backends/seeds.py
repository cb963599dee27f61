"""The provider pages' own examples (the seeds), as the contract tests read them.

Each seed page's JSON examples are copied into ``tests/backends/fixtures/<seed>.json`` by
:func:`extract` (``python -m tests.backends.seeds DIR`` writes them), so the tests need neither
the pages nor the network. :func:`extract` parses the pages themselves: the request bodies of
their ``curl -d '…'`` examples, the ``payload = {…}`` of the Segmind SDK samples (line numbers
stripped), the documented answers; ``test_contracts.py`` re-extracts from the pages when they
are at hand (``CLARIFIER_SEEDS``, or ``../shared/seeds``) and checks the fixtures still match.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

__all__ = ["FIXTURES", "SEEDS", "extract", "fixture", "pages_dir"]

FIXTURES = Path(__file__).parent / "fixtures"
SEEDS = {
    "000_8de876c0c7db21dc": "segmind clarityai-flux-upscaler",
    "001_4edfec69b5b2e851": "segmind clarityai-creative-upscaler",
    "002_920f3842fb7d7fab": "segmind clarity-upscaler",
    "003_5faef4169034b570": "apiframe clarity-upscale",
    "004_7bd4188ca1c954d1": "wireflow ClarityAI guide",
}


def pages_dir() -> Path | None:
    """Where the seed pages are, when this checkout has them."""
    import os

    for candidate in (
        os.environ.get("CLARIFIER_SEEDS"),
        Path(__file__).resolve().parents[3] / "shared" / "seeds",
    ):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def fixture(seed: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{seed}.json").read_text(encoding="utf-8"))


# --- parsing the pages ------------------------------------------------------------------------
def _balanced(text: str, start: int) -> str:
    """The ``{…}`` that opens at ``text[start]``, strings and nesting respected."""
    depth, quote, escaped = 0, "", False
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    raise ValueError("unbalanced braces")


def _curl(text: str, url_part: str) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The headers and JSON body of the first ``curl`` example whose URL ends in ``url_part``."""
    for match in re.finditer(r"curl (?:-X \w+ )?(\S+)", text):
        if not match.group(1).endswith(url_part):
            continue
        block = text[match.start() :]
        end = block.find("\n\n")
        block = block if end < 0 else block[:end]
        headers = dict(re.findall(r'-H "([^:"]+): ([^"]*)"', block))
        body = None
        if " -d '" in block:
            start = block.index(" -d '") + len(" -d '")
            body = json.loads(_balanced(block, start))
        return headers, body
    raise ValueError(f"no curl example for {url_part}")


def _numbered_code(text: str) -> str:
    """A code sample whose lines start with their numbers (Segmind's pages), unnumbered."""
    return "\n".join(re.sub(r"^\s*\d+", "", line) for line in text.splitlines())


def _python_dict(text: str, name: str) -> dict[str, Any]:
    code = _numbered_code(text)
    start = code.index(f"{name} = {{") + len(f"{name} = ")
    return ast.literal_eval(_balanced(code, start))


def _segmind(text: str) -> dict[str, Any]:
    slug = re.search(r"POST /v2/([\w.-]+) · submit \+ poll", text)
    sync = re.search(r"POSThttps://api\.segmind\.com(/v1/[\w.-]+)", text)
    assert slug and sync
    defaults = dict(
        re.findall(r'\n(\w+)optional\n(?:(?!\w+optional\n)[^\n]*\n)*?Default: ("[^"]*")', text)
    )
    return {
        "v2_submit": f"/v2/{slug.group(1)}",
        "v1_sync": sync.group(1),
        "payload": _python_dict(text, "payload"),
        "states": re.findall(r"\n(QUEUED|PROCESSING|COMPLETED|FAILED)[A-Z]", text),
        "default_prompt": json.loads(defaults["prompt"]) if "prompt" in defaults else None,
    }


def _apiframe(text: str) -> dict[str, Any]:
    headers, body = _curl(text, "/v2/images/upscale")
    submitted = json.loads(_balanced(text, text.index("{", text.index("1. Submission response"))))
    rows = re.findall(r"\nclarityUpscaleParams\.(\w+) ([\w ()]+?) optional", text)
    return {
        "submit": {"path": "/v2/images/upscale", "headers": headers, "body": body},
        "submitted": submitted,
        "poll": {
            "path": "/v2/jobs/{id}",
            "reads": list(dict.fromkeys(re.findall(r'job\["(\w+)"\]', text))),
        },
        "params": [name for name, _type in rows],
        "param_types": {name: kind.strip() for name, kind in rows},
    }


def _find(pattern: str, text: str) -> re.Match[str]:
    found = re.search(pattern, text, re.S)
    if found is None:
        raise ValueError(f"the page no longer says {pattern!r}")
    return found


def _wireflow(text: str) -> dict[str, Any]:
    create_headers, create = _curl(text, "/api/v1/workflows")
    execute_headers, execute = _curl(text, "/execute")
    poll_headers, _ = _curl(text, "/poll")
    table = re.findall(r"\n(scale_factor|creativity|output_format) (\w+) (\S+) ", text)
    backoff = _find(
        r"starting interval is (\d+) second, multiplied by ([\d.]+) .*?capped at (\d+) seconds",
        text,
    )
    executed = _find(r"responds with a (\d+) status and an (\w+)", text)
    credits = _find(
        r"402 Insufficient Credits: The response includes (\w+), (\w+), and a (\w+)", text
    )
    return {
        "create": {"path": "/api/v1/workflows", "headers": create_headers, "body": create},
        "execute": {
            "path": "/api/v1/workflows/{id}/execute",
            "headers": execute_headers,
            "body": execute,
            "status": int(executed.group(1)),
            "reads": [executed.group(2)],
        },
        "poll": {
            "path": "/api/v1/workflows/executions/{id}/poll",
            "headers": poll_headers,
            "states": list(_find(r"state changes from (\w+) to (\w+) or (\w+)", text).groups()),
            "result": _find(r"returns the enhanced image URL in ([\w.]+)\.\s", text).group(1),
            "backoff": [float(g) for g in backoff.groups()],
        },
        "params": {name: {"type": kind, "default": json.loads(d)} for name, kind, d in table},
        "max_output_megapixels": int(_find(r"capped at (\d+) megapixels", text).group(1)),
        "errors": {
            "402": list(credits.groups()),
            "429": [_find(r"429 Rate Limited: Check the (\S+) header", text).group(1)],
            "500": [_find(r"500 Server Error: Log the (\S+) header", text).group(1)],
            "every": [_find(r"Every response includes (\S+)", text).group(1)],
        },
    }


def extract(pages: Path) -> dict[str, dict[str, Any]]:
    """Every seed's examples, parsed from the pages in ``pages``."""
    out: dict[str, dict[str, Any]] = {}
    for seed, what in SEEDS.items():
        text = (pages / f"{seed}.txt").read_text(encoding="utf-8")
        if what.startswith("segmind"):
            data = _segmind(text)
        elif what.startswith("apiframe"):
            data = _apiframe(text)
        else:
            data = _wireflow(text)
        out[seed] = {"seed": seed, "page": what, **data}
    return out


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else pages_dir()
    if source is None:
        raise SystemExit("usage: python -m tests.backends.seeds SEED_DIR")
    FIXTURES.mkdir(exist_ok=True)
    for seed, data in extract(source).items():
        path = FIXTURES / f"{seed}.json"
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(path)
