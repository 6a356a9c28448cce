"""`attnseg quantize`'s warning for full 8-bit weights on a CPU whose int8 products can saturate (no VNNI, no AMX)."""

import pytest

from attnseg.cli import quantize
from attnseg.hardware import CpuFacts

AVX2_ONLY = CpuFacts(model_name="AMD EPYC", vendor="AuthenticAMD", family=25, flags=frozenset({"avx2", "fma"}))
WITH_VNNI = CpuFacts(model_name="AMD EPYC", vendor="AuthenticAMD", family=25,
                     flags=frozenset({"avx2", "avx512f", "avx512_vnni"}))  # fmt: skip
UNKNOWN = CpuFacts()  # no /proc/cpuinfo: nothing to warn about


@pytest.mark.parametrize(
    "facts, overflow_fix, warned",
    [
        (AVX2_ONLY, "none", True),
        (AVX2_ONLY, "first-layer", False),
        (WITH_VNNI, "none", False),
        (UNKNOWN, "none", False),
    ],
)
def test_overflow_fix_none_warns_only_without_an_int8_dot_product(monkeypatch, capsys, facts, overflow_fix, warned):
    monkeypatch.setattr("attnseg.hardware.cpu_facts", lambda: facts)
    quantize._warn_without_int8_dot_product(overflow_fix)
    err = capsys.readouterr().err
    assert ("warning: --overflow-fix none on a CPU without VNNI or AMX" in err) == warned
    assert err.count("\n") == int(warned)
