"""Plain words for jobs and runs: states, progress, times, costs and what to do after an error.

Pure functions with no Qt, so the rules are unit-tested on their own and the queue panel, the
history panel and the status bar all say the same thing the same way. The inputs are duck-typed:
a live :class:`~app.jobs.Job` or a stored :class:`~app.store.history.RunRecord` both work where
only their common fields are read (state, stage, backend, model, message, error).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Protocol

from app.backends.base import ErrorKind, JobState

__all__ = [
    "backend_label",
    "backend_model_text",
    "can_cancel_remotely",
    "cost_text",
    "duration_text",
    "error_hint",
    "estimate_remaining",
    "eta_text",
    "is_remote",
    "params_text",
    "pass_label",
    "progress_text",
    "retry_delay",
    "run_details",
    "run_duration",
    "run_seed",
    "search_text",
    "state_text",
]


class _JobLike(Protocol):
    state: Any
    stage: str
    backend: str
    message: str


# --- backends ---------------------------------------------------------------------------------
def _info(backend: str) -> Any:
    """The backend's facts, or None for a name this build does not know (an old history row)."""
    from app.backends.capabilities import backend_info

    try:
        return backend_info(backend)
    except (KeyError, ValueError):
        return None


def backend_label(backend: str) -> str:
    """ "This computer", "Segmind", ...; an unknown name is shown as it is, capitalized."""
    info = _info(backend)
    return info.label if info is not None else (backend[:1].upper() + backend[1:])


def is_remote(backend: str) -> bool:
    info = _info(backend)
    return info.remote if info is not None else backend != "local"


def can_cancel_remotely(backend: str) -> bool:
    """Whether a cancel stops the work (and the billing) where the job runs."""
    info = _info(backend)
    return info.can_cancel if info is not None else not is_remote(backend)


def backend_model_text(backend: str, model: str = "") -> str:
    """ "This computer" for the local engine; "Segmind · Clarity upscaler" for a provider."""
    label = backend_label(backend)
    if not is_remote(backend):
        return label
    from app.backends.capabilities import model_label

    try:
        name = model_label(backend, model)
    except (KeyError, ValueError):
        name = model
    return f"{label} · {name}" if name else label


# --- states -----------------------------------------------------------------------------------
def _state(value: Any) -> JobState | None:
    try:
        return JobState(str(value))
    except ValueError:
        return None


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def state_text(job: _JobLike) -> str:
    """One short line for the job's state, naming the provider when the job is remote:
    "Queued at Segmind (position 3)", "Running at Replicate", "Downloading result"."""
    state = _state(job.state)
    stage = job.stage or ""
    message = job.message or ""
    remote = is_remote(job.backend)
    label = backend_label(job.backend)
    if state is None:
        return _upper_first(str(job.state))
    if state is JobState.queued:
        if retry_delay(message) is not None:
            return "Waiting to retry"
        if remote and stage.startswith("queued at"):
            return _upper_first(stage)
        if message == "resumed":
            return "Resuming"
        return f"Waiting to send to {label}" if remote else "Waiting"
    if state is JobState.uploading:
        return f"Uploading to {label}" if remote else "Uploading"
    if state is JobState.submitting:
        return f"Submitting to {label}" if remote else "Submitting"
    if state is JobState.running:
        if not remote:
            return "Running on this computer"
        return _upper_first(stage) if stage.startswith("running at") else f"Running at {label}"
    if state is JobState.downloading:
        return "Saving result" if stage == "saving" else "Downloading result"
    if state is JobState.submit_unknown:
        return "Submission unconfirmed — check before sending again"
    if state is JobState.lost:
        return f"Lost: {label if remote else 'the provider'} no longer has the result"
    return {
        JobState.succeeded: "Done",
        JobState.failed: "Failed",
        JobState.canceled: "Canceled",
    }[state]


# --- progress ---------------------------------------------------------------------------------
_STAGES = {
    "load": "Reading the image",
    "models": "Loading models",
    "pre-upscale": "Pre-upscale",
    "encode": "Encoding",
    "diffusion": "Diffusion",
    "decode": "Decoding",
    "alpha": "Transparency",
    "post": "Finishing",
    "save": "Saving the output",
}
_TILE_STAGES = {"pre-upscale", "encode", "decode", "alpha"}
_PASS = re.compile(r"\bpass (\d+)/(\d+)")
_STEP = re.compile(r"\bstep (\d+)/(\d+)")
_TILES = re.compile(r"\btiles? (\d+)/(\d+)")
_RETRY = re.compile(r"retrying in (\d+(?:\.\d+)?) s\b")


def pass_label(message: str) -> str:
    """ "pass 1/2" when the engine's message names a pass of a multi-pass run, else ""."""
    found = _PASS.search(message or "")
    return found.group(0) if found else ""


def retry_delay(message: str) -> float | None:
    """The delay the controller announced before an automatic retry ("…; retrying in 30 s")."""
    found = _RETRY.search(message or "")
    return float(found.group(1)) if found else None


def progress_text(job: Any) -> str:
    """What is being done, with its counts: "Diffusion · tile 3/8 · step 12/18",
    "Pre-upscale · pass 1/2 · tile 5/12", "Running at Replicate · 45%". Empty when the state
    line already says everything."""
    state = _state(job.state)
    stage = job.stage or ""
    message = job.message or ""
    done, total = int(job.done or 0), int(job.total or 0)
    if state is None or state.terminal or state is JobState.submit_unknown:
        return ""
    if message.startswith("cannot resume"):  # its backend is gone: it will not move
        return _upper_first(message)
    if is_remote(job.backend):
        if state is JobState.running and total == 100:
            return f"{done}%"
        quiet = {"", stage, "resumed", "queued"} | {f"queued at {backend_label(job.backend)}"}
        if state is JobState.queued and message not in quiet:
            return _upper_first(message)
        return ""
    if state is JobState.queued:
        return "" if message in ("", "queued", "resumed") else _upper_first(message)
    if stage not in _STAGES:
        parts = [_upper_first(stage)] if stage else []
        if total:
            parts.append(f"{done}/{total}")
        elif message:
            parts.append(message)
        return " · ".join(parts)
    parts = [_STAGES[stage]]
    if (found := _PASS.search(message)) is not None:
        parts.append(f"pass {found.group(1)}/{found.group(2)}")
    if stage == "diffusion":
        tiles = _TILES.search(message)
        step = _STEP.search(message)
        if tiles is not None:
            parts.append(f"tile {tiles.group(1)}/{tiles.group(2)}")
        if step is not None:
            parts.append(f"step {step.group(1)}/{step.group(2)}")
        elif total:
            parts.append(f"step {done}/{total}")
        elif message:  # a note without counts, e.g. a restart with smaller tiles
            parts.append(message)
    elif stage in _TILE_STAGES:
        if total:
            parts.append(f"tile {done}/{total}")
    elif stage == "models" and message:
        return _upper_first(message)
    elif stage == "post" and message == "sharpen":
        return "Sharpening"
    return " · ".join(parts)


# --- times ------------------------------------------------------------------------------------
def duration_text(seconds: float) -> str:
    """A compact duration: "45 s", "1 min 20 s", "2 h 05 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, secs = divmod(seconds, 60)
        return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes:02d} min"


def eta_text(seconds: float | None) -> str:
    """How long is left, rounded so it does not flicker: "about 1 min 20 s left"."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 5:
        return "almost done"
    if seconds < 60:
        return f"about {max(5, 5 * round(seconds / 5))} s left"
    if seconds < 600:
        rounded = 10 * round(seconds / 10)
        minutes, secs = divmod(rounded, 60)
        return f"about {minutes} min {secs} s left" if secs else f"about {minutes} min left"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min left"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"about {hours} h {minutes} min left" if minutes else f"about {hours} h left"


def estimate_remaining(elapsed: float, fraction_start: float, fraction_now: float) -> float | None:
    """Time left in a stage from its rate so far, or None while the rate means nothing yet
    (under two seconds, or no progress since the stage began)."""
    progressed = fraction_now - fraction_start
    if elapsed < 2.0 or progressed <= 0 or fraction_now >= 1.0:
        return None
    return elapsed * (1.0 - fraction_now) / progressed


def run_duration(record: Any, now: float | None = None) -> float | None:
    """How long a run took: its timings' total, else finished − created; a run that has not
    ended counts up to ``now`` (wall clock)."""
    timings = record.timings or {}
    if record.finished is not None and record.created:
        return max(0.0, record.finished - record.created)
    if isinstance(timings.get("total"), int | float):
        return float(timings["total"])
    state = _state(record.state)
    if state is not None and not state.terminal and record.created:
        return max(0.0, (time.time() if now is None else now) - record.created)
    numbers = [v for v in timings.values() if isinstance(v, int | float)]
    return float(sum(numbers)) if numbers else None


# --- errors -----------------------------------------------------------------------------------
def _clock(when: float) -> str:
    return time.strftime("%H:%M", time.localtime(when))


def error_hint(
    kind: ErrorKind | str | None, *, backend: str = "", retry_at: float | None = None
) -> str:
    """What the person can do about an error of this kind, in one sentence. The error message
    itself stays as the backend wrote it (amounts, fields and all); this only adds the next step."""
    try:
        kind = ErrorKind(str(kind)) if kind else None
    except ValueError:
        kind = None
    label = backend_label(backend) if backend else "the provider"
    if kind is ErrorKind.rate_limited:
        if retry_at is not None:
            return f"Will retry at {_clock(retry_at)}."
        return "Wait a minute, then press Retry."
    hints = {
        ErrorKind.auth: "Add your key in Settings.",
        ErrorKind.insufficient_funds: f"Top up your {label} account, then press Retry.",
        ErrorKind.invalid_request: "Change the settings it names, then press Retry.",
        ErrorKind.model_failed: "Press Retry, or try another seed or model.",
        ErrorKind.content_rejected: (
            f"{_upper_first(label)}'s content rules refused this image; retrying will not help."
        ),
        ErrorKind.transient: "Press Retry; it may work now.",
        ErrorKind.timeout: "Press Retry; it continues where it stopped.",
        ErrorKind.protocol: "Press Retry; if it happens again, please report it.",
        ErrorKind.expired: "Press Retry to run it again (this sends a new job).",
        ErrorKind.out_of_memory: (
            "Close other programs that use the graphics card, use smaller tiles, or run on the CPU."
        ),
        ErrorKind.worker_died: "Press Retry; the next job starts a fresh engine.",
        ErrorKind.internal: "This is a bug in Clarifier; please report it.",
        ErrorKind.submit_unknown: (
            f"Check your {label} dashboard: if the job is there, choose “It went through”; "
            "otherwise “Send again” (it may bill twice)."
        ),
    }
    return hints.get(kind, "") if kind is not None else ""


# --- history rows -----------------------------------------------------------------------------
def cost_text(cost: float | None, unit: str = "") -> str:
    """ "$0.12", "0.3 credits", or "" when the provider did not say."""
    if cost is None:
        return ""
    unit = (unit or "").strip()
    if unit.lower() in ("usd", "$", "dollars"):
        return f"${cost:.4f}".rstrip("0").rstrip(".") if cost < 0.01 else f"${cost:,.2f}"
    return f"{cost:g} {unit}".strip()


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def params_text(params: Mapping[str, Any], backend: str = "local") -> str:
    """The parameters that shape the result most: "Creative ×2 · creativity 0.35 ·
    resemblance 0.6". The local faithful mode has no creativity to show."""
    scale = params.get("scale_factor")
    head = f"×{_number(scale)}" if scale is not None else ""
    creative = params.get("mode") == "creative" or is_remote(backend)
    parts = []
    if not is_remote(backend) and params.get("mode"):
        parts.append(f"{_upper_first(str(params['mode']))} {head}".strip())
    elif head:
        parts.append(head)
    if creative:
        for name in ("creativity", "resemblance"):
            if params.get(name) is not None:
                parts.append(f"{name} {_number(params[name])}")
    return " · ".join(parts)


def search_text(record: Any) -> str:
    """Everything a history search matches, lower-cased: the same fields the store searches
    (paths, parameters, model, request id) plus the backend's name and label."""
    parts = [
        record.input,
        record.output,
        json.dumps(record.params, ensure_ascii=False),
        record.model or "",
        record.remote_id or "",
        record.backend,
        backend_label(record.backend),
    ]
    return "\n".join(parts).lower()


def run_seed(record: Any) -> int | None:
    """The seed that made a run: the one asked for, else the one the engine or the provider
    drew (kept in the output's run info or the remote checkpoint), else None."""
    if record.seed is not None:
        return int(record.seed)
    info_params = (record.info or {}).get("params") or {}
    for value in (info_params.get("seed"), (record.remote or {}).get("seed")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def run_details(record: Any) -> str:
    """Everything worth knowing about one run, a few lines of plain text for the history's
    detail area (selectable, so paths, seeds and messages can be copied)."""
    from pathlib import Path

    seed = run_seed(record)
    params = record.params or {}
    creative = params.get("mode") != "faithful" or is_remote(record.backend)
    facts = [
        params_text(params, record.backend),
        f"seed {seed}" if seed is not None else "",
        f"{params['num_inference_steps']} steps"
        if creative and "num_inference_steps" in params
        else "",
        cost_text(record.cost, record.cost_unit),
        f"request {record.remote_id}" if record.remote_id else "",
    ]
    where = backend_model_text(record.backend, record.model)
    lines = [
        f"{Path(record.input).name} — {where} — {state_text(record)}",
        " · ".join(f for f in facts if f),
        f"Output: {record.output}",
    ]
    if params.get("prompt") and creative:
        lines.append(f"Prompt: {params['prompt']}")
    state = _state(record.state)
    if state in (JobState.failed, JobState.lost, JobState.canceled) and record.message:
        lines.append(record.message)
        hint = error_hint(record.error_kind, backend=record.backend)
        if hint and state is not JobState.canceled:
            lines.append(hint)
    return "\n".join(lines)
