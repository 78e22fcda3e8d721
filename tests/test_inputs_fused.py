"""model_inputs' chunked, in-place standardisation gives the straightforward formulation's bits.

The reference below is model_inputs as it was written before (whole-tensor ops: to_units with the
nodata value as NaN, normalize, isfinite, where); the fast version must give the same float32 bits
(``+0.0`` included) and the same mask for every stored dtype, nodata value and chunking.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from s12mae import inputs
from s12mae.inputs import model_inputs
from s12mae.sensors import BandStats, SensorSpec, get_sensor

S2, S1 = get_sensor("s2_l2a"), get_sensor("s1_grd")


def reference(spec: SensorSpec, raw: torch.Tensor, valid: torch.Tensor | None,
              nodata: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-fusion formulation, one whole-tensor op at a time."""
    x = spec.normalize(spec.to_units(raw))
    ok = torch.isfinite(x)
    if valid is not None:
        ok &= valid.bool()
    return (torch.where(ok, x, 0.0) if nodata == "mask" else x), ok


def assert_same_bits(spec: SensorSpec, raw: torch.Tensor, valid: torch.Tensor | None, nodata: str) -> None:
    want_x, want_ok = reference(spec, raw, valid, nodata)
    if nodata == "error" and not bool(want_ok.all()):
        with pytest.raises(ValueError, match="nodata/non-finite value"):
            model_inputs(spec, raw, valid, nodata="error")
        return
    x, ok = model_inputs(spec, raw, valid, nodata=nodata)  # type: ignore[arg-type]
    assert x.dtype == torch.float32 and ok.dtype == torch.bool and x.shape == raw.shape
    assert torch.equal(ok, want_ok)
    assert torch.equal(x.view(torch.int32), want_x.view(torch.int32))  # bit for bit, the sign of 0 too


def stored(spec: SensorSpec, dtype: torch.dtype, shape: tuple[int, ...], seed: int,
           clean: bool = False) -> torch.Tensor:
    """Stored values with nodata values, and for floats NaN, +-inf and -0.0, scattered in
    (``clean``: none of them, so ``error`` returns values too)."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        raw = (torch.rand(shape, generator=g) * 40 - 30).to(dtype).float()
        odd = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, float("nan"), spec.nodata, spec.nodata]
    else:  # built in int32: torch has few uint16 kernels
        lo = -2000 if dtype == torch.int16 else 0
        raw = torch.randint(lo, 12000, shape, generator=g, dtype=torch.int32)
        odd = [int(spec.nodata)] * 6
    if not clean:
        raw.view(-1)[torch.randperm(raw.numel(), generator=g)[: len(odd)]] = torch.tensor(odd, dtype=raw.dtype)
    else:
        raw[(raw == spec.nodata) | ~torch.isfinite(raw.float())] = 7
    return raw.to(dtype)


# S2 with the baseline offset folded into the spec (+1000 DN = +0.1 reflectance, removed as -0.1),
# S2 with a non-zero nodata value, S1 with a finite nodata value, a band whose float32 overflows
S2_OFFSET = dataclasses.replace(S2, dn_offset=-0.1)
S2_NODATA_MAX = dataclasses.replace(S2, nodata=65535.0)
S1_NODATA = dataclasses.replace(S1, nodata=-25.0)
S2_OVERFLOW = dataclasses.replace(S2, stats={**S2.stats, "B04": BandStats(mean=0.1, std=1e-40)})

SPECS = {"s2": S2, "s2-offset": S2_OFFSET, "s2-nodata65535": S2_NODATA_MAX, "s2-overflow": S2_OVERFLOW,
         "s1": S1, "s1-nodata-25": S1_NODATA}
CASES = [("s2", torch.int16), ("s2", torch.uint16), ("s2-offset", torch.int16), ("s2-offset", torch.uint16),
         ("s2-nodata65535", torch.uint16), ("s2", torch.float32), ("s2-overflow", torch.int16),
         ("s1", torch.float16), ("s1", torch.float32), ("s1-nodata-25", torch.float16),
         ("s1-nodata-25", torch.float32)]


@pytest.mark.parametrize("name, dtype", CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in CASES])
@pytest.mark.parametrize("nodata", ["mask", "error"])
@pytest.mark.parametrize("with_valid", [False, True])
def test_same_bits_as_the_reference(name, dtype, nodata, with_valid):
    spec = SPECS[name]
    for shape in [(3, spec.num_channels, 9, 7), (spec.num_channels, 5, 6)]:
        raw = stored(spec, dtype, shape, seed=len(shape))
        valid = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.05 if with_valid else None
        assert_same_bits(spec, raw, valid, nodata)
        assert_same_bits(spec, stored(spec, dtype, shape, seed=len(shape), clean=True), None, nodata)


@pytest.mark.parametrize("chunk", [1, 13, 45, 64, 200])
def test_any_chunking_gives_the_same_bits(monkeypatch, chunk):
    """Chunks of whole rows, of parts of a row, and ragged last chunks all write every element."""
    monkeypatch.setattr(inputs, "_CPU_CHUNK", chunk)
    for spec, dtype in [(S2_OFFSET, torch.int16), (S1, torch.float16)]:
        raw = stored(spec, dtype, (2, spec.num_channels, 8, 8), seed=chunk)
        valid = torch.rand(raw.shape, generator=torch.Generator().manual_seed(chunk)) > 0.1
        assert_same_bits(spec, raw, valid, "mask")


def test_strided_inputs_and_empty_batches():
    raw = stored(S2_OFFSET, torch.int16, (4, S2.num_channels, 10, 10), seed=3)
    view = raw.transpose(-1, -2)[::2]  # not contiguous
    valid = (torch.rand(raw.shape, generator=torch.Generator().manual_seed(3)) > 0.1).transpose(-1, -2)[::2]
    assert_same_bits(S2_OFFSET, view, valid, "mask")
    for empty in (raw[:0], raw[..., :0]):
        x, ok = model_inputs(S2, empty, nodata="error")
        assert x.shape == empty.shape and ok.shape == x.shape


def test_the_error_names_the_samples_with_invalid_values():
    raw = stored(S2, torch.int16, (3, S2.num_channels, 4, 4), seed=0, clean=True)
    raw[2, 1, 0, 0] = 0
    with pytest.raises(ValueError, match=r"^b: sample\(s\) \[12\] have 1 nodata/non-finite value\(s\) in s2_l2a"):
        model_inputs(S2, raw, where="b", names=torch.tensor([10, 11, 12]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_same_bits_as_the_reference_on_cuda():
    """On a GPU the batch is one chunk; the reference runs there too (same kernels, same bits)."""
    for spec, dtype in [(S2_OFFSET, torch.int16), (S2, torch.uint16), (S1, torch.float16), (S1_NODATA, torch.float32)]:
        raw = stored(spec, dtype, (4, spec.num_channels, 16, 16), seed=5).cuda()
        valid = (torch.rand(raw.shape, generator=torch.Generator().manual_seed(5)) > 0.1).cuda()
        assert_same_bits(spec, raw, valid, "mask")
