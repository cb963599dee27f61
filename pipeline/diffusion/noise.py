"""A1111 v1.7's noise, drawn as A1111 draws it: the image RNG and the Brownian tree.

Two noise sources, named as the engine's setting names them (``NOISE_SOURCES``):

* ``"gpu"`` (the default; what Clarity's own runs on CUDA used): CUDA's torch generator. On a CUDA
  device the engine draws there. Anywhere else :func:`philox_randn` computes what
  ``torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda")``
  returns, with the project's own Philox4x32-10 and cuRAND's Box–Muller transform.
* ``"cpu"``: torch's CPU generator (``torch.Generator("cpu").manual_seed(seed)``), drawn on the
  CPU and then moved to the device; the same on every machine.

**How CUDA's ``randn`` maps elements to random numbers** (PyTorch
``aten/src/ATen/native/cuda/DistributionTemplates.h``: ``calc_execution_policy``,
``distribution_elementwise_grid_stride_kernel``, ``normal_and_transform``; cuRAND
``curand_philox4x32_x.h``, ``curand_kernel.h``, ``curand_normal.h``): blocks of 256 threads,
``grid = min(ceil(numel / 256), SMs * (maxThreadsPerSM / 256))`` blocks,
``stride = 256 * grid`` threads. Thread ``t`` runs ``curand_init(seed, subsequence=t, offset)``:
Philox key = (seed low 32 bits, seed high 32 bits), counter = (offset/4 as a 64-bit number in
words 0-1, ``t`` in words 2-3). Each loop iteration ``k`` calls ``curand_normal4`` once (counter
word 0 advanced by ``k``), which turns the four Philox words ``(a, b, c, d)`` into
``box_muller(a, b)`` and ``box_muller(c, d)``; output ``ii`` of iteration ``k`` goes to element
``t + stride * (4k + ii)``. float64 tensors use ``curand_normal2_double`` instead (two outputs
per call from all four words). Each draw advances the generator's offset by
``4 * ceil(numel / (stride * unroll))`` (unroll 4 for float, 2 for double; nothing for an empty
tensor), which is how successive draws on one generator continue the stream.

**When this is bit-exact, and what the grid means for SD latents.** The Philox words are exact
on every machine. Which element gets which word depends on the GPU once ``numel`` exceeds its
thread capacity ``SMs * maxThreadsPerSM``; below that every element ``i`` takes the first output
of subsequence ``i`` on every GPU, and that device-independent rule is what this module uses when
no CUDA device is present and no ``sm_count``/``threads_per_sm`` is given (the rule A1111's "NV"
source uses). An SD latent of an ``H x W`` image has ``H * W / 16`` elements, so the rule agrees
with a GPU for images up to ``16 * SMs * threadsPerSM`` pixels: T4 (40 x 1024) 0.66 MP, RTX 3060
(28 x 1536) 0.69 MP, L4 (58 x 1536) 1.4 MP, A10G (80 x 1536) 2.0 MP, RTX 3090 (82 x 1536)
2.0 MP, RTX 4090 (128 x 1536) 3.1 MP, L40S (142 x 1536) 3.5 MP, A100 (108 x 2048) 3.5 MP,
H100 PCIe (114 x 2048) 3.7 MP, H100 SXM (132 x 2048) 4.3 MP. A 2048 x 2048 output (a
256 x 256 latent, 262,144 elements) already exceeds an A100; pass that GPU's ``sm_count`` and
``threads_per_sm`` to reproduce it. Beyond one wave the rule is wrong for the GPU, not noisy.

**The float arithmetic.** ``u = (float(a) + 0.5) * 2**-32`` and the angle
``v = fma(float(b), 2**-32 * float(2*pi), 2**-33 * float(2*pi))`` are reproduced exactly (nvcc
contracts the multiply-add into one rounding); ``s = sqrtf(-2 logf(u))`` with a correctly
rounded log (the GPU's ``logf`` is within 1 ulp, so ``s`` may differ by an ulp now and then). The
GPU takes sine and cosine with ``__sincosf``, the SFU's hardware approximation (absolute error
about 2**-21 on ``[-pi, pi]``, somewhat more on ``(pi, 2*pi)``), whose exact results NVIDIA does not
specify. Here they are computed accurately and rounded to float32, so a float32 value typically
differs from the GPU's by a few ulp and at most by a few ``1e-6`` (the SFU error times
``s <= 6.8``); the Philox stream, the element mapping and the generator offsets are exact.
``tests/bench/philox_check.py`` measures the real figures on a GPU.

**The Brownian tree** (:func:`brownian_noise`) is k-diffusion's ``BrownianTreeNoiseSampler(x,
sigma_min, sigma_max, seed=[seed])`` as A1111 v1.7 builds it: torchsde's ``BrownianTree``
(tol 1e-6), one per seed, batched over the batch dimension; it draws its noise on ``x``'s device
with a fresh generator per draw. For ``"gpu"`` on a CUDA device the tree is built there; on any
other device it is built on the CPU and torchsde's internal ``_randn`` is routed through
:func:`philox_randn` while this module's tree draws (one guarded hook, checked against torchsde
0.2.6, A1111 v1.7's pin, and 0.2.5, its predecessor's, which differs only in an LRU cache;
another version is refused with a clear error).
torchsde's remaining arithmetic is IEEE float32 on both devices, so the tree inherits the
accuracy above. For ``"cpu"`` the tree is built on the CPU with torch's own generator. Note
that A1111's "CPU" randn option does not reach the tree (A1111 always builds it on ``x``'s
device); a run that used it on a CUDA GPU is initial noise ``"cpu"`` with a ``"gpu"`` tree.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = [
    "NOISE_SOURCES",
    "BrownianTreeNoise",
    "ImageRNG",
    "brownian_noise",
    "cuda_grid",
    "philox4x32_10",
    "philox_offset_increment",
    "philox_randn",
    "philox_randn_at",
]

NOISE_SOURCES: tuple[str, ...] = ("gpu", "cpu")

Grid = tuple[int, int] | None  # (SM count, max threads per SM); None: one wave, any size

_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_MASK32 = 0xFFFFFFFF
_BLOCK = 256  # DistributionTemplates.h block_size_bound
_OFFSET_PER_CALL = 4  # max_generator_offsets_per_curand_call
_TWO_PI_F32_MANTISSA = 13176795  # float32(2*pi) == 13176795 * 2**-21 (cuRAND's 6.2831855f)
_TORCHSDE_CHECKED = ("0.2.5", "0.2.6")
# Threads per SM by compute capability major.minor, for torch builds whose device properties
# lack max_threads_per_multi_processor (CUDA C Programming Guide, compute capabilities table).
_THREADS_PER_SM = {(7, 5): 1024, (8, 6): 1536, (8, 7): 1536, (8, 9): 1536, (12, 0): 1536}


# --- Philox4x32-10 and cuRAND's transforms ---------------------------------------------------


def philox4x32_10(
    counter: Sequence[np.ndarray | int], key: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Philox4x32-10 (Salmon et al. 2011, cuRAND's ``curand_Philox4x32_10``), vectorised.

    ``counter`` is four uint32 words (arrays that broadcast, or ints), ``key`` two uint32 ints;
    returns the four output words as uint32 arrays.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in counter)
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    m0, m1 = np.uint64(_M0), np.uint64(_M1)
    for rnd in range(10):
        if rnd:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        p0 = c0.astype(np.uint64) * m0
        p1 = c2.astype(np.uint64) * m1
        c0, c1, c2, c3 = (
            (p1 >> np.uint64(32)).astype(np.uint32) ^ c1 ^ np.uint32(k0),
            p1.astype(np.uint32),
            (p0 >> np.uint64(32)).astype(np.uint32) ^ c3 ^ np.uint32(k1),
            p0.astype(np.uint32),
        )
    return c0, c1, c2, c3


def _round_to_float32_bits(p: np.ndarray) -> np.ndarray:
    """Positive uint64 integers rounded to 24 significant bits, ties to even (still uint64)."""
    length = np.frexp(p.astype(np.float64))[1].astype(np.int64)  # bit length, or one more
    length -= ((p >> np.maximum(length - 1, 0).astype(np.uint64)) == 0).astype(np.int64)
    shift = np.maximum(length - 24, 0).astype(np.uint64)
    q = p >> shift
    rem = p - (q << shift)
    half = (np.uint64(1) << shift) >> np.uint64(1)
    up = (rem > half) | ((rem == half) & (half > 0) & ((q & np.uint64(1)) == 1))
    return (q + up.astype(np.uint64)) << shift


def _box_muller_f32(
    x: np.ndarray, y: np.ndarray, cosine: np.ndarray, sincos: str = "accurate"
) -> np.ndarray:
    """cuRAND's ``_curand_box_muller`` in float32: ``s*sin(v)``, or ``s*cos(v)`` where ``cosine``.

    ``sincos="accurate"`` rounds the true sine and cosine of ``v``; ``"sfu"`` first reduces the
    angle the way the SFU path does (``v * float(1/(2*pi))`` rounded toward zero, then
    ``2*pi`` times that), a model of ``__sincosf`` for the GPU check to measure against.
    """
    # u = fmaf((float)x, 2^-32, 2^-33): the float conversion rounds, the rest is exact.
    u = ((x.astype(np.float64).astype(np.float32).astype(np.float64) + 0.5) * 2.0**-32).astype(
        np.float32
    )
    # v = fmaf((float)y, C, C/2) with C = float(2*pi) * 2^-32: exactly m * (2Y + 1) * 2^-54.
    big_y = y.astype(np.float64).astype(np.float32).astype(np.uint64)
    product = np.uint64(_TWO_PI_F32_MANTISSA) * (np.uint64(2) * big_y + np.uint64(1))
    v = (_round_to_float32_bits(product).astype(np.float64) * 2.0**-54).astype(np.float32)
    log_u = np.log(u.astype(np.float64)).astype(np.float32)
    s = np.sqrt(np.float32(-2.0) * log_u)
    angle = v.astype(np.float64)
    if sincos == "sfu":
        turns = angle * float(np.float32(1 / (2 * math.pi)))  # exact: 24 x 24 bits
        toward_zero = turns.astype(np.float32)
        toward_zero = np.where(
            toward_zero.astype(np.float64) > turns,
            np.nextafter(toward_zero, np.float32(0)),
            toward_zero,
        )
        angle = 2 * math.pi * toward_zero.astype(np.float64)
    elif sincos != "accurate":
        raise ValueError(f"unknown sine/cosine model {sincos!r}")
    trig = np.empty(angle.shape, dtype=np.float32)
    if cosine.all():
        trig[...] = np.cos(angle)
    elif not cosine.any():
        trig[...] = np.sin(angle)
    else:
        trig[cosine] = np.cos(angle[cosine])
        trig[~cosine] = np.sin(angle[~cosine])
    return trig * s


def _sincospi(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sin(pi*v), cos(pi*v)`` for ``v`` in (0, 2], with exact reduction to [-1/4, 1/4]."""
    quarter = np.rint(2.0 * v)
    r = v - 0.5 * quarter  # exact (Sterbenz) for these ranges
    sr, cr = np.sin(np.pi * r), np.cos(np.pi * r)
    q = quarter.astype(np.int64) % 4
    sin = np.select([q == 0, q == 1, q == 2], [sr, cr, -sr], -cr)
    cos = np.select([q == 0, q == 1, q == 2], [cr, -sr, -cr], sr)
    return sin, cos


def _box_muller_f64(words: tuple[np.ndarray, ...], cosine: np.ndarray) -> np.ndarray:
    """cuRAND's ``_curand_box_muller_double`` from one ``curand4`` (53-bit uniforms, sincospi)."""
    a, b, c, d = (w.astype(np.uint64) for w in words)
    zx = a ^ (b << np.uint64(21))
    zy = c ^ (d << np.uint64(21))
    u = zx.astype(np.float64) * 2.0**-53 + 2.0**-54
    v = zy.astype(np.float64) * 2.0**-52 + 2.0**-53
    s = np.sqrt(-2.0 * np.log(u))
    sin, cos = _sincospi(v)
    return np.where(cosine, cos, sin) * s


# --- the element layout ----------------------------------------------------------------------


def cuda_grid(device: Any = None) -> tuple[int, int]:
    """``(multiProcessorCount, maxThreadsPerMultiProcessor)`` of a CUDA device (current if None)."""
    props = torch.cuda.get_device_properties(
        torch.cuda.current_device() if device is None else device
    )
    threads = getattr(props, "max_threads_per_multi_processor", None)
    if threads is None:
        threads = _THREADS_PER_SM.get((props.major, props.minor), 2048)
    return int(props.multi_processor_count), int(threads)


def _resolve_grid(sm_count: int | None, threads_per_sm: int | None) -> Grid:
    if sm_count is None and threads_per_sm is None:
        return cuda_grid() if torch.cuda.is_available() else None
    if sm_count is None or threads_per_sm is None:
        raise ValueError("give both sm_count and threads_per_sm, or neither")
    for name, value in (("sm_count", sm_count), ("threads_per_sm", threads_per_sm)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive whole number, not {value!r}")
    if threads_per_sm < _BLOCK:
        raise ValueError(f"threads_per_sm must be at least {_BLOCK}, not {threads_per_sm}")
    return sm_count, threads_per_sm


def _stride(numel: int, grid: Grid) -> int:
    blocks = -(-numel // _BLOCK)
    if grid is not None:
        blocks = min(blocks, grid[0] * (grid[1] // _BLOCK))
    return max(blocks, 1) * _BLOCK


def _unroll(dtype: torch.dtype) -> int:
    if dtype == torch.float64:
        return 2
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return 4
    raise ValueError(f"CUDA's randn draws floating-point tensors, not {dtype}")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"a seed is a whole number from 0 to 2**64 - 1, not {seed!r}")
    return seed


def philox_offset_increment(
    numel: int,
    *,
    dtype: torch.dtype = torch.float32,
    sm_count: int | None = None,
    threads_per_sm: int | None = None,
) -> int:
    """How far one ``randn`` of ``numel`` elements advances a CUDA generator's Philox offset."""
    return _offset_increment(numel, dtype, _resolve_grid(sm_count, threads_per_sm))


def _offset_increment(numel: int, dtype: torch.dtype, grid: Grid) -> int:
    if numel <= 0:
        return 0  # the kernel returns before it takes an offset
    unroll = _unroll(dtype)
    return ((numel - 1) // (_stride(numel, grid) * unroll) + 1) * _OFFSET_PER_CALL


def philox_randn_at(
    seed: int,
    numel: int,
    indices: np.ndarray | Sequence[int],
    *,
    offset: int = 0,
    dtype: torch.dtype = torch.float32,
    sm_count: int | None = None,
    threads_per_sm: int | None = None,
) -> np.ndarray:
    """Elements ``indices`` (flat) of :func:`philox_randn` over ``numel`` elements, as numpy
    (float32, or float64 for ``dtype=torch.float64``), without computing the others."""
    return _randn_at(
        _check_seed(seed), numel, indices, offset, dtype, _resolve_grid(sm_count, threads_per_sm)
    )


def _randn_at(
    seed: int,
    numel: int,
    indices: np.ndarray | Sequence[int],
    offset: int,
    dtype: torch.dtype,
    grid: Grid,
    sincos: str = "accurate",
) -> np.ndarray:
    if offset < 0 or offset % _OFFSET_PER_CALL:
        raise ValueError(f"a CUDA generator's offset is a multiple of 4, not {offset}")
    if numel >= 2**31:
        raise ValueError("tensors of 2**31 elements or more are split by CUDA; not modelled")
    unroll = _unroll(dtype)
    li = np.asarray(indices, dtype=np.int64)
    if li.size and (li.min() < 0 or li.max() >= numel):
        raise ValueError(f"indices must lie in [0, {numel})")
    stride = _stride(numel, grid)
    wave, thread = np.divmod(li, stride)
    iteration, output = np.divmod(wave, unroll)
    counter = iteration.astype(np.uint64) + np.uint64(offset // _OFFSET_PER_CALL)
    thread = thread.astype(np.uint64)
    words = philox4x32_10(
        (
            (counter & np.uint64(_MASK32)).astype(np.uint32),
            (counter >> np.uint64(32)).astype(np.uint32),
            (thread & np.uint64(_MASK32)).astype(np.uint32),
            (thread >> np.uint64(32)).astype(np.uint32),
        ),
        (seed & _MASK32, seed >> 32),
    )
    if unroll == 2:
        return _box_muller_f64(words, output == 1)
    first = output < 2
    return _box_muller_f32(
        np.where(first, words[0], words[2]),
        np.where(first, words[1], words[3]),
        output % 2 == 1,
        sincos,
    )


def philox_randn(
    seed: int,
    shape: Sequence[int],
    *,
    offset: int = 0,
    dtype: torch.dtype = torch.float32,
    device: Any = "cpu",
    sm_count: int | None = None,
    threads_per_sm: int | None = None,
) -> torch.Tensor:
    """What ``torch.randn(shape, generator=torch.Generator("cuda").manual_seed(seed),
    device="cuda", dtype=dtype)`` returns, computed here and put on ``device``.

    ``offset`` is the generator's Philox offset before the draw: 0 for the first draw after
    seeding, then advanced by :func:`philox_offset_increment` per draw. ``sm_count`` and
    ``threads_per_sm`` name the GPU whose element layout to reproduce; by default the current
    CUDA device's, or the device-independent one-wave rule when there is none (see the module
    docstring for when that matters).
    """
    return _philox_randn(
        _check_seed(seed), shape, offset, dtype, device, _resolve_grid(sm_count, threads_per_sm)
    )


def _philox_randn(
    seed: int, shape: Sequence[int], offset: int, dtype: torch.dtype, device: Any, grid: Grid
) -> torch.Tensor:
    size = tuple(int(n) for n in shape)
    if any(n < 0 for n in size):
        raise ValueError(f"a shape has no negative sizes: {size}")
    numel = math.prod(size)
    values = _randn_at(seed, numel, np.arange(numel, dtype=np.int64), offset, dtype, grid)
    # float16/bfloat16 draw in float32 and round once (the kernel's static_cast).
    return torch.from_numpy(values).reshape(size).to(device=device, dtype=dtype)


# --- the image RNG ---------------------------------------------------------------------------


def _check_source(source: str) -> str:
    if source not in NOISE_SOURCES:
        raise ValueError(f"the noise source is one of {', '.join(NOISE_SOURCES)}, not {source!r}")
    return source


class ImageRNG:
    """A1111 v1.7's ``ImageRNG`` for one image: a generator seeded with the image seed.

    ``next()`` first returns the initial noise, then continues the same generator's stream (what
    A1111's ancestral and DDIM noise draws consume). ``shape`` is the latent's shape, e.g.
    ``(1, 4, h, w)``; a batch dimension must be 1 (A1111 draws each image of a batch from its own
    seed). ``eta_noise_seed_delta`` is A1111's setting of that name: when non-zero, draws after
    the first come from a generator seeded with ``seed + eta_noise_seed_delta``. Draws are
    float32 (A1111's), cast to ``dtype`` if another is asked for.
    """

    def __init__(
        self,
        seed: int,
        shape: Sequence[int],
        source: str = "gpu",
        device: Any = "cpu",
        *,
        eta_noise_seed_delta: int = 0,
        dtype: torch.dtype = torch.float32,
        sm_count: int | None = None,
        threads_per_sm: int | None = None,
    ) -> None:
        self._source = _check_source(source)
        self._shape = tuple(int(n) for n in shape)
        if any(n <= 0 for n in self._shape):
            raise ValueError(f"a latent shape has positive sizes: {self._shape}")
        if len(self._shape) == 4 and self._shape[0] != 1:
            raise ValueError(f"ImageRNG draws one image's noise; the batch is {self._shape[0]}")
        self._seed = _check_seed(seed)
        if isinstance(eta_noise_seed_delta, bool) or not isinstance(eta_noise_seed_delta, int):
            raise ValueError(
                f"eta_noise_seed_delta is a whole number, not {eta_noise_seed_delta!r}"
            )
        self._ensd = eta_noise_seed_delta
        if self._ensd:
            _check_seed(seed + eta_noise_seed_delta)
        self._device = torch.device(device)
        self._dtype = dtype
        self._native = source == "cpu" or self._device.type == "cuda"
        self._grid: Grid = None if self._native else _resolve_grid(sm_count, threads_per_sm)
        self._first = True
        self._generator: torch.Generator | None = None
        self._offset = 0
        self._reseed(self._seed)

    def _reseed(self, seed: int) -> None:
        self._current_seed = seed
        self._offset = 0
        if self._source == "cpu":
            self._generator = torch.Generator("cpu").manual_seed(seed)
        elif self._device.type == "cuda":
            self._generator = torch.Generator(self._device).manual_seed(seed)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def next(self) -> torch.Tensor:
        """The next noise tensor: the initial noise first, then the stream's continuation."""
        if self._generator is not None:
            where = "cpu" if self._source == "cpu" else self._device
            x = torch.randn(self._shape, generator=self._generator, device=where)
        else:
            x = _philox_randn(
                self._current_seed, self._shape, self._offset, torch.float32, "cpu", self._grid
            )
            self._offset += _offset_increment(math.prod(self._shape), torch.float32, self._grid)
        if self._first:
            self._first = False
            if self._ensd:
                self._reseed(self._seed + self._ensd)
        return x.to(device=self._device, dtype=self._dtype)

    def noise_sampler(self) -> Callable[[Any, Any], torch.Tensor]:
        """``noise(sigma, sigma_next)``: the sigmas are ignored, each call is ``next()``."""

        def noise(sigma: Any, sigma_next: Any) -> torch.Tensor:
            del sigma, sigma_next
            return self.next()

        return noise


# --- the Brownian tree -----------------------------------------------------------------------

_ROUTE = (
    threading.local()
)  # .grids: the layouts of the trees drawing on this thread, innermost last
_HOOK_LOCK = threading.Lock()


class _RoutedRandn:
    """torchsde's ``_randn(size, dtype, device, seed)``, drawing CUDA's numbers inside
    :func:`_drawing_cuda_noise` on this thread and torch's own everywhere else."""

    def __init__(self, original: Callable[..., Any]) -> None:
        self.original = original

    def __call__(self, size: Any, dtype: Any, device: Any, seed: Any) -> torch.Tensor:
        grids: list[Grid] = getattr(_ROUTE, "grids", [])
        if not grids:
            out: torch.Tensor = self.original(size, dtype, device, seed)
            return out
        return _philox_randn(int(seed), tuple(size), 0, dtype, device, grids[-1])


def _install_torchsde_hook() -> None:
    """Route torchsde's one noise draw (``torchsde._brownian.brownian_interval._randn``)."""
    import torchsde
    from torchsde._brownian import brownian_interval

    with _HOOK_LOCK:
        current = getattr(brownian_interval, "_randn", None)
        if isinstance(current, _RoutedRandn):
            return
        version = str(getattr(torchsde, "__version__", "unknown"))
        expected = ["size", "dtype", "device", "seed"]
        if (
            version not in _TORCHSDE_CHECKED
            or not callable(current)
            or list(inspect.signature(current).parameters) != expected
        ):
            raise RuntimeError(
                f"the GPU-noise Brownian tree off CUDA reproduces torchsde's internal noise draw, "
                f"checked against torchsde {' and '.join(_TORCHSDE_CHECKED)}; this is torchsde "
                f"{version}. Install torchsde 0.2.6, run on a CUDA device, or use the 'cpu' "
                "noise source"
            )
        brownian_interval._randn = _RoutedRandn(current)


@contextmanager
def _drawing_cuda_noise(grid: Grid) -> Iterator[None]:
    grids: list[Grid] = getattr(_ROUTE, "grids", [])
    _ROUTE.grids = [*grids, grid]
    try:
        yield
    finally:
        _ROUTE.grids = grids


class BrownianTreeNoise:
    """k-diffusion's ``BrownianTreeNoiseSampler`` with one seed per batch item, A1111's way.

    Call as ``noise(sigma, sigma_next)``: ``(W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma|``,
    standard normal like ``x_like``, on its device and dtype. Build it with
    :func:`brownian_noise`.
    """

    def __init__(
        self,
        x_like: torch.Tensor,
        sigma_min: Any,
        sigma_max: Any,
        seeds: Sequence[int],
        source: str,
        grid: Grid,
        routed: bool,
    ) -> None:
        import torchsde

        self._device, self._dtype = x_like.device, x_like.dtype
        self._tree_device = x_like.device if source == "gpu" and not routed else torch.device("cpu")
        self._grid, self._routed = grid, routed
        t0, t1 = self._time(sigma_min), self._time(sigma_max)
        t0, t1, self._sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros(tuple(x_like.shape[1:]), dtype=x_like.dtype, device=self._tree_device)
        with self._drawing():
            self._trees = [torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds]

    def _time(self, sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma).to(self._tree_device)

    @contextmanager
    def _drawing(self) -> Iterator[None]:
        if not self._routed:
            yield
            return
        with _drawing_cuda_noise(self._grid):
            yield

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        t0, t1 = self._time(sigma), self._time(sigma_next)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with self._drawing():
            w = torch.stack([_increment(tree, lo, hi) for tree in self._trees])
        w = w * (self._sign * sign)
        out = w / (t1 - t0).abs().sqrt()
        return out.to(device=self._device, dtype=self._dtype)


def _increment(tree: Any, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``W(hi) - W(lo)`` of a torchsde tree (untyped: its return type covers the U and A forms)."""
    w = tree(lo, hi)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"torchsde's BrownianTree returned {type(w).__name__}, not a tensor")
    return w


def brownian_noise(
    x_like: torch.Tensor,
    sigma_min: Any,
    sigma_max: Any,
    seed: int | Sequence[int],
    *,
    source: str = "gpu",
    sm_count: int | None = None,
    threads_per_sm: int | None = None,
) -> BrownianTreeNoise:
    """The SDE samplers' Brownian noise as A1111 v1.7 makes it, ``noise(sigma, sigma_next)``.

    ``sigma_min``/``sigma_max`` are the smallest positive and the largest sigma of the *full*
    schedule (A1111's ``sigmas[sigmas > 0].min()`` and ``sigmas.max()``), not an img2img slice;
    pass them (and the sigmas you query) as A1111 has them, float32. ``seed`` is the image seed
    (A1111's ``seed=[seed]``), or one seed per batch item. ``source`` as for :class:`ImageRNG`;
    ``sm_count``/``threads_per_sm`` as for :func:`philox_randn`, used when ``"gpu"`` noise is
    reproduced off CUDA.
    """
    _check_source(source)
    seeds = [seed] if isinstance(seed, int) else list(seed)
    for s in seeds:
        _check_seed(s)
    if x_like.dim() == 0 or len(seeds) != x_like.shape[0]:
        raise ValueError(
            f"one seed per batch item: {len(seeds)} seed(s) for a batch of "
            f"{x_like.shape[0] if x_like.dim() else 'no dimension'}"
        )
    routed = source == "gpu" and x_like.device.type != "cuda"
    grid: Grid = None
    if routed:
        grid = _resolve_grid(sm_count, threads_per_sm)
        _install_torchsde_hook()
    return BrownianTreeNoise(x_like, sigma_min, sigma_max, seeds, source, grid, routed)
