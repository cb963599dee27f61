"""Refusing what a provider cannot express, by name (ARCHITECTURE rule 1).

A provider whose page lists a short, closed set of fields (Apiframe's nine, Wireflow's three)
takes those and nothing else: any other :class:`~pipeline.params.UpscaleParams` field that is
not at its default is a setting the provider would silently drop, so the job is refused before
anything is sent, with every such field named. :func:`untaken` finds them; :func:`refusal`
turns the findings into the one ``invalid_request`` error a mapper raises.

``mode`` is never refused: it only says which local pass runs, and a hosted Clarity always runs
the diffusion pass (the saved output records that). A seed is refused unless the provider takes
one, except ``None`` (random, which is what such a provider does) and the default seed, which
the CLI and the window send when the person never touched it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from app.backends.base import ErrorKind, JobError
from pipeline.params import UpscaleParams

__all__ = ["CLARITY_UPSCALER", "as_hosted", "refusal", "untaken"]

_DEFAULTS = UpscaleParams()
_NEVER_REFUSED = frozenset({"mode"})
# The pre-upscaler hosted Clarity runs (its predict.py hard-codes it): asking for it asks for
# nothing the provider would not do, so the "Clarity default" preset runs there as it does here.
CLARITY_UPSCALER = "4x-UltraSharp"


def as_hosted(name: str, value: Any) -> bool:
    """Whether ``value`` of field ``name`` is what a hosted Clarity does anyway: the default,
    or Clarity's own pre-upscaler."""
    default = _value(_DEFAULTS, name)
    return value == default or (name == "upscaler" and value == CLARITY_UPSCALER)


def untaken(
    params: UpscaleParams, taken: Collection[str], where: str, *, seed: bool = False
) -> dict[str, list[str]]:
    """The fields of ``params`` outside ``taken`` that differ from their defaults, each with the
    reason ``where`` (e.g. "Apiframe's clarity-upscale") cannot take it. ``seed``: whether the
    provider takes a seed at all."""
    problems: dict[str, list[str]] = {}
    for name, _spec, default in UpscaleParams.specs():
        if name in taken or name in _NEVER_REFUSED:
            continue
        value = _value(params, name)
        if value == default or as_hosted(name, value):
            continue
        if name == "seed" and not seed and value is None:
            continue  # random: the provider draws its own anyway
        if name == "seed" and not seed:
            why = f"{where} takes no seed (it draws its own); leave the seed random"
        else:
            why = f"{where} has no {name} setting (got {value!r})"
        problems[name] = [why]
    return problems


def refusal(label: str, problems: Mapping[str, list[str]]) -> JobError:
    """The error for settings ``label`` cannot run: every field named, and what to do."""
    listed = "; ".join(f"{name}: {' / '.join(why)}" for name, why in problems.items())
    return JobError(
        ErrorKind.invalid_request,
        f"{label} cannot run these settings ({listed}). Change them, or run the job on another "
        "backend.",
        details={"fields": {name: list(why) for name, why in problems.items()}},
    )


def _value(params: UpscaleParams, name: str) -> Any:
    group, _, leaf = name.rpartition(".")
    return getattr(getattr(params, group), leaf) if group else getattr(params, name)
