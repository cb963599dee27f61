"""``clarifier upscale INPUT... -o OUT``: a batch through the same job controller and backends
as the window.

Inputs are files or folders (recursively; the folder structure is mirrored under OUT). The
parameters are the defaults, then a preset, then ``--set``, then the dedicated flags; one seed
serves the whole batch. Each image's result is printed as it ends (a line, or one JSON object
with ``--json``), above a progress line on a terminal. Ctrl-C cancels the queue. Exit status:
0 when every image succeeded, 1 when any failed (the others still finish), 2 for a usage or
parameter error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from app.backends import registry
from app.backends.base import JobError, JobState
from app.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from app.cli.models import model_dirs_from
from app.cli.progress import ProgressLine
from app.jobs import Job, JobController, JobEvent
from app.jobs.inputs import collect_inputs
from app.store.history import HistoryError, HistoryStore
from app.store.presets import PresetStore, read_preset_file
from app.store.settings import load_settings
from pipeline.errors import ImageError
from pipeline.io.load import read_parameters_text
from pipeline.metadata import RunInfo, params_from_infotext
from pipeline.models.store import find_models, missing_message
from pipeline.params import UpscaleParams

if TYPE_CHECKING:  # httpx and the provider machinery load only when a batch runs
    from app.jobs.providers import ProviderPool

__all__ = [
    "Item",
    "add_upscale_parser",
    "build_params",
    "cmd_upscale",
    "plan",
    "read_infotext",
    "run_items",
]

_FORMAT_SUFFIX = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
_SUFFIX_FORMAT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


# --- parsing ----------------------------------------------------------------------------------
def add_upscale_parser(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser(
        "upscale",
        help="upscale images or folders",
        description="Upscale files or folders (recursively; the folder "
        "structure is mirrored under OUT).",
    )
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    up.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output folder (created if missing); for a single input it may be a "
        "file name ending in .png, .jpg or .webp",
    )
    up.add_argument("--scale", type=float, metavar="S", help="scale factor, 1 to 16")
    up.add_argument(
        "--mode",
        choices=("faithful", "creative"),
        help="faithful: bundled Real-ESRGAN only; creative: the diffusion pass",
    )
    up.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any parameter (see `clarifier params`); repeatable",
    )
    up.add_argument("--preset", metavar="NAME|FILE", help="start from a preset")
    up.add_argument(
        "--infotext",
        metavar="FILE|IMAGE|-",
        help="take the parameters from A1111 infotext (the PNG 'parameters' text, as A1111, "
        "Clarity or Clarifier write it): a text file, an image that carries it, or - for "
        "standard input; on top of --preset, under --set and the other flags",
    )
    up.add_argument(
        "--backend",
        default="local",
        choices=registry.names(),
        help="where to run: the local engine or a hosted provider (its API key comes from the "
        "keyring, see `clarifier keys`, or the provider's environment variable)",
    )
    several = "; ".join(
        f"{info.name}: {', '.join(info.models)}"
        for info in registry.providers()
        if len(info.models) > 1
    )
    up.add_argument(
        "--model",
        default="",
        metavar="NAME",
        help=f"the provider's model, where it has several ({several})",
    )
    up.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --backend ray: the cluster to run on (ray://HOST:10001, HOST:6379, auto, or "
        "local for a new one on this computer); default: RAY_ADDRESS, else the cluster `ray "
        "start` started here, else a new local one",
    )
    up.add_argument("--seed", metavar="N", help="seed, or 'random'")
    up.add_argument(
        "--json",
        action="store_true",
        help="print one JSON line per image: input, output, parameters, seed, timings, error",
    )
    up.add_argument(
        "--if-exists",
        choices=("rename", "overwrite", "skip", "error"),
        default="rename",
        help="when the output file exists (default: rename)",
    )
    up.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: settings)")
    up.add_argument("--tile", type=int, metavar="PX", help="pre-upscaler tile size in pixels")
    up.add_argument(
        "--max-output-mp",
        type=float,
        metavar="MP",
        help="output cap in megapixels (default: settings, 64)",
    )
    up.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="DIR",
        help="also find model files in this folder (an A1111 or ComfyUI install, or a plain "
        "folder); repeatable",
    )
    up.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_infotext(source: str) -> str:
    """The infotext ``--infotext`` names: standard input (``-``), the parameters an image
    carries, or a text file."""
    if source == "-":
        return sys.stdin.read()
    path = Path(source).expanduser()
    if not path.is_file():
        raise UsageError(f"--infotext: {source}: no such file")
    try:
        text = read_parameters_text(path)
    except ImageError:  # not an image: a text file
        try:
            return path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--infotext: {source} cannot be read as text ({exc})") from None
    if text is None:
        raise UsageError(f"--infotext: {source} is an image without generation parameters")
    return text


def split_set(items: list[str]) -> tuple[list[str], dict[str, str]]:
    """``--set`` items split into parameters and backend options (``segmind.sync=true``)."""
    try:
        return registry.split_options(items)
    except (ValueError, registry.UnknownBackendError) as exc:
        raise UsageError(f"--set: {exc}") from None


def build_params(
    args: argparse.Namespace, store: PresetStore, notes: TextIO | None = None
) -> UpscaleParams:
    """Defaults, then the preset, then ``--infotext``, then ``--set``, then the dedicated flags.
    What the infotext holds that Clarifier cannot use is listed on ``notes`` (stderr)."""
    base = UpscaleParams()
    if args.preset:
        path = Path(args.preset)
        preset = (
            read_preset_file(path)
            if path.suffix == ".json" and path.is_file()
            else store.get(args.preset)
        )
        # A preference such as "4x-UltraSharp when installed" looks in --models folders too.
        base = preset.apply(base, model_dirs=model_dirs_from(getattr(args, "models", None) or []))
    if getattr(args, "infotext", None):
        base, unmapped = params_from_infotext(read_infotext(args.infotext), base)
        for note in unmapped:
            print(f"clarifier: note: --infotext: {note}", file=notes or sys.stderr)
    changes: dict[str, Any] = {}
    for item in split_set(args.set)[0]:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set expects NAME=VALUE, got {item!r}")
        changes[name.strip()] = UpscaleParams.parse_value(name.strip(), text)
    if args.scale is not None:
        changes["scale_factor"] = args.scale
    if args.mode is not None:
        changes["mode"] = args.mode
    if args.seed is not None:
        changes["seed"] = UpscaleParams.parse_value("seed", args.seed)
    return base.replace(**changes) if changes else base


# --- planning the outputs ---------------------------------------------------------------------
@dataclass
class Item:
    input: Path
    output: Path | None = None
    error: str | None = None  # a problem found before running (missing file, output exists)
    skipped: bool = False


def plan(
    inputs: Sequence[str], output: str, params: UpscaleParams, if_exists: str
) -> tuple[list[Item], UpscaleParams]:
    out = Path(output)
    as_file = out.suffix.lower() in _SUFFIX_FORMAT and not out.is_dir()
    pairs = collect_inputs(inputs, None if as_file else out)
    if not pairs:
        raise UsageError("no images found in " + ", ".join(inputs))
    if as_file:
        if len(pairs) != 1:
            raise UsageError(
                f"{output} is a file name, but there are {len(pairs)} inputs; give a "
                "folder for several inputs"
            )
        fmt = _SUFFIX_FORMAT[out.suffix.lower()]
        if params.output_format != fmt and params.output_format != UpscaleParams().output_format:
            raise UsageError(f"output_format={params.output_format} contradicts {out.name}")
        params = params.replace(output_format=fmt)
    items: list[Item] = []
    taken: set[Path] = set()
    suffix = _FORMAT_SUFFIX[params.output_format]
    for source, relative in pairs:
        item = Item(source)
        items.append(item)
        if not source.exists():
            item.error = f"{source}: no such file or folder"
            continue
        if as_file:
            target = out
        else:
            rel = relative if relative is not None else Path(source.name)
            target = out / rel.parent / (rel.stem + suffix)
            if target in taken:  # a.jpg and a.png in one folder: keep both
                target = target.with_name(f"{rel.stem}-{source.suffix.lstrip('.').lower()}{suffix}")
        item.output = _resolve_existing(target, if_exists, taken, item)
        if item.output is not None:
            taken.add(item.output)
    return items, params


def _resolve_existing(target: Path, policy: str, taken: set[Path], item: Item) -> Path | None:
    if not target.exists() and target not in taken:
        return target
    if policy == "overwrite" and target not in taken:
        return target
    if policy == "skip":
        item.skipped = True
        return None
    if policy == "error":
        item.error = f"{target} already exists (use --if-exists overwrite, rename or skip)"
        return None
    n = 1
    while True:
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")
        if not candidate.exists() and candidate not in taken:
            return candidate
        n += 1


# --- reporting --------------------------------------------------------------------------------
def _record(item: Item, job: Job | None, params: UpscaleParams) -> dict[str, Any]:
    record: dict[str, Any] = {
        "input": str(item.input),
        "output": None,
        "status": "failed",
        "parameters": params.to_dict(),
        "seed": params.seed,
        "timings": {},
        "warnings": [],
        "error": None,
    }
    if item.skipped:
        record.update(status="skipped", output=None)
        return record
    if job is None:
        record["error"] = {"kind": "invalid_request", "message": item.error}
        return record
    record["status"] = str(job.state)
    if job.outcome is not None:
        info = RunInfo.from_dict(job.outcome.info) if job.outcome.info else None
        record["output"] = str(job.outcome.output)
        if info is not None:
            record["parameters"] = info.params.to_dict()
            record["seed"] = info.params.seed
            record["size"] = {"input": info.source_size, "output": info.output_size}
        record["warnings"] = list(job.outcome.warnings)
        record["timings"] = {k: round(v, 3) for k, v in job.outcome.timings.items()}
    if job.elapsed is not None:
        record["timings"]["total"] = round(job.elapsed, 3)
    if job.error is not None:
        record["error"] = {"kind": str(job.error.kind), "message": job.error.message}
    return record


def _human_line(record: dict[str, Any]) -> str:
    status = record["status"]
    if status == "succeeded":
        size = record.get("size") or {}
        dims = ""
        if size.get("input") and size.get("output"):
            (iw, ih), (ow, oh) = size["input"], size["output"]
            dims = f" ({iw}×{ih} → {ow}×{oh}"
            dims += f", {record['timings'].get('total', 0):.1f} s)"
        lines = [f"ok    {record['input']} → {record['output']}{dims}"]
        lines += [f"      note: {w}" for w in record["warnings"]]
        return "\n".join(lines)
    if status == "skipped":
        return f"skip  {record['input']} (output exists)"
    message = (record.get("error") or {}).get("message") or status
    return f"{'stop' if status == 'canceled' else 'FAIL'}  {record['input']}: {message}"


# --- running ----------------------------------------------------------------------------------
def check_backend(pool: ProviderPool, backend: str, model: str) -> str | None:
    """What stops every image on this backend before it starts (unknown model, no key)."""
    if backend == "local":
        return None
    try:
        instance = pool.get(backend, model)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check = getattr(instance, "check_ready", None)
    if check is not None:
        try:
            check()
        except JobError as err:
            return err.message
    return None


def open_history() -> HistoryStore | None:
    """The history database, or None (with a warning) when it cannot be opened: a batch still
    runs, it is only not recorded."""
    try:
        return HistoryStore()
    except HistoryError as exc:
        print(f"clarifier: warning: {exc}; this run is not recorded", file=sys.stderr)
        return None


async def run_items(
    items: list[Item],
    params: UpscaleParams,
    *,
    backend: str,
    options: dict[str, Any],
    json_out: bool,
    progress: ProgressLine | None,
    out: TextIO,
    pool: ProviderPool | None = None,
    model: str = "",
) -> int:
    if pool is None:
        from app.jobs.providers import ProviderPool

        pool = ProviderPool()
    store = open_history()
    controller = JobController(pool, store=store)
    jobs: dict[int, Job] = {}
    interrupted = False
    ordered = [i for i in items if i.output is not None and i.error is None]
    if progress:
        progress.start(len(ordered))

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) if json_out else _human_line(record)
        if progress:
            progress.print_above(line, out)
        else:
            print(line, file=out, flush=True)

    def on_event(event: JobEvent) -> None:
        if progress:
            progress.update(event)
        if event.state.terminal:
            item = next(i for i, j in jobs.items() if j is event.job)
            emit(_record(items[item], event.job, params))

    controller.add_listener(on_event)
    for item in items:
        if item.error is not None or item.skipped:
            emit(_record(item, None, params))
    for index, item in enumerate(items):
        if item.output is not None and item.error is None:
            assert item.output is not None
            item.output.parent.mkdir(parents=True, exist_ok=True)
            jobs[index] = controller.submit(
                item.input, item.output, params, backend=backend, model=model, options=options
            )

    loop = asyncio.get_running_loop()

    def on_interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        controller.cancel_all()

    with _sigint_handler(loop, on_interrupt):
        try:
            await controller.join()
        finally:
            await controller.aclose()
            if store is not None:
                store.close()
            if progress:
                progress.finish()
    if interrupted:
        return EXIT_INTERRUPTED
    failed = any(i.error for i in items) or any(
        j.state != JobState.succeeded for j in jobs.values()
    )
    return EXIT_FAILED if failed else EXIT_OK


class _sigint_handler:
    """Ctrl-C cancels the queue (running jobs stop between tiles) instead of killing us."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Any) -> None:
        self._loop, self._callback, self._installed = loop, callback, False

    def __enter__(self) -> None:
        try:
            self._loop.add_signal_handler(signal.SIGINT, self._callback)
            self._installed = True
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            self._loop.remove_signal_handler(signal.SIGINT)


def cmd_upscale(args: argparse.Namespace) -> int:
    ray_address = getattr(args, "ray_address", None)
    if ray_address and args.backend != "ray":
        raise UsageError("--ray-address is for --backend ray")
    settings = load_settings()
    if args.max_output_mp is not None or args.device or args.tile is not None:
        try:
            settings = dataclasses.replace(
                settings,
                max_output_megapixels=args.max_output_mp or settings.max_output_megapixels,
                device=args.device or settings.device,
                tile=args.tile if args.tile is not None else settings.tile,
            ).validate()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    options = {**settings.engine_options(), "model_dirs": model_dirs_from(args.models)}
    options.update(split_set(args.set)[1])  # backend options, e.g. segmind.sync=true
    params = build_params(args, PresetStore())
    items, params = plan(args.inputs, args.output, params, args.if_exists)
    if params.mode == "creative" and args.backend == "local" and not args.json:
        # Every image would fail the same way: say what is missing once, before starting
        # (--json keeps its one line per image; each then carries the same error).
        check = find_models(params, options["model_dirs"])
        if check.missing:
            print(f"clarifier: {missing_message(check.missing, check.searched)}", file=sys.stderr)
            return EXIT_FAILED
    from app.jobs.providers import ProviderPool  # httpx and the provider machinery: now

    pool = ProviderPool(
        settings, overrides={"ray": {"address": ray_address}} if ray_address else None
    )
    problem = check_backend(pool, args.backend, args.model)
    if problem is not None:  # say it once, not once per image
        print(f"clarifier: {problem}", file=sys.stderr)
        return EXIT_FAILED
    # One seed for the whole batch, so a batch is reproducible from any one of its outputs.
    params = params.with_resolved_seed()
    show_progress = not args.no_progress and sys.stderr.isatty()
    progress = ProgressLine(sys.stderr) if show_progress else None
    return asyncio.run(
        run_items(
            items,
            params,
            backend=args.backend,
            options=options,
            json_out=args.json,
            progress=progress,
            out=sys.stdout,
            pool=pool,
            model=args.model,
        )
    )
