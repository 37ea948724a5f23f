"""``dtype: auto`` picks bfloat16 only where it is fast: GPUs and CPUs with native bf16."""

from __future__ import annotations

import pytest
import torch

from assistant_axis import models
from assistant_axis.models import cpu_has_fast_bf16, pick_dtype

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16 amx_int8\n"
# a flag name that merely contains the text must not count
LOOKALIKE = "processor\t: 0\nflags\t\t: fpu avx2 xavx512_bf16x\nmodel name\t: avx512_bf16 in a name\n"


@pytest.mark.parametrize(("cpuinfo", "fast"), [(AVX2_ONLY, False), (AVX512_BF16, True), (AMX, True), (LOOKALIKE, False), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, fast: bool) -> None:
    assert cpu_has_fast_bf16(cpuinfo) is fast


@pytest.mark.parametrize("fast", [False, True])
def test_auto_on_cpu_follows_the_flags(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: fast)
    assert pick_dtype("auto", "cpu") == (torch.bfloat16 if fast else torch.float32)


def test_auto_on_a_gpu_is_bfloat16_and_named_dtypes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert pick_dtype("auto", "cuda") == torch.bfloat16
    assert pick_dtype("bf16", "cpu") == torch.bfloat16 and pick_dtype("fp32", "cuda") == torch.float32
    with pytest.raises(ValueError, match="dtype 'half' is not one of"):
        pick_dtype("half")


def test_this_machine_gets_what_its_flags_say() -> None:
    with open("/proc/cpuinfo") as f:
        flags = {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    expected = torch.bfloat16 if flags & {"avx512_bf16", "amx_bf16"} else torch.float32
    assert pick_dtype("auto", "cpu") == expected
