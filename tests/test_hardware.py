"""The precision decision from CPU flags + a measured check, and the thread plan under contention."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnseg.config import load_config
from attnseg.hardware import (
    Bf16Speed,
    announce,
    busy_cores,
    choose_threads,
    parse_cpuinfo,
    parse_proc_stat,
    resolve_openvino_precision,
    resolve_precision,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

_COMMON = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx"
_AVX2 = "pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe"
_AVX2 += " popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm bmi1 avx2 smep bmi2 erms rdseed adx smap clflushopt"
_AVX512 = "avx512f avx512dq avx512cd avx512bw avx512vl avx512ifma avx512vbmi avx512_vbmi2 gfni vaes vpclmulqdq"


def _cpuinfo(vendor: str, family: int, model: str, flags: str) -> str:
    entry = (f"processor\t: {{index}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 143\n"
             f"model name\t: {model}\nstepping\t: 8\ncpu MHz\t\t: 2100.000\nflags\t\t: {_COMMON} {flags}\n"
             "bogomips\t: 4200.00\n\n")  # fmt: skip
    return "".join(entry.replace("{index}", str(index)) for index in range(2))


SAPPHIRE_RAPIDS = _cpuinfo("GenuineIntel", 6, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                           f"{_AVX2} {_AVX512} avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8")
ZEN4 = _cpuinfo("AuthenticAMD", 25, "AMD EPYC 9B14 96-Core Processor", f"{_AVX2} {_AVX512} avx512_vnni avx512_bf16")
ZEN3 = _cpuinfo("AuthenticAMD", 25, "AMD EPYC 7B13", f"{_AVX2} vaes vpclmulqdq")

FAST = Bf16Speed(matmul=4.1, conv=2.0)  # native bf16
EMULATED = Bf16Speed(matmul=0.05, conv=0.3)  # what the AVX2 EPYC and an ISA cap measure


@pytest.mark.parametrize(("text", "cpu_class", "native", "int8"), [
    (SAPPHIRE_RAPIDS, "amx", True, ("AMX int8", "AVX-512 VNNI")),
    (ZEN4, "avx512_bf16", True, ("AVX-512 VNNI",)),
    (ZEN3, "avx2", False, ()),
])  # fmt: skip
def test_flags_of_the_three_cpu_classes(text, cpu_class, native, int8):
    facts = parse_cpuinfo(text)
    assert facts.cpu_class == cpu_class
    assert facts.native_bf16 is native
    assert facts.int8_paths == int8
    assert facts.family == (6 if facts.vendor == "GenuineIntel" else 25)
    assert facts.model_name in facts.describe()


def test_unreadable_cpuinfo_is_unknown():
    facts = parse_cpuinfo("")
    assert not facts.known and facts.cpu_class == "unknown" and not facts.native_bf16


@pytest.mark.parametrize(("text", "flag_words"), [(SAPPHIRE_RAPIDS, "AMX bf16"), (ZEN4, "AVX-512 bf16")])
def test_auto_picks_bf16_where_flags_and_measurement_agree(text, flag_words):
    choice = resolve_precision("auto", "cpu", what="train.precision", facts=parse_cpuinfo(text), speed=FAST)
    assert choice.precision == "bf16" and choice.warning is None
    assert choice.reason.startswith("train.precision auto -> bf16") and flag_words in choice.reason
    assert "4.1x" in choice.reason


def test_auto_picks_fp32_on_avx2_only():
    choice = resolve_precision("auto", "cpu", facts=parse_cpuinfo(ZEN3), speed=EMULATED)
    assert choice.precision == "fp32"
    assert "no AVX-512 bf16 or AMX" in choice.reason and "emulated" in choice.reason and "0.05x" in choice.reason


def test_a_flag_without_its_speed_is_not_trusted():
    # ONEDNN_MAX_CPU_ISA=AVX2 or a VM: the flag is listed, the units are not used.
    choice = resolve_precision("auto", "cpu", facts=parse_cpuinfo(SAPPHIRE_RAPIDS), speed=EMULATED)
    assert choice.precision == "fp32" and "ISA cap" in choice.reason


def test_explicit_emulated_bf16_runs_with_one_warning_giving_the_cost():
    choice = resolve_precision("bf16", "cpu", facts=parse_cpuinfo(ZEN3), speed=EMULATED)
    assert choice.precision == "bf16" and choice.emulated
    assert "emulated" in choice.warning and "3.3x the fp32 time" in choice.warning
    lines: list[str] = []
    announce(choice, lines.append)
    announce(choice, lines.append)  # once per process
    assert lines == [choice.reason, choice.warning]


def test_explicit_values_are_kept():
    for value in ("fp32", "bf16"):
        assert resolve_precision(value, "cpu", facts=parse_cpuinfo(SAPPHIRE_RAPIDS), speed=FAST).precision == value
    assert resolve_precision("fp16", "cuda", cuda_bf16=True).precision == "fp16"


def test_cuda_auto():
    assert resolve_precision("auto", "cuda", cuda_bf16=True).precision == "bf16"
    assert resolve_precision("auto", "cuda", cuda_bf16=False).precision == "fp16"
    assert resolve_precision("auto", "cuda", cuda_bf16=False, allow_fp16=False).precision == "fp32"


def test_openvino_bf16_hint_is_labelled_fp32_without_native_bf16():
    zen3 = parse_cpuinfo(ZEN3)
    assert resolve_openvino_precision("auto", facts=zen3, speed=EMULATED).precision == "fp32"
    explicit = resolve_openvino_precision("bf16", facts=zen3, speed=EMULATED)
    assert explicit.emulated and "compiles to fp32" in explicit.warning
    assert resolve_openvino_precision("auto", facts=parse_cpuinfo(ZEN4), speed=FAST).precision == "bf16"


@pytest.mark.parametrize("name", ["demo_mscale.yaml", "demo_psanet.yaml", "synthetic_mscale_cpu.yaml",
                                  "synthetic_psanet_cpu.yaml"])  # fmt: skip
def test_cpu_configs_resolve_to_fp32_on_avx2_and_bf16_on_amx(name):
    config = load_config(CONFIGS / name)
    for value in (config.train.precision, config.eval.precision):
        assert value == "auto"
        assert resolve_precision(value, "cpu", facts=parse_cpuinfo(ZEN3), speed=EMULATED).precision == "fp32"
        assert resolve_precision(value, "cpu", facts=parse_cpuinfo(SAPPHIRE_RAPIDS), speed=FAST).precision == "bf16"


def test_gpu_recipes_keep_their_sources_precision():
    assert load_config(CONFIGS / "nvidia_cityscapes_fine.yaml").train.precision == "fp16"
    assert load_config(CONFIGS / "paddle_cityscapes_sota.yaml").train.precision == "fp32"


STAT_BEFORE = "cpu  200 0 100 1000 0 0 0 0 0 0\ncpu0 100 0 50 500 0 0 0 0 0 0\ncpu1 100 0 50 500 0 0 0 0 0 0\nintr 1\n"
# cpu0 fully busy for 100 jiffies (another process), cpu1 idle; iowait counts as idle.
STAT_AFTER = "cpu  300 0 100 1100 0 0 0 0 0 0\ncpu0 200 0 50 500 0 0 0 0 0 0\ncpu1 100 0 50 590 10 0 0 0 0 0\nintr 2\n"


def test_busy_cores_from_proc_stat():
    before, after = parse_proc_stat(STAT_BEFORE), parse_proc_stat(STAT_AFTER)
    assert set(before) == {0, 1}
    assert busy_cores(before, after) == pytest.approx(1.0)
    assert busy_cores(before, after, cpus={1}) == pytest.approx(0.0)


def test_threads_follow_the_free_cores():
    assert choose_threads(2, 2, 0.1).threads == 2
    busy = choose_threads(2, 2, 1.0)
    assert busy.threads == 1 and "instead of 2" in busy.reason and "1.0 of 2 cores busy" in busy.reason
    assert choose_threads(2, 2, 2.0).threads == 1  # never below one
    assert choose_threads(None, 8, 3.0).threads == 5
    assert choose_threads(4, 2, None).threads == 2  # never more than the affinity mask allows


def test_eval_fp16_is_refused_off_cuda_before_training():
    from attnseg.config.schema import EvalConfig, ExperimentConfig
    from attnseg.errors import ConfigError
    from attnseg.hardware import resolve_experiment_precision

    config = ExperimentConfig(eval=EvalConfig(precision="fp16"))
    with pytest.raises(ConfigError, match="eval.precision fp16: fp16 evaluation needs a CUDA device, not cpu"):
        resolve_experiment_precision(config, "cpu", log=lambda line: None)
    assert resolve_experiment_precision(config, "cuda", log=lambda line: None).eval.precision == "fp16"
