"""A1111 v1.7's noise: CUDA's Philox randn off the GPU, the image RNG and the Brownian tree.

References, none of them the module under test:

* Random123's published known-answer vectors for Philox4x32-10;
* a literal, scalar transcription of PyTorch's CUDA ``normal_`` kernel loop and cuRAND's
  ``curand_init``/``curand4``/``_curand_box_muller`` (exact rational arithmetic for the fused
  multiply-adds), run on a toy grid so that every output slot and loop iteration is used;
* ``torch.randn(..., device="cuda")`` values published in PyTorch issues and elsewhere, on six
  GPUs, below and beyond one wave of threads;
* k-diffusion 0.1.1.post1's own ``BrownianTreeNoiseSampler``, run by
  ``tests/golden/make_noise_golden.py`` (``tests/golden/noise/``), and its 20 lines replicated
  here for more cases; torch's CPU generator itself for the ``"cpu"`` source.

The GPU test at the end compares with ``torch.randn`` on a real CUDA device.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from pipeline.diffusion import noise
from pipeline.diffusion.noise import (
    NOISE_SOURCES,
    ImageRNG,
    brownian_noise,
    philox4x32_10,
    philox_offset_increment,
    philox_randn,
    philox_randn_at,
)

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde's clamps

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "noise"


@pytest.fixture(autouse=True)
def _no_cuda_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default layout is the device-independent one here, even on a machine with CUDA
    (where the module would read the GPU's), except in the GPU tests."""
    if not torch.cuda.is_available():
        return
    monkeypatch.setattr(noise, "_resolve_grid", _independent_unless_given(noise._resolve_grid))


def _independent_unless_given(original: Any) -> Any:
    def resolve(sm_count: int | None, threads_per_sm: int | None) -> Any:
        if sm_count is None and threads_per_sm is None:
            return None
        return original(sm_count, threads_per_sm)

    return resolve


# --- Philox4x32-10: Random123's known answers ------------------------------------------------

# Random123 1.x tests/kat_vectors, the three "philox4x32 10" lines (counter[4] key[2] -> out[4]),
# as cut and pasted into DEShawResearch/Random123-Boost libs/random/test/test_philox.cpp.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_philox_known_answers(
    counter: tuple[int, ...], key: tuple[int, int], expected: tuple[int, ...]
) -> None:
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


def test_philox_vectorised_equals_one_at_a_time() -> None:
    rng = np.random.default_rng(5)
    ctr = rng.integers(0, 2**32, size=(4, 64), dtype=np.uint64).astype(np.uint32)
    key = (0x12345678, 0x9ABCDEF0)
    words = philox4x32_10(tuple(ctr), key)
    for j in (0, 17, 63):
        one = philox4x32_10(tuple(int(c) for c in ctr[:, j]), key)
        assert [int(w[j]) for w in words] == [int(w) for w in one]


# --- a scalar transcription of the CUDA kernel -----------------------------------------------

_M = (0xD2511F53, 0xCD9E8D57)
_W = (0x9E3779B9, 0xBB67AE85)


def _philox_scalar(ctr: list[int], key: list[int]) -> list[int]:
    """Random123's philox4x32 round and key schedule, in Python ints."""
    c, k = list(ctr), list(key)
    for rnd in range(10):
        if rnd:
            k = [(k[0] + _W[0]) % 2**32, (k[1] + _W[1]) % 2**32]
        p0, p1 = _M[0] * c[0], _M[1] * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 % 2**32, (p0 >> 32) ^ c[3] ^ k[1], p0 % 2**32]
    return c


def _f32(q: Fraction) -> np.float32:
    """Round a positive rational to float32, to nearest, ties to even."""
    a = np.float32(float(q))
    candidates = [np.nextafter(a, np.float32(-np.inf)), a, np.nextafter(a, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - q), int(c.view(np.uint32)) & 1))


_INV_2_32 = np.float32(2.3283064e-10)  # cuRAND's CURAND_2POW32_INV literal
_INV_2_32_2PI = np.float32(_INV_2_32 * np.float32(6.2831855))  # CURAND_2POW32_INV_2PI


def _box_muller_scalar(x: int, y: int) -> tuple[np.float32, np.float32]:
    """cuRAND's _curand_box_muller: fmaf((float)x, INV, INV/2) etc., sine/cosine rounded."""
    u = _f32(
        Fraction(float(_f32(Fraction(x)))) * Fraction(float(_INV_2_32))
        + Fraction(float(_INV_2_32)) / 2
    )
    c = Fraction(float(_INV_2_32_2PI))
    v = _f32(Fraction(float(_f32(Fraction(y)))) * c + c / 2)
    s = np.sqrt(np.float32(-2.0) * np.float32(math.log(float(u))))
    return np.float32(math.sin(float(v))) * s, np.float32(math.cos(float(v))) * s


class _CurandPhilox:
    """curand_init(seed, subsequence, offset) and curand4 for a Philox state (offset % 4 == 0)."""

    def __init__(self, seed: int, subsequence: int, offset: int) -> None:
        n = offset // 4
        self.ctr = [n % 2**32, n >> 32, subsequence % 2**32, subsequence >> 32]
        self.key = [seed % 2**32, seed >> 32]

    def curand4(self) -> list[int]:
        out = _philox_scalar(self.ctr, self.key)
        self.ctr[0] += 1  # no carry needed in these tests
        return out

    def normal4(self) -> list[np.float32]:
        a, b, c, d = self.curand4()
        return [*_box_muller_scalar(a, b), *_box_muller_scalar(c, d)]


def _kernel_literal(
    seed: int, numel: int, offset: int, sm_count: int, threads_per_sm: int
) -> np.ndarray:
    """PyTorch's distribution_elementwise_grid_stride_kernel with curand_normal4, as written."""
    block = 256
    grid = min((numel + block - 1) // block, sm_count * (threads_per_sm // block))
    unroll = 4
    out = np.full(numel, np.nan, dtype=np.float32)
    stride = block * grid
    rounded_size = ((numel - 1) // (stride * unroll) + 1) * stride * unroll
    for idx in range(stride):
        state = _CurandPhilox(seed, idx, offset)
        for linear_index in range(idx, rounded_size, stride * unroll):
            rand = state.normal4()
            for ii in range(unroll):
                li = linear_index + stride * ii
                if li < numel:
                    out[li] = rand[ii]
    return out


def test_the_element_layout_is_the_kernels_over_several_iterations() -> None:
    # A one-SM, 256-thread toy grid: 1500 elements take all four outputs of two iterations.
    seed, numel = 20240601, 1500
    for offset in (0, 8):
        expected = _kernel_literal(seed, numel, offset, 1, 256)
        got = philox_randn(seed, (numel,), offset=offset, sm_count=1, threads_per_sm=256)
        assert not np.isnan(expected).any()
        np.testing.assert_array_equal(got.numpy(), expected)
    # two iterations at unroll 4 advance the offset by 8
    assert philox_offset_increment(numel, sm_count=1, threads_per_sm=256) == 8


def test_one_wave_layout_is_subsequence_per_element() -> None:
    # Below one wave every GPU agrees: element i is the first output of subsequence i.
    seed = 2**40 + 77  # both key words in use
    expected = [_CurandPhilox(seed, i, 4).normal4()[0] for i in (0, 1, 255, 256, 9999)]
    got = philox_randn_at(seed, 10000, [0, 1, 255, 256, 9999], offset=4)
    np.testing.assert_array_equal(got, np.array(expected, dtype=np.float32))
    big = philox_randn_at(
        seed, 10000, [0, 1, 255, 256, 9999], offset=4, sm_count=108, threads_per_sm=2048
    )
    np.testing.assert_array_equal(big, got)


def test_the_fused_angle_is_rounded_once() -> None:
    # v = fmaf(float(y), C, C/2) on edge and random words, against exact rational rounding.
    ys = [0, 1, 2**24 - 1, 2**24, 2**24 + 1, 2**31, 2**32 - 129, 2**32 - 1]
    ys += [int(y) for y in np.random.default_rng(1).integers(0, 2**32, size=400)]
    y = np.array(ys, dtype=np.uint64).astype(np.uint32)
    got = noise._box_muller_f32(np.full_like(y, 2**31), y, np.zeros(y.shape, dtype=bool))
    s = np.sqrt(
        np.float32(-2.0)
        * np.float32(
            math.log(
                float(
                    _f32(
                        Fraction(2**31) * Fraction(float(_INV_2_32))
                        + Fraction(float(_INV_2_32)) / 2
                    )
                )
            )
        )
    )
    c = Fraction(float(_INV_2_32_2PI))
    for yi, g in zip(ys, got, strict=True):
        v = _f32(Fraction(float(_f32(Fraction(yi)))) * c + c / 2)
        assert g == np.float32(math.sin(float(v))) * s, yi


# --- published torch.randn(device="cuda") values ---------------------------------------------


def test_a1111_nv_docstring_seed_0() -> None:
    # modules/rng_philox.py (A1111 v1.6+) documents Generator(seed=0).randn((3, 4)) as
    # torch.randn(..., device="cuda") would give it; A1111 computes in float64, hence 1e-6.
    expected = [
        [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
        [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
        [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
    ]
    got = philox_randn(0, (3, 4))
    assert got.dtype == torch.float32 and got.shape == (3, 4)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


def test_published_seed_0_block() -> None:
    # The 8 x 8 CUDA randn printed in kapilsh/cuda-mode-lecture (FusedKernels.ipynb and its
    # blog post), seed 0; its first 12 values are A1111's above. Printed to 4 decimals.
    expected = [
        [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284],
        [-1.0745, -0.3631, -1.6711, 2.2655, 0.3117, -0.1842, 1.2866, 1.1820],
        [-0.1271, 1.2169, 1.4353, 1.0605, -0.4941, -1.4244, -0.7244, -1.2973],
        [0.0697, -0.0074, 1.8969, 0.6878, -0.0779, -0.8373, 1.3506, -0.2879],
        [-0.5965, -0.3283, -0.9086, -0.8059, -0.7407, -0.0504, 0.5435, 1.5150],
        [0.0141, 0.4532, 1.6349, 0.7124, -0.1806, 1.0252, -1.4622, -0.7554],
        [-0.1836, 0.3824, 0.3918, -0.0830, 0.8971, -1.1123, 0.1116, 0.4863],
        [-0.5499, -0.3231, -0.5469, 0.9049, 0.2837, 0.1210, 0.4730, -1.0823],
    ]
    np.testing.assert_allclose(philox_randn(0, (8, 8)).numpy(), expected, atol=5.1e-5, rtol=0)


def _printed(values: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(values, expected, atol=5.1e-5, rtol=0)


def test_published_values_within_one_wave() -> None:
    # pytorch/pytorch#62467: RTX A6000, Generator("cuda").manual_seed(43), (1, 3, 128, 128),
    # normal_(); printed noise[..., 0, 0] = elements 0, 16384, 32768.
    _printed(philox_randn_at(43, 49152, [0, 16384, 32768]), [1.9983, 0.8704, 2.1127])
    # pytorch/pytorch#158398: randn([1, 64, 2048]) with manual_seed(42), rows 0-2 (first and
    # last three of each).
    rows = [r * 2048 + c for r in (0, 1, 2) for c in (0, 1, 2, 2045, 2046, 2047)]
    _printed(
        philox_randn_at(42, 131072, rows),
        [
            *[0.1940, 2.1614, -0.1721, 1.4540, -2.7733, -0.8932],
            *[-0.4574, 0.8063, 0.1580, 0.1124, 0.2769, -1.2535],
            *[1.1346, -0.6329, -0.9147, -1.0001, -1.1552, -0.6955],
        ],
    )


def test_published_values_beyond_one_wave() -> None:
    # pytorch/pytorch#143086: Generator("cuda").manual_seed(1), randn(1, 49*12*112*144): the
    # same first three on both cards, different last three on an H100 (SXM, 132 SMs) and an
    # A100 (108 SMs), 2048 threads per SM each: 11 loop iterations, every output slot in use.
    n = 49 * 12 * 112 * 144
    ends = [0, 1, 2, n - 3, n - 2, n - 1]
    h100 = philox_randn_at(1, n, ends, sm_count=132, threads_per_sm=2048)
    a100 = philox_randn_at(1, n, ends, sm_count=108, threads_per_sm=2048)
    _printed(h100, [-0.2963, 2.6764, -0.1408, -0.6970, -0.7780, 0.3267])
    _printed(a100, [-0.2963, 2.6764, -0.1408, 0.1549, -0.6797, -0.1656])
    assert philox_offset_increment(n, sm_count=108, threads_per_sm=2048) == 4 * 11

    # pytorch/pytorch#158398: the same draw on an RTX 3060 (28 SMs x 1536): rows 61-63 lie
    # beyond its 43,008 threads.
    rows = [r * 2048 + c for r in (61, 62, 63) for c in (0, 1, 2, 2045, 2046, 2047)]
    rtx3060 = philox_randn_at(42, 131072, rows, sm_count=28, threads_per_sm=1536)
    _printed(
        rtx3060,
        [
            *[-0.4861, 0.3358, 1.0578, -0.7282, 0.5087, 0.1318],
            *[0.7881, 0.8339, -1.1424, -0.6297, -1.1112, -0.4091],
            *[-1.2356, -0.4083, -0.4695, -0.4841, 1.2850, -0.0282],
        ],
    )
    # The device-independent rule cannot know this: it is a different number there.
    assert np.abs(philox_randn_at(42, 131072, rows) - rtx3060).max() > 0.5

    # pytorch/pytorch#97097: RTX A4000 (48 SMs x 1536), torch.manual_seed(14),
    # cuda.FloatTensor(1000, 100).normal_(5, 5 ** .5): first and last rows (first and last
    # three of each). The kernel's transform is fmaf(x, std, mean), rounded once.
    std = np.float32(5**0.5)

    def normal(
        seed: int, idx: list[int], sm: int | None = None, tps: int | None = None
    ) -> np.ndarray:
        x = philox_randn_at(seed, 100000, idx, sm_count=sm, threads_per_sm=tps)
        x = x.astype(np.float64)
        return (x * float(std) + 5.0).astype(np.float32)

    first = [r * 100 + c for r in (0, 1, 2) for c in (0, 1, 2, 97, 98, 99)]
    last = [r * 100 + c for r in (997, 998, 999) for c in (0, 1, 2, 97, 98, 99)]
    _printed(
        normal(14, first),
        [
            *[2.8731, 5.2727, 2.9889, 1.6853, 9.6331, 6.6319],
            *[3.9968, 3.8097, 5.7328, 4.4029, 3.9804, 7.4698],
            *[6.5552, 4.0857, 4.2315, 2.7704, 3.5479, 3.3063],
        ],
    )
    _printed(
        normal(14, last, 48, 1536),
        [
            *[8.6297, 2.3137, 6.2596, 7.9358, 4.4697, 2.7475],
            *[7.0551, 7.8583, 3.9990, 4.1139, 8.9315, 4.2042],
            *[2.7337, 2.2106, 7.7815, 8.2207, 6.5395, 4.2604],
        ],
    )


# --- offsets, dtypes, arguments ---------------------------------------------------------------


def test_offset_increments() -> None:
    # calc_execution_policy: 4 * ceil(numel / (stride * unroll)); float unroll 4, double 2.
    assert philox_offset_increment(0) == 0
    assert philox_offset_increment(1) == 4
    assert philox_offset_increment(4 * 256 * 256) == 4  # one wave, any size, no GPU given

    def a100(numel: int, dtype: torch.dtype = torch.float32) -> int:  # 221,184 threads
        return philox_offset_increment(numel, dtype=dtype, sm_count=108, threads_per_sm=2048)

    assert a100(221184 * 4) == 4
    assert a100(221184 * 4 + 1) == 8
    assert a100(221184 * 2, torch.float64) == 4
    assert a100(221184 * 2 + 1, torch.float64) == 8


def test_successive_draws_are_new_numbers() -> None:
    a = philox_randn(7, (4, 16, 16))
    b = philox_randn(7, (4, 16, 16), offset=4)
    assert not torch.equal(a, b)
    # the second draw's element i is iteration 1 of subsequence i
    assert float(b.flatten()[3]) == float(_CurandPhilox(7, 3, 4).normal4()[0])


def test_half_precision_rounds_the_float32_draw() -> None:
    full = philox_randn(11, (2, 64))
    for dtype in (torch.float16, torch.bfloat16):
        assert torch.equal(philox_randn(11, (2, 64), dtype=dtype), full.to(dtype))


def test_double_path_is_curand_normal2_double() -> None:
    seed, numel = 99, 600  # one 256-thread SM: three iterations of two outputs each
    got = philox_randn(seed, (numel,), dtype=torch.float64, sm_count=1, threads_per_sm=256)
    assert got.dtype == torch.float64
    stride = 256
    for li in (0, 255, 256, 511, 512, 599):
        idx, wave = li % stride, li // stride
        state = _CurandPhilox(seed, idx, 0)
        for _ in range(wave // 2):
            state.curand4()
        a, b, c, d = state.curand4()
        zx, zy = a ^ (b << 21), c ^ (d << 21)
        u = zx * 2.0**-53 + 2.0**-54
        v = zy * 2.0**-52 + 2.0**-53
        s = math.sqrt(-2.0 * math.log(u))
        expected = s * (math.sin(math.pi * v) if wave % 2 == 0 else math.cos(math.pi * v))
        assert float(got[li]) == pytest.approx(expected, rel=1e-14, abs=1e-15)
    assert philox_offset_increment(numel, dtype=torch.float64, sm_count=1, threads_per_sm=256) == 8


def test_draws_look_standard_normal() -> None:
    x = philox_randn(1337, (1, 4, 128, 128)).double()
    assert torch.isfinite(x).all()
    assert abs(float(x.mean())) < 0.02 and abs(float(x.std()) - 1) < 0.02
    assert philox_randn(1337, (0, 4)).shape == (0, 4)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="seed"):
        philox_randn(-1, (2,))
    with pytest.raises(ValueError, match="seed"):
        philox_randn(2**64, (2,))
    with pytest.raises(ValueError, match="multiple of 4"):
        philox_randn(1, (2,), offset=2)
    with pytest.raises(ValueError, match="both"):
        philox_randn(1, (2,), sm_count=108)
    with pytest.raises(ValueError, match="threads_per_sm"):
        philox_randn(1, (2,), sm_count=108, threads_per_sm=64)
    with pytest.raises(ValueError, match="floating"):
        philox_randn(1, (2,), dtype=torch.int32)


# --- the image RNG ---------------------------------------------------------------------------


def test_gpu_image_rng_continues_the_generator() -> None:
    shape = (1, 4, 12, 10)
    rng = ImageRNG(1337, shape, "gpu", "cpu")
    draws = [rng.next() for _ in range(3)]
    for k, x in enumerate(draws):
        assert x.shape == shape and x.dtype == torch.float32
        assert torch.equal(x, philox_randn(1337, shape, offset=4 * k))


def test_gpu_image_rng_follows_the_gpu_layout_when_named() -> None:
    shape = (1, 4, 32, 32)  # 4096 elements: beyond a one-SM toy grid's 256 threads
    rng = ImageRNG(5, shape, "gpu", "cpu", sm_count=1, threads_per_sm=256)
    first, second = rng.next(), rng.next()
    assert torch.equal(first, philox_randn(5, shape, sm_count=1, threads_per_sm=256))
    step = philox_offset_increment(4096, sm_count=1, threads_per_sm=256)
    assert step == 16
    assert torch.equal(second, philox_randn(5, shape, offset=step, sm_count=1, threads_per_sm=256))


def test_cpu_image_rng_is_torchs_cpu_stream() -> None:
    shape = (1, 4, 9, 9)
    gen = torch.Generator("cpu").manual_seed(42)
    expected = [torch.randn(shape, generator=gen) for _ in range(3)]
    rng = ImageRNG(42, shape, "cpu", "cpu", dtype=torch.float64)
    for e in expected:
        got = rng.next()
        assert got.dtype == torch.float64 and torch.equal(got, e.double())


def test_eta_noise_seed_delta_reseeds_after_the_first_draw() -> None:
    shape = (4, 8, 8)
    for source in NOISE_SOURCES:
        rng = ImageRNG(100, shape, source, eta_noise_seed_delta=31337)
        plain = ImageRNG(100, shape, source)
        delta = ImageRNG(100 + 31337, shape, source)
        assert torch.equal(rng.next(), plain.next())
        assert torch.equal(rng.next(), delta.next())  # the second draw: seed + delta's first
        assert torch.equal(rng.next(), delta.next())


def test_noise_sampler_ignores_the_sigmas() -> None:
    rng = ImageRNG(3, (1, 4, 4, 4))
    ref = ImageRNG(3, (1, 4, 4, 4))
    sampler = rng.noise_sampler()
    assert torch.equal(sampler(14.6, 0.03), ref.next())
    assert torch.equal(sampler(None, None), ref.next())


def test_image_rng_refuses_what_a1111_does_not_draw() -> None:
    with pytest.raises(ValueError, match="noise source"):
        ImageRNG(1, (1, 4, 8, 8), "nv")
    with pytest.raises(ValueError, match="batch"):
        ImageRNG(1, (2, 4, 8, 8))
    with pytest.raises(ValueError, match="seed"):
        ImageRNG(-5, (1, 4, 8, 8))


# --- the Brownian tree ------------------------------------------------------------------------


def _golden_cases() -> list[dict[str, Any]]:
    return json.loads((GOLDEN / "brownian.json").read_text())["cases"]


@pytest.mark.parametrize("case", range(5))
def test_cpu_tree_is_k_diffusions(case: int) -> None:
    meta = _golden_cases()[case]
    expected = np.load(GOLDEN / "brownian.npz")[meta["array"]]
    sigmas = torch.tensor(meta["sigmas"], dtype=torch.float32)
    x = torch.zeros(meta["shape"])
    sampler = brownian_noise(x, sigmas[sigmas > 0].min(), sigmas.max(), meta["seeds"], source="cpu")
    for k, (i, j) in enumerate(meta["pairs"]):
        got = sampler(sigmas[i], sigmas[j])
        assert got.shape == tuple(meta["shape"]) and got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), expected[k])


class _KDiffusionBrownian:
    """k-diffusion 0.1.1.post1 ``BatchedBrownianTree`` + ``BrownianTreeNoiseSampler`` (MIT,
    k_diffusion/sampling.py), the list-of-seeds path A1111 takes, as the reference."""

    def __init__(self, x: torch.Tensor, sigma_min: Any, sigma_max: Any, seed: list[int]) -> None:
        import torchsde

        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        t0, t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros_like(x)
        assert len(seed) == x.shape[0]
        self.trees = [torchsde.BrownianTree(t0, w0[0], t1, entropy=s) for s in seed]

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        a, b, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([cast(torch.Tensor, tree(a, b)) for tree in self.trees])
        w = w * (self.sign * sign)
        return w / (t1 - t0).abs().sqrt()


def test_cpu_tree_matches_k_diffusion_on_more_cases() -> None:
    rng = np.random.default_rng(9)
    for seed, shape in ((7, (1, 4, 3, 5)), (2**32 - 2, (1, 2, 6, 2)), (31337, (1, 4, 16, 16))):
        lo, hi = 0.0291675, 14.614642
        ref = _KDiffusionBrownian(torch.zeros(shape), lo, hi, [seed])
        ours = brownian_noise(torch.zeros(shape), lo, hi, seed, source="cpu")
        for _ in range(6):
            s, t = (float(v) for v in np.exp(rng.uniform(math.log(lo), math.log(hi), size=2)))
            assert torch.equal(ours(s, t), ref(s, t))


def test_cpu_tree_output_follows_x() -> None:
    x = torch.zeros(1, 4, 5, 5, dtype=torch.float64)
    out = brownian_noise(x, 0.03, 14.6, 5, source="cpu")(1.0, 0.5)
    assert out.dtype == torch.float64 and out.shape == x.shape
    ref = _KDiffusionBrownian(x, 0.03, 14.6, [5])(1.0, 0.5)
    assert torch.equal(out, ref)


def test_gpu_tree_off_cuda_draws_cuda_numbers() -> None:
    """The routed tree's top-level increment is CUDA's randn of torchsde's first seed."""
    shape = (1, 4, 6, 6)
    lo, hi = 0.0291675, 14.614642
    sampler = brownian_noise(torch.zeros(shape), lo, hi, 1337, source="gpu")
    whole = sampler(lo, hi)
    # torchsde 0.2.6 BrownianInterval: SeedSequence(entropy, pool_size=24).generate_state(3)[0]
    # seeds W(t1) - W(t0) = randn * sqrt(t1 - t0), t0 and t1 the float32 sigmas as floats.
    w_seed = int(np.random.SeedSequence(entropy=1337, pool_size=24).generate_state(3)[0])
    t0, t1 = float(torch.tensor(lo)), float(torch.tensor(hi))
    expected = philox_randn(w_seed, shape[1:]) * math.sqrt(t1 - t0)
    expected = expected / (torch.tensor(hi) - torch.tensor(lo)).abs().sqrt()
    assert torch.equal(whole[0], expected)
    # and it is not the CPU generator's tree
    cpu = brownian_noise(torch.zeros(shape), lo, hi, 1337, source="cpu")(lo, hi)
    assert not torch.equal(whole, cpu)


def test_gpu_tree_off_cuda_is_k_diffusions_tree_on_cuda_numbers() -> None:
    # k-diffusion's sampler (replicated above) with torchsde's draws routed the same way equals
    # ours query for query: the wrapper adds nothing of its own to the tree.
    lo, hi = torch.tensor(0.0498), torch.tensor(14.614642)
    x = torch.zeros(1, 4, 7, 9)
    ours = brownian_noise(x, lo, hi, 1337, source="gpu")
    with noise._drawing_cuda_noise(None):
        ref = _KDiffusionBrownian(x, lo, hi, [1337])
    sigmas = torch.tensor([14.614642, 3.1, 0.9, 0.3, 0.13, 0.0498])
    for s, t in [*itertools.pairwise(sigmas), (sigmas[4], sigmas[1])]:
        with noise._drawing_cuda_noise(None):
            expected = ref(s, t)
        assert torch.equal(ours(s, t), expected)


def test_the_route_stays_with_its_tree() -> None:
    # After routed trees drew (on this thread and another), plain torchsde still draws with
    # torch's CPU generator: the golden k-diffusion case is reproduced through the reference.
    brownian_noise(torch.zeros(1, 4, 8, 8), 0.03, 14.6, 1, source="gpu")(1.0, 2.0)
    worker = threading.Thread(
        target=lambda: brownian_noise(torch.zeros(1, 4, 8, 8), 0.03, 14.6, 2)(3.0, 2.0)
    )
    worker.start()
    worker.join()
    meta = _golden_cases()[0]
    expected = np.load(GOLDEN / "brownian.npz")[meta["array"]]
    sigmas = torch.tensor(meta["sigmas"], dtype=torch.float32)
    ref = _KDiffusionBrownian(
        torch.zeros(meta["shape"]), sigmas[sigmas > 0].min(), sigmas.max(), meta["seeds"]
    )
    i, j = meta["pairs"][0]
    np.testing.assert_array_equal(ref(sigmas[i], sigmas[j]).numpy(), expected[0])


def test_gpu_tree_routing_refuses_an_unchecked_torchsde(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchsde
    from torchsde._brownian import brownian_interval

    current = brownian_interval._randn
    original = current.original if isinstance(current, noise._RoutedRandn) else current
    monkeypatch.setattr(brownian_interval, "_randn", original)
    monkeypatch.setattr(torchsde, "__version__", "0.3.0")
    with pytest.raises(RuntimeError, match=r"torchsde 0\.3\.0"):
        brownian_noise(torch.zeros(1, 4, 4, 4), 0.03, 14.6, 1, source="gpu")
    # the CPU source needs no hook
    brownian_noise(torch.zeros(1, 4, 4, 4), 0.03, 14.6, 1, source="cpu")


def test_brownian_noise_wants_a_seed_per_image() -> None:
    with pytest.raises(ValueError, match="one seed per batch item"):
        brownian_noise(torch.zeros(2, 4, 4, 4), 0.03, 14.6, 1)
    with pytest.raises(ValueError, match="noise source"):
        brownian_noise(torch.zeros(1, 4, 4, 4), 0.03, 14.6, 1, source="mps")


# --- on a real GPU ----------------------------------------------------------------------------

GPU_SHAPES = [(3, 4), (1, 4, 64, 64), (1, 4, 128, 128), (1, 4, 256, 256), (1, 4, 384, 512)]
GPU_SEEDS = [0, 1337, 2**32 - 1, 2**40 + 12345]


def _compare(got: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    g, r = got.cpu().double(), ref.cpu().double()
    return {
        "max_abs": float((g - r).abs().max()),
        "identical": float((got.cpu() == ref.cpu()).double().mean()),
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_philox_randn_is_cuda_randn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # read the real GPU's layout
    sm, threads = noise.cuda_grid()
    for seed in GPU_SEEDS:
        for shape in GPU_SHAPES:
            gen = torch.Generator("cuda").manual_seed(seed)
            offset = 0
            for draw in range(3):  # first, second and third draw on one generator
                ref = torch.randn(shape, generator=gen, device="cuda")
                got = philox_randn(seed, shape, offset=offset)
                stats = _compare(got, ref)
                print(f"seed {seed} shape {shape} draw {draw + 1} ({sm}x{threads}): {stats}")
                assert stats["max_abs"] < 2e-5, (seed, shape, draw)
                offset += philox_offset_increment(math.prod(shape))
    gen = torch.Generator("cuda").manual_seed(5)
    ref64 = torch.randn((1, 4, 256, 256), generator=gen, device="cuda", dtype=torch.float64)
    got64 = philox_randn(5, (1, 4, 256, 256), dtype=torch.float64)
    assert _compare(got64, ref64)["max_abs"] < 1e-12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tree_off_cuda_is_the_cuda_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    shape = (1, 4, 64, 64)
    sigmas = torch.tensor([14.6146, 5.0, 1.2, 0.4, 0.1, 0.0292], device="cuda")
    on_cuda = brownian_noise(torch.zeros(shape, device="cuda"), sigmas[-1], sigmas[0], 1337)
    ref = _KDiffusionBrownian(torch.zeros(shape, device="cuda"), sigmas[-1], sigmas[0], [1337])
    off = brownian_noise(torch.zeros(shape), sigmas[-1].cpu(), sigmas[0].cpu(), 1337)
    for i in range(len(sigmas) - 1):
        native = on_cuda(sigmas[i], sigmas[i + 1])
        assert torch.equal(native, ref(sigmas[i], sigmas[i + 1]))
        stats = _compare(off(sigmas[i].cpu(), sigmas[i + 1].cpu()), native)
        print(f"Brownian {float(sigmas[i]):.4f} -> {float(sigmas[i + 1]):.4f}: {stats}")
        assert stats["max_abs"] < 1e-4
