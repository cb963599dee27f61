"""Each seed page's own example, sent by Clarifier field for field; and the fixtures, verbatim.

The examples are the fixtures in ``tests/backends/fixtures/`` (named after the seeds), parsed
from the pages by :mod:`tests.backends.seeds`; when the pages are at hand, the first test parses
them again and checks the fixtures still say the same. Segmind's three pages (seeds 000–002)
are checked here, for the v2 submit and the v1 sync call alike; Apiframe's (003) and Wireflow's
(004) in ``test_apiframe.py`` and ``test_wireflow.py`` (``test_the_pages_example_is_what_
clarifier_sends``, ``test_the_guides_example_is_what_clarifier_sends``), next to their doubles.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from app.backends import registry
from app.backends.base import Request
from app.backends.providers.segmind import SegmindBackend
from app.backends.remote import PollCadence, RequestBudget
from pipeline.io.load import read_run_info
from pipeline.params import UpscaleParams
from tests.backends.seeds import SEEDS, extract, fixture, pages_dir
from tests.doubles.http_double import Scenario, tiny_png
from tests.doubles.segmind import KEY, SegmindDouble

FLUX, CREATIVE, CLARITY = "000_8de876c0c7db21dc", "001_4edfec69b5b2e851", "002_920f3842fb7d7fab"


def test_the_fixtures_are_the_pages_examples():
    pages = pages_dir()
    if pages is None:
        pytest.skip("the seed pages are not in this checkout (set CLARIFIER_SEEDS)")
    assert extract(pages) == {seed: fixture(seed) for seed in SEEDS}


# --- the page's settings, as Clarifier's parameters ---------------------------------------------
def clarity_params(payload: dict) -> UpscaleParams:
    """Seed 002's payload uses Clarifier's own names (the open model's inputs)."""
    return UpscaleParams().replace(
        **{k: v for k, v in payload.items() if k != "image"}, mode="creative"
    )


def creative_params(payload: dict) -> UpscaleParams:
    knobs = ("creativity", "resemblance", "dynamic", "fractality", "style")
    return UpscaleParams().replace(
        scale_factor=payload["scale_factor"],
        prompt=payload["prompt"],
        seed=None,
        **{f"creative.{k}": payload[k] for k in knobs},
    )


def flux_params(payload: dict) -> UpscaleParams:
    return UpscaleParams().replace(
        scale_factor=payload["scale_factor"],
        prompt=payload["prompt"],
        seed=None,
        **{"flux.creativity": payload["creativity"]},
    )


CASES = {
    CLARITY: ("clarity-upscaler", clarity_params),
    CREATIVE: ("clarityai-creative-upscaler", creative_params),
    FLUX: ("clarityai-flux-upscaler", flux_params),
}


@pytest.fixture
def double():
    with SegmindDouble() as d:
        d.default_scenario = Scenario(run_s=0.05)
        yield d


def run(double, photo, tmp_path, model, params, options):
    async def go():
        async with httpx.AsyncClient(timeout=10) as client:
            backend = SegmindBackend(
                client,
                double.url,
                KEY,
                model=model,
                budget=RequestBudget(1000, 1.0),
                cadence=PollCadence(0.01),
                retry_base=0.01,
            )
            request = Request("j1", photo, tmp_path / "out.png", params, options=options)
            return await backend.run(request, lambda e: None)

    return asyncio.run(go())


@pytest.mark.parametrize("seed", list(CASES))
@pytest.mark.parametrize("sync", ["false", "true"])
def test_segmind_sends_each_pages_example_field_for_field(double, photo, tmp_path, seed, sync):
    page = fixture(seed)
    model, to_params = CASES[seed]
    payload = page["payload"]
    # The page's image URL, served by the double so the job can run.
    url = double.cdn_put(tiny_png(8, 6), name="input.png")
    options = {"input_url": url, "segmind.sync": sync}
    outcome = run(double, photo, tmp_path, model, to_params(payload), options)
    path = page["v1_sync"] if sync == "true" else page["v2_submit"]
    (submit,) = double.requests("POST")
    assert submit.path == path
    sent = json.loads(submit.body)
    assert sent == {**payload, "image": url}
    assert all(type(sent[k]) is type(v) for k, v in payload.items() if k != "image")
    info = read_run_info(outcome.output)
    assert info is not None and info.engine == f"segmind/{model}"
    if sync == "false":  # the v2 flow reads what the page says a result holds
        assert set(page["states"]) == {"QUEUED", "PROCESSING", "COMPLETED", "FAILED"}
        assert double.count("GET", r"^/v2/requests/[^/]+/status$") >= 1
        assert double.count("GET", r"^/v2/requests/[^/]+$") == 1


@pytest.mark.parametrize("seed", [CREATIVE, FLUX])
def test_the_creative_and_flux_models_get_their_own_pages_default_prompt(
    double, photo, tmp_path, seed
):
    page = fixture(seed)
    model, _ = CASES[seed]
    params = UpscaleParams(scale_factor=4, seed=None)  # the prompt left at Clarifier's default
    outcome = run(double, photo, tmp_path, model, params, {})
    sent = json.loads(double.requests("POST")[0].body)
    assert sent["prompt"] == page["default_prompt"]
    assert read_run_info(outcome.output).params.prompt == page["default_prompt"]


def test_the_sync_call_can_be_chosen_and_auto_follows_the_pages_advice(double, photo, tmp_path):
    assert registry.parse_option("segmind.sync", "yes") == ("segmind.sync", "true")
    assert registry.parse_option("segmind.sync", "auto") == ("segmind.sync", "auto")
    with pytest.raises(ValueError, match="takes false, true, auto"):
        registry.parse_option("segmind.sync", "sometimes")
    with pytest.raises(LookupError, match="no option"):
        registry.parse_option("segmind.turbo", "true")
    # What `--set` hands over: the parameters stay, the backend's option becomes a job option.
    assert registry.split_options(["creative.style=anime", "segmind.sync=on", "seed=7"]) == (
        ["creative.style=anime", "seed=7"],
        {"segmind.sync": "true"},
    )
    for model in ("clarity-upscaler", "clarityai-creative-upscaler", "clarityai-flux-upscaler"):
        params = UpscaleParams(scale_factor=2, seed=None)
        run(double, photo, tmp_path, model, params, {"segmind.sync": "auto"})
    # ~18 s on its page: sync; ~140 s and ~344 s: "long-running (>~60s)", so async.
    assert [s.path for s in double.requests("POST")] == [
        "/v1/clarity-upscaler",
        "/v2/clarityai-creative-upscaler",
        "/v2/clarityai-flux-upscaler",
    ]
