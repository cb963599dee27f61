"""What the served model does, apart from Cog: its set-up and one prediction.

The engine runs in the local backend's worker process (``python -m pipeline.worker``), exactly
as for a job on this computer: the models stay loaded between predictions, a cancel stops the
run between tiles and steps, and a crash or an out-of-memory kill fails one prediction (the
next starts a fresh worker). The engine options are the CLI's: the settings' device, precision,
tile and output cap, and their model folders after the server's own.

Set-up finds the models Clarity's defaults need. When some are missing it fails with the
message that lists them and the command that fetches them, unless the operator accepted their
licences (``CLARIFIER_ACCEPT_MODEL_LICENCES=1``, what a Cog image on a host without a models
volume sets): then they are downloaded into Clarifier's models folder first, as
``clarifier models download --all-required --accept-licences`` would. A one-step warm-up run
then loads them, so the first prediction starts at once.

Everything the engine says goes to ``log`` as lines: plain lines for what it is doing and
tqdm-style bars (``diffusion  45%|####      | 9/20``) that Cog clients read as progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.backends.base import BackendEvent, JobError, JobState, Request
from app.backends.local import LocalBackend
from app.serve.config import ACCEPT_LICENCES_ENV, MODELS_ENV, ServeConfig
from app.serve.fetch import fetch_image, new_client
from app.serve.inputs import InputRefused, params_from_inputs
from pipeline.errors import ModelError
from pipeline.models.store import ModelEntry, find_models, missing_message
from pipeline.params import UpscaleParams

__all__ = ["PredictionFailed", "ServedEngine"]

_SUFFIX = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
_WARM_UP = UpscaleParams(mode="creative", num_inference_steps=1, seed=0)

Log = Callable[[str], None]


class PredictionFailed(Exception):
    """A prediction that could not run; the message is for the client (Cog reports it as the
    prediction's ``error``)."""


@dataclass
class _Progress:
    """Turns the engine's progress events into log lines: a bar line per whole percent of a
    stage with several steps, the name of a stage of one."""

    log: Log
    _last: tuple[str, int] | None = None
    _said: str = ""

    def __call__(self, event: BackendEvent) -> None:
        if event.state is JobState.running and event.message:
            self.log(f"engine on {event.message}")  # the worker's device
            return
        if event.total > 1:
            pct = min(100, round(100 * event.done / event.total))
            if (event.stage, pct) != self._last:
                self._last = (event.stage, pct)
                bar = "#" * (pct // 10)
                self.log(f"{event.stage} {pct:3d}%|{bar:<10}| {event.done}/{event.total}")
            return
        line = f"{event.stage}: {event.message}" if event.message else event.stage
        if line and line != self._said:  # a one-step stage: its name, once
            self._said = line
            self.log(line)


@dataclass
class ServedEngine:
    """The engine behind one Cog server: :meth:`start` once, then :meth:`run` per prediction
    (one at a time, as Cog sends them)."""

    config: ServeConfig
    log: Log = print
    backend: LocalBackend = field(default_factory=LocalBackend)
    _root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="clarifier-serve-")))
    _folders: list[Path] = field(default_factory=list)  # of the predictions, newest last
    _one_at_a_time: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def start(self) -> None:
        """Find (or fetch) the models and load them with a warm-up run; raises
        :class:`PredictionFailed` with the reason, which Cog shows as the set-up logs."""
        check = find_models(_WARM_UP, self.config.model_dirs)
        if check.missing and self.config.accept_licences:
            await self._download([m.entry for m in check.missing if m.entry is not None])
            check = find_models(_WARM_UP, self.config.model_dirs)
        if check.missing:
            message = missing_message(check.missing, check.searched)
            hint = (
                f"Mount a models folder and name it in {MODELS_ENV}, or set "
                f"{ACCEPT_LICENCES_ENV}=1 to download them at set-up (accepting their licences)."
            )
            raise PredictionFailed(f"{message}\n{hint}")  # Cog shows it as the set-up logs
        self.log("loading the models (a one-step warm-up run)")
        work = self._root / "warm-up"
        work.mkdir(exist_ok=True)
        source = work / "image"
        source.write_bytes(_warm_up_image())
        output = work / "output.png"
        try:
            await self._engine(source, output, _WARM_UP)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.log("ready")

    async def run(
        self, inputs: Mapping[str, Any], *, client: httpx.AsyncClient | None = None
    ) -> Path:
        """Run one prediction from Clarity's inputs; returns the output file, which Cog reads
        after this returns (it is removed when the prediction after next starts). Raises
        :class:`PredictionFailed` with a message for the client. Predictions run one at a time,
        even when Cog is configured to send several."""
        async with self._one_at_a_time:
            for old in self._folders[:-1]:  # the last one's output may still be being sent
                shutil.rmtree(old, ignore_errors=True)
            del self._folders[:-1]
            work = self._root / uuid.uuid4().hex
            work.mkdir()
            self._folders.append(work)
            return await self._predict(inputs, work, client)

    async def _predict(
        self, inputs: Mapping[str, Any], work: Path, client: httpx.AsyncClient | None
    ) -> Path:
        try:
            params = params_from_inputs(inputs)
            async with contextlib.AsyncExitStack() as stack:
                http = client or await stack.enter_async_context(new_client())
                source = work / "image"
                source.write_bytes(await fetch_image(inputs["image"], name="image", client=http))
                if inputs.get("mask"):
                    mask = work / "mask"
                    mask.write_bytes(await fetch_image(inputs["mask"], name="mask", client=http))
                    params = params.replace(mask=str(mask))
        except InputRefused as exc:
            raise PredictionFailed(str(exc)) from None
        output = work / ("output" + _SUFFIX[params.output_format])
        return await self._engine(source, output, params)

    async def _engine(self, source: Path, output: Path, params: UpscaleParams) -> Path:
        request = Request(uuid.uuid4().hex, source, output, params, dict(self.config.options))
        try:
            outcome = await self.backend.run(request, _Progress(self.log))
        except JobError as err:
            raise PredictionFailed(err.message) from None
        for warning in outcome.warnings:
            self.log(f"note: {warning}")
        if outcome.timings:
            parts = ", ".join(f"{k} {v:.2f} s" for k, v in outcome.timings.items())
            self.log(f"engine timings: {parts}")
        return outcome.output

    async def _download(self, entries: Sequence[ModelEntry]) -> None:
        from app.models.download import download  # httpx transfers: only when needed

        for entry in entries:
            self.log(f"downloading {entry.file} ({entry.size_text}, licence: {entry.licence_text})")
            shown = _DownloadLog(self.log, entry.file)
            try:
                path = await asyncio.to_thread(download, entry, accept_licence=True, progress=shown)
            except ModelError as exc:
                self.log(f"could not download {entry.file}: {exc}")
                raise PredictionFailed(f"could not download {entry.file}: {exc}") from None
            self.log(f"downloaded {entry.file} to {path}")

    async def aclose(self) -> None:
        await self.backend.aclose()
        shutil.rmtree(self._root, ignore_errors=True)


@dataclass
class _DownloadLog:
    """A download's progress as a log line every tenth."""

    log: Log
    name: str
    _tenth: int = -1

    def __call__(self, done: int, total: int | None) -> None:
        if not total:
            return
        tenth = min(10, done * 10 // total)
        if tenth != self._tenth:
            self._tenth = tenth
            self.log(f"{self.name} {tenth * 10:3d}%|{'#' * tenth:<10}| {done}/{total}")


def _warm_up_image() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()
