"""Turn A1111-syntax prompts into CLIP conditioning exactly as A1111 v1.7 does for SD 1.5.

diffusers' own ``encode_prompt`` truncates at 77 tokens and knows no emphasis, so Clarity's
prompts (``(… :2)`` weights, a textual-inversion negative, sometimes more than 75 tokens) would
condition the UNet differently from the reference. :class:`PromptEncoder` reproduces A1111's
conditioning (CLIP skip 1 is Clarity's setting):

1. The prompt syntax of :mod:`pipeline.diffusion.prompt_syntax`: extra-network tags out of the
   prompt, the prompt split at ``AND``, every part (and the negative prompt) scheduled over the
   run's steps; each scheduled text is read for emphasis, and every weighted fragment is
   tokenised on its own, without BOS/EOS.
2. Tokens fill chunks of 75. ``BREAK`` starts a new chunk; a chunk that overflows is cut after its
   last comma when that comma lies within ``comma_backtrack`` (A1111: 20) tokens of the end.
   Textual-inversion names are found among the tokens (so case-insensitively, as whole tokens)
   and replaced by their vectors, which never straddle two chunks.
3. Each chunk becomes BOS + 75 + EOS, padded with EOS (SD 1.5 pads with EOS), and goes through
   the text encoder; embedding vectors replace the token embeddings of their slots during that
   call only, so nothing in the tokenizer or the model changes.
4. A1111 encodes all texts of one schedule as one batch, chunk by chunk (a text with fewer
   chunks gets empty-prompt chunks, so every text of a schedule has the same length), and
   restores the mean over that whole batch: ``z *= weights``, then
   ``z *= mean(z_before) / mean(z_after)``; the chunks are concatenated: ``[1, 77·k, hidden]``.

The text encoder runs once per distinct 77-token chunk: its raw outputs are cached, and the cache
notices LoRA adapters being added, re-weighted, merged or fused into the text encoder, so a stale
encoding is never returned.
"""

from __future__ import annotations

import pickle
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.diffusion.prompt_syntax import (
    is_break,
    parse_attention,
    prompt_schedule,
    split_and,
    take_extra_networks,
)
from pipeline.errors import FieldError, ModelError, ParamsError

if TYPE_CHECKING:
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDING_SUFFIXES",
    "CondSchedule",
    "Conditioning",
    "PromptChunk",
    "PromptEncoder",
    "load_embedding",
]

EMBEDDING_SUFFIXES: tuple[str, ...] = (".pt", ".safetensors", ".bin", ".pth", ".ckpt")
_CACHE_SIZE = 64  # raw text-encoder outputs of distinct chunks (77 x hidden floats each)
_PLACEHOLDER_ID = 0  # token id under an embedding vector; its own embedding is replaced


@dataclass
class PromptChunk:
    """One 77-token window as fed to CLIP.

    ``vectors`` maps a position in the window to ``(embedding name, row)`` for
    textual-inversion slots; ``ids`` holds a placeholder there.
    """

    ids: list[int]
    weights: list[float]
    vectors: dict[int, tuple[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class CondSchedule:
    """One prompt's conditioning over a run: A1111's list of ``ScheduledPromptConditioning``.

    Entry ``i`` holds ``texts[i]`` (the scheduled text, emphasis syntax included) and its
    ``embeddings[i]`` (``[1, L, hidden]``), in force up to model call ``end_steps[i]``; the ends
    ascend and the last is the run's total steps. Every embedding of one schedule has the same
    length ``L`` (a multiple of 77). Treat the tensors as read-only: :meth:`at` hands them out
    without copying.
    """

    end_steps: tuple[int, ...]
    texts: tuple[str, ...]
    embeddings: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if not self.end_steps or not len(self.end_steps) == len(self.texts) == len(self.embeddings):
            raise ValueError("a schedule needs one text and one embedding per end step")
        if list(self.end_steps) != sorted(set(self.end_steps)):
            raise ValueError(f"schedule end steps must ascend: {self.end_steps}")

    def index_at(self, step: int) -> int:
        """Which entry is in force at model call ``step`` (0-based).

        A1111 (``reconstruct_cond_batch``) takes the first entry whose end step is at least
        ``step``, and entry 0 for a call past the last end step.
        """
        index = bisect_left(self.end_steps, step)
        return index if index < len(self.end_steps) else 0

    def at(self, step: int) -> torch.Tensor:
        """The ``[1, L, hidden]`` embedding in force at model call ``step`` (0-based).

        ``step`` counts calls of the guided denoiser as A1111's ``CFGDenoiser`` does: it starts
        at 0 for every sampling run (each Clarity pass) and goes up by one per call, so a
        second-order sampler advances it twice per step and an img2img run starts at 0 even
        though its sigmas start part-way down.
        """
        return self.embeddings[self.index_at(step)]

    def text_at(self, step: int) -> str:
        """The scheduled text in force at model call ``step`` (for logs and tests)."""
        return self.texts[self.index_at(step)]

    @property
    def switch_steps(self) -> tuple[int, ...]:
        """The model calls at which :meth:`at` changes to another text (A1111's quirk of going
        back to the first entry after the last end step included)."""
        ends, texts = self.end_steps, self.texts
        steps = [ends[i] + 1 for i in range(len(ends) - 1) if texts[i] != texts[i + 1]]
        if texts[-1] != texts[0]:
            steps.append(ends[-1] + 1)
        return tuple(steps)

    @property
    def tokens(self) -> int:
        """``L``, the token length of every embedding in the schedule."""
        return int(self.embeddings[0].shape[1])


@dataclass(frozen=True, eq=False)
class Conditioning:
    """Everything the guided denoiser needs from the prompts for one run.

    ``conds`` has one ``(schedule, weight)`` per ``AND`` part of the prompt, in order (a prompt
    without ``AND`` has one part of weight 1); ``uncond`` is the negative prompt's schedule
    (never split at ``AND``). A1111 guides with every part:
    ``denoised = uncond_out + Σ weight_i · cfg_scale · (cond_out_i − uncond_out)``.

    The parts may differ in token length, and so may the prompt and the negative prompt (their
    chunk counts differ). :meth:`cond_batch` pads the parts to one length as A1111's
    ``stack_conds`` does (repeating each part's last vector); cond and uncond are left as they
    are: with A1111's default (no "pad prompt/negative prompt to be same length") the model is
    run on them separately when their lengths differ, and with it the shorter is extended with
    empty-prompt chunks (``PromptEncoder.encode("")``).
    """

    conds: tuple[tuple[CondSchedule, float], ...]
    uncond: CondSchedule

    @property
    def weights(self) -> tuple[float, ...]:
        """The ``AND`` weights, one per part."""
        return tuple(weight for _, weight in self.conds)

    def cond_batch(self, step: int) -> torch.Tensor:
        """``[parts, L, hidden]``: every part's embedding at model call ``step``, padded to the
        longest by repeating its last vector (A1111's ``reconstruct_multicond_batch``)."""
        tensors = [schedule.at(step)[0] for schedule, _ in self.conds]
        longest = max(t.shape[0] for t in tensors)
        padded = [
            t if t.shape[0] == longest else torch.cat([t, t[-1:].expand(longest - t.shape[0], -1)])
            for t in tensors
        ]
        return torch.stack(padded)

    def uncond_at(self, step: int) -> torch.Tensor:
        """The ``[1, L, hidden]`` negative-prompt embedding at model call ``step``."""
        return self.uncond.at(step)

    @property
    def switch_steps(self) -> tuple[int, ...]:
        """Every model call at which some part or the negative prompt changes."""
        schedules = [schedule for schedule, _ in self.conds] + [self.uncond]
        return tuple(sorted({step for s in schedules for step in s.switch_steps}))


# --- textual-inversion files ----------------------------------------------------------------


def load_embedding(path: Path, hidden_size: int) -> torch.Tensor:
    """The ``[n, hidden_size]`` float32 vectors of a textual-inversion file, on the CPU.

    Reads A1111 ``.pt`` (``string_to_param``), A1111 ``.safetensors`` (``emb_params``) and the
    diffusers format (``{token: tensor}``). Pickles are opened with ``weights_only=True``, so a
    file can never run code.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: the embedding file does not exist")
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise ModelError(
            f"{path}: unsupported embedding file type (use {', '.join(EMBEDDING_SUFFIXES)}; "
            "embeddings stored inside images are not supported)"
        )
    data = _read_safetensors(path) if suffix == ".safetensors" else _read_pickle(path)
    vectors = _vectors_of(data, path)
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2 or not vectors.is_floating_point() or vectors.shape[0] == 0:
        raise ModelError(
            f"{path}: not a textual-inversion embedding (tensor shape {list(vectors.shape)})"
        )
    if vectors.shape[1] != hidden_size:
        raise ModelError(
            f"{path}: the embedding's vectors have size {vectors.shape[1]}, but this text "
            f"encoder needs size {hidden_size}; it was made for another model family "
            "(SD 1.5 uses 768, SD 2 uses 1024); use an SD 1.5 embedding"
        )
    return vectors.detach().to("cpu", torch.float32).contiguous()


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from exc


def _read_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise ModelError(
                f"{path}: the embedding file contains Python objects beyond plain tensors and "
                "is refused because loading it could run code; convert it to .safetensors "
                "with a tool you trust"
            ) from exc
        raise ModelError(f"{path}: not a valid PyTorch embedding file (corrupt?)") from exc
    except Exception as exc:
        raise ModelError(f"{path}: not a readable PyTorch embedding file ({exc})") from exc


def _vectors_of(data: object, path: Path) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    if not isinstance(data, Mapping):
        raise ModelError(f"{path}: not a textual-inversion embedding")
    if "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise ModelError(f"{path}: an A1111 embedding must hold exactly one token")
        data = params
    elif "emb_params" in data:  # A1111 .safetensors
        data = {"emb_params": data["emb_params"]}
    elif "clip_l" in data or "clip_g" in data:
        raise ModelError(f"{path}: this is an SDXL embedding; use an SD 1.5 embedding")
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(data) != 1 or len(tensors) != 1:
        raise ModelError(
            f"{path}: not a textual-inversion embedding (expected one tensor, found keys "
            f"{sorted(map(str, data))[:5]})"
        )
    return tensors[0]


# --- the encoder ----------------------------------------------------------------------------


class PromptEncoder:
    """A1111-faithful prompt conditioning for one tokenizer + CLIP text encoder pair.

    ``embeddings`` maps textual-inversion names (as written in prompts; matched
    case-insensitively) to files; a file is read only when its name first appears in a prompt.
    ``clip_skip`` 1 uses the last layer (Clarity); n > 1 uses the n-th layer from the end followed
    by the final layer norm, as A1111 does.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: CLIPTextModel,
        embeddings: Mapping[str, Path] | None = None,
        *,
        clip_skip: int = 1,
        comma_backtrack: int = 20,
    ) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        config = text_encoder.config
        self.hidden_size = int(config.hidden_size)
        self.chunk_length = int(config.max_position_embeddings) - 2
        layers = int(config.num_hidden_layers)
        if not 1 <= clip_skip <= layers:
            raise ParamsError(FieldError("clip_skip", clip_skip, f"an integer from 1 to {layers}"))
        self.clip_skip = clip_skip
        self.comma_backtrack = comma_backtrack
        self.bos_id = _special_id(tokenizer, "bos")
        self.eos_id = _special_id(tokenizer, "eos")
        self.comma_id = tokenizer.get_vocab().get(",</w>")
        self._files = {name: Path(path) for name, path in dict(embeddings or {}).items()}
        self._by_first_id = self._index_embedding_names()
        self._vectors: dict[str, torch.Tensor] = {}
        self._used: list[str] = []
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cache_state: tuple | None = None
        self._lock = threading.RLock()

    @property
    def used_embeddings(self) -> list[str]:
        """Names (keys of ``embeddings``) of the embeddings prompts have used so far."""
        return list(self._used)

    def clear_cache(self) -> None:
        """Forget cached encodings (they are also dropped when the text encoder changes)."""
        with self._lock:
            self._cache.clear()

    # -- public encoding API --

    def encode_conditioning(self, prompt: str, negative: str, total_steps: int) -> Conditioning:
        """A1111's conditioning for a run of ``total_steps`` model calls (A1111's
        ``total_steps``: the sampling steps, doubled for second-order samplers).

        The prompt loses its extra-network tags and is split at ``AND``; each part and the
        negative prompt (tags and ``AND`` kept as words there, as in A1111 v1.7) are scheduled
        for editing and alternation, and each schedule is encoded as one batch. Raises
        :class:`~pipeline.errors.ParamsError` naming the field for syntax A1111 cannot run.
        """
        stripped, _loras, _warnings = take_extra_networks(prompt, field="prompt")
        with self._lock:
            self._check_cache_state()
            schedules: dict[str, CondSchedule] = {}
            conds: list[tuple[CondSchedule, float]] = []
            for text, weight in split_and(stripped):
                if text not in schedules:
                    schedules[text] = self._schedule(text, total_steps, "prompt")
                conds.append((schedules[text], weight))
            uncond = self._schedule(negative, total_steps, "negative_prompt")
        return Conditioning(conds=tuple(conds), uncond=uncond)

    def encode(self, prompt: str, *, field: str = "prompt") -> torch.Tensor:
        """``[1, 77·k, hidden]`` conditioning for one text read literally, in the text
        encoder's dtype: emphasis, BREAK and embeddings apply; editing and ``AND`` do not (use
        :meth:`encode_conditioning` for a whole run). In ``field`` ``"prompt"`` the
        extra-network tags are cut out first; in ``"negative_prompt"`` they are words.

        ``field`` names the parameter in a :class:`~pipeline.errors.ParamsError` for bad syntax.
        """
        with self._lock:
            self._check_cache_state()
            return self._encode_batch([self._literal(prompt, field)], field)[0]

    def encode_pair(
        self, prompt: str, negative: str, *, pad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` for a prompt pair read literally (see :meth:`encode`); with
        ``pad`` the shorter is extended with empty-prompt chunks.

        A1111 pads this way when ``pad_cond_uncond`` is on, so cond and uncond can share one UNet
        batch; with ``pad=False`` lengths may differ (A1111's default then runs them apart).
        """
        cond = self.encode(prompt)
        uncond = self.encode(negative, field="negative_prompt")
        if pad and cond.shape[1] != uncond.shape[1]:
            empty = self.encode("")
            missing = abs(cond.shape[1] - uncond.shape[1]) // empty.shape[1]
            filler = empty.repeat(1, missing, 1)
            if cond.shape[1] < uncond.shape[1]:
                cond = torch.cat([cond, filler], dim=1)
            else:
                uncond = torch.cat([uncond, filler], dim=1)
        return cond, uncond

    def chunks(self, prompt: str, *, field: str = "prompt") -> list[PromptChunk]:
        """How one text read literally (see :meth:`encode`) is laid out into 77-token windows
        (ids, weights, embedding slots)."""
        return self._layout(self._literal(prompt, field), field)

    # -- internals --

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids without BOS/EOS; long texts are fine (chunking happens later, no warning)."""
        out = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        return out["input_ids"]

    def _index_embedding_names(self) -> dict[int, list[tuple[tuple[int, ...], str]]]:
        index: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        if not self._files:
            return index
        names = list(self._files)
        ids = self._tokenize(names)
        for name, tokens in zip(names, ids, strict=True):
            if tokens:
                index.setdefault(tokens[0], []).append((tuple(tokens), name))
        for entries in index.values():
            entries.sort(key=lambda entry: -len(entry[0]))  # longest name wins, as in A1111
        return index

    def _match_embedding(self, tokens: Sequence[int], pos: int) -> tuple[str, int] | None:
        """``(name, tokens consumed)`` of the embedding whose name starts at ``pos``."""
        for name_ids, name in self._by_first_id.get(tokens[pos], ()):
            if tuple(tokens[pos : pos + len(name_ids)]) == name_ids:
                return name, len(name_ids)
        return None

    def _embedding(self, name: str) -> torch.Tensor:
        vectors = self._vectors.get(name)
        if vectors is None:
            vectors = load_embedding(self._files[name], self.hidden_size)
            if vectors.shape[0] > self.chunk_length:
                raise ModelError(
                    f"{self._files[name]}: the embedding has {vectors.shape[0]} vectors; at most "
                    f"{self.chunk_length} fit in a prompt"
                )
            self._vectors[name] = vectors
        if name not in self._used:
            self._used.append(name)
        return vectors

    @staticmethod
    def _literal(prompt: str, field: str) -> str:
        if field == "negative_prompt":
            return prompt
        return take_extra_networks(prompt, field=field)[0]

    def _layout(self, text: str, field: str) -> list[PromptChunk]:
        fragments = parse_attention(text, field=field)
        ids = self._tokenize([fragment for fragment, _ in fragments])
        builder = _ChunkBuilder(self)
        for fragment, tokens in zip(fragments, ids, strict=True):
            if is_break(fragment):
                builder.close()
            else:
                builder.add_fragment(list(tokens), fragment[1])
        return builder.finish()

    def _empty_chunk(self) -> PromptChunk:
        size = self.chunk_length + 2
        return PromptChunk(ids=[self.bos_id] + [self.eos_id] * (size - 1), weights=[1.0] * size)

    def _schedule(self, text: str, total_steps: int, field: str) -> CondSchedule:
        entries = prompt_schedule(text, total_steps, field=field)
        texts = [scheduled for _, scheduled in entries]
        return CondSchedule(
            end_steps=tuple(end for end, _ in entries),
            texts=tuple(texts),
            embeddings=tuple(self._encode_batch(texts, field)),
        )

    def _encode_batch(self, texts: list[str], field: str) -> list[torch.Tensor]:
        """``[1, 77·k, hidden]`` per text, encoded together as A1111 encodes a schedule.

        Chunk ``i`` of every text forms one batch (texts with fewer chunks contribute an empty
        chunk), and the emphasis mean is restored over that whole batch, duplicates included.
        """
        layouts: dict[str, list[PromptChunk]] = {}
        for text in texts:
            if text not in layouts:
                layouts[text] = self._layout(text, field)
        count = max(len(layouts[text]) for text in texts)
        empty = self._empty_chunk()
        pieces: list[list[torch.Tensor]] = [[] for _ in texts]
        for index in range(count):
            rows = [layouts[t][index] if index < len(layouts[t]) else empty for t in texts]
            z = self._weighted(rows)
            for row, piece in enumerate(pieces):
                piece.append(z[row])
        dtype = self._reference_weight().dtype
        return [torch.cat(piece).unsqueeze(0).to(dtype) for piece in pieces]

    def _weighted(self, rows: list[PromptChunk]) -> torch.Tensor:
        """``[rows, 77, hidden]`` float32: emphasis applied, the batch's mean restored."""
        z = self._raw(rows)
        weights = torch.tensor([row.weights for row in rows], device=z.device).unsqueeze(-1)
        before = z.mean()
        z = z * weights
        after = z.mean()
        return z * torch.where(after == 0, torch.ones_like(after), before / after)

    def _raw(self, rows: list[PromptChunk]) -> torch.Tensor:
        """``[rows, 77, hidden]`` float32 text-encoder output; each distinct chunk runs once."""
        keys = [(tuple(row.ids), tuple(sorted(row.vectors.items()))) for row in rows]
        missing: dict[tuple, PromptChunk] = {}
        for key, row in zip(keys, rows, strict=True):
            if key not in self._cache and key not in missing:
                missing[key] = row
        if missing:
            z = self._run_text_encoder(list(missing.values()))
            for key, value in zip(missing, z, strict=True):
                self._cache[key] = value
        out = torch.stack([self._cache[key] for key in keys])
        for key in keys:
            self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return out

    def _run_text_encoder(self, chunks: list[PromptChunk]) -> torch.Tensor:
        weight = self._reference_weight()
        ids = torch.tensor([c.ids for c in chunks], dtype=torch.long, device=weight.device)
        slots = [
            (row, pos, self._embedding(name)[index])
            for row, chunk in enumerate(chunks)
            for pos, (name, index) in chunk.vectors.items()
        ]
        with torch.no_grad(), self._injected(slots):
            out = self.text_encoder(input_ids=ids, output_hidden_states=self.clip_skip > 1)
            if self.clip_skip == 1:
                z = out.last_hidden_state
            else:
                z = self._final_layer_norm()(out.hidden_states[-self.clip_skip])
        return z.float()

    def _check_cache_state(self) -> None:
        state = self._state_key()
        if state != self._cache_state:
            self._cache.clear()
            self._cache_state = state

    @contextmanager
    def _injected(self, slots: list[tuple[int, int, torch.Tensor]]) -> Iterator[None]:
        """Swap token embeddings for embedding vectors during one forward pass only."""
        if not slots:
            yield
            return
        rows = torch.tensor([s[0] for s in slots])
        cols = torch.tensor([s[1] for s in slots])
        values = torch.stack([s[2] for s in slots])

        def replace(_module: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            dev = output.device
            output[rows.to(dev), cols.to(dev)] = values.to(dev, output.dtype)
            return output

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            yield
        finally:
            handle.remove()

    def _final_layer_norm(self) -> nn.Module:
        model = self.text_encoder
        norm = getattr(model, "final_layer_norm", None)
        if norm is None:
            norm = model.get_submodule("text_model.final_layer_norm")  # transformers 4.x nesting
        return norm

    def _reference_weight(self) -> torch.Tensor:
        weight = self.text_encoder.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)  # an nn.Embedding's (peft's wrapper keeps it)
        return weight

    def _state_key(self) -> tuple:
        """What the encodings depend on besides the prompt: device, dtype, adapters, weights.

        Adapter settings are read from peft's LoRA layers; fusing rewrites base weights in
        place, so a few elements of every linear weight are sampled too (one small transfer).
        """
        reference = self._reference_weight()
        adapters = []
        samples = []
        for name, module in self.text_encoder.named_modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict):
                adapters.append(
                    (
                        name,
                        tuple(sorted(scaling.items())),
                        tuple(getattr(module, "active_adapters", ()) or ()),
                        tuple(getattr(module, "merged_adapters", ()) or ()),
                        bool(getattr(module, "disable_adapters", False)),
                    )
                )
            elif isinstance(module, nn.Linear) and module.weight.device.type != "meta":
                samples.append(module.weight.detach().reshape(-1)[:16].float().sum())
        probe = tuple(torch.stack(samples).tolist()) if samples else ()
        return (str(reference.device), str(reference.dtype), tuple(adapters), probe)


class _ChunkBuilder:
    """Fills 75-token chunks the A1111 way (comma backtracking, embeddings kept whole)."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self.enc = encoder
        self.size = encoder.chunk_length
        self.done: list[PromptChunk] = []
        self.items: list[int | tuple[str, int]] = []
        self.weights: list[float] = []
        self.last_comma = -1

    def add_fragment(self, tokens: list[int], weight: float) -> None:
        pos = 0
        while pos < len(tokens):
            token = tokens[pos]
            if token == self.enc.comma_id:
                self.last_comma = len(self.items)
            elif self._should_backtrack():
                self._move_tail_after(self.last_comma + 1)
            if len(self.items) == self.size:
                self.close()
            match = self.enc._match_embedding(tokens, pos)
            if match is None:
                self.items.append(token)
                self.weights.append(weight)
                pos += 1
                continue
            name, consumed = match
            count = self.enc._embedding(name).shape[0]
            if len(self.items) + count > self.size:
                self.close()
            self.items.extend((name, row) for row in range(count))
            self.weights.extend([weight] * count)
            pos += consumed

    def _should_backtrack(self) -> bool:
        backtrack = self.enc.comma_backtrack
        full = len(self.items) == self.size
        near = self.last_comma != -1 and len(self.items) - self.last_comma <= backtrack
        return backtrack > 0 and full and near

    def _move_tail_after(self, cut: int) -> None:
        tail_items, tail_weights = self.items[cut:], self.weights[cut:]
        del self.items[cut:], self.weights[cut:]
        self.close()
        self.items, self.weights = tail_items, tail_weights

    def close(self) -> None:
        """End the current chunk: pad with EOS to 75, wrap in BOS … EOS."""
        pad = self.size - len(self.items)
        items = [self.enc.bos_id, *self.items, *[self.enc.eos_id] * pad, self.enc.eos_id]
        weights = [1.0, *self.weights, *[1.0] * pad, 1.0]
        chunk = PromptChunk(ids=[], weights=weights)
        for pos, item in enumerate(items):
            if isinstance(item, tuple):
                chunk.vectors[pos] = item
                chunk.ids.append(_PLACEHOLDER_ID)
            else:
                chunk.ids.append(item)
        self.done.append(chunk)
        self.items, self.weights, self.last_comma = [], [], -1

    def finish(self) -> list[PromptChunk]:
        if self.items or not self.done:
            self.close()
        return self.done


def _special_id(tokenizer: object, kind: str) -> int:
    value = getattr(tokenizer, f"{kind}_token_id", None)
    if value is None:
        raise ModelError(f"the tokenizer has no {kind.upper()} token; it is not a CLIP tokenizer")
    return int(value)
