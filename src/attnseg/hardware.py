"""What this CPU does natively, which precision every command runs in, and how many threads fit the free cores.

Precision (`resolve_precision`): torch's bf16 autocast runs on any CPU, but only AVX-512 bf16 or AMX execute it
natively; elsewhere oneDNN emulates it at several times the cost of fp32 (measured on an AVX2-only AMD EPYC:
the demo's step 0.32x the fp32 speed at one scale). The decision reads the CPU flags (`parse_cpuinfo` takes the
text, so tests feed it fixture ``/proc/cpuinfo`` texts) and confirms them with a quick measurement
(`measure_bf16_speed`: bf16 vs fp32 matmul and 3x3 conv, ~0.1 s, once per process), because an ISA cap
(``ONEDNN_MAX_CPU_ISA``) or a VM can list a flag whose speed is not there. ``precision: auto`` picks bf16 only when
both agree; an explicit bf16 on a CPU without it runs, with one warning that gives the measured cost.

Threads (`plan_threads`): with more threads than free cores every OpenMP barrier waits for a descheduled thread
(the demo's step went from 9-11 s to 17-37 s beside one busy process on 2 cores). The plan counts the cores this
process may use (``os.sched_getaffinity``), measures how many of them other processes keep busy (``/proc/stat``
over 0.1 s) and uses no more threads than the free cores. OpenMP's wait policy is left at its default: measured on
a Sapphire Rapids machine, ``OMP_WAIT_POLICY=PASSIVE`` made the idle demo step 1.5x slower (0.52 -> 0.77 s) and
helped nothing beside a busy process (2 threads: 1.95 s default, 2.65 s passive; 1 thread: 0.77 s).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attnseg.cpu_load import busy_cores, measure_busy_cores, parse_proc_stat

# Speed of bf16 relative to fp32 (matmul) at and above which a listed bf16 flag counts as real. Native bf16 measured
# 1.5-40x fp32 (AVX-512 bf16 ~2x, AMX more; less when the machine is busy), emulated 0.01-0.2x.
NATIVE_BF16_MIN_SPEEDUP = 0.7
# Without CPU flags to read (not Linux), the measurement alone decides, with a margin for timing noise.
UNKNOWN_CPU_MIN_SPEEDUP = 1.5
CPU_CLASSES = ("amx", "avx512_bf16", "avx512", "avx2", "baseline", "unknown")
CPU_CLASS_LABELS = {
    "amx": "AMX bf16/int8",
    "avx512_bf16": "AVX-512 bf16, no AMX",
    "avx512": "AVX-512, no bf16",
    "avx2": "AVX2 only (no AVX-512, no bf16)",
    "baseline": "no AVX2",
    "unknown": "CPU flags unknown",
}


@dataclass(frozen=True)
class CpuFacts:
    """The first processor's entries of ``/proc/cpuinfo``.

    Attributes:
        model_name: "model name" (e.g. "AMD EPYC 7B13"); "" when unknown.
        vendor: "vendor_id" (GenuineIntel, AuthenticAMD); "" when unknown.
        family: "cpu family" (AMD Zen 3 and Zen 4 are both 25); None when unknown.
        flags: the "flags" set; empty when unknown (then `known` is False).
    """

    model_name: str = ""
    vendor: str = ""
    family: int | None = None
    flags: frozenset[str] = frozenset()

    @property
    def known(self) -> bool:
        """Whether the flags were read (False off Linux)."""
        return bool(self.flags)

    @property
    def native_bf16(self) -> bool:
        """AVX-512 bf16 or AMX bf16: the two ISAs oneDNN runs bf16 convolutions and matmuls natively on."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def int8_paths(self) -> tuple[str, ...]:
        """The INT8 dot-product ISAs present (AMX int8, AVX-512 VNNI, AVX-VNNI), fastest first."""
        names = (("amx_int8", "AMX int8"), ("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI"))
        return tuple(label for flag, label in names if flag in self.flags)

    @property
    def cpu_class(self) -> str:
        """One of `CPU_CLASSES`; the README's speed tables name each row's class."""
        if "amx_bf16" in self.flags:
            return "amx"
        if "avx512_bf16" in self.flags:
            return "avx512_bf16"
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "baseline" if self.known else "unknown"

    def describe(self) -> str:
        """Model name and class, e.g. "AMD EPYC 7B13 (AVX2 only (no AVX-512, no bf16))"."""
        name = self.model_name or "unknown CPU"
        return f"{name} ({CPU_CLASS_LABELS[self.cpu_class]})" if self.known else name


def parse_cpuinfo(text: str) -> CpuFacts:
    """`CpuFacts` of a ``/proc/cpuinfo`` text (its first processor's entries)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    family_text = fields.get("cpu family", "")
    return CpuFacts(
        model_name=fields.get("model name", ""),
        vendor=fields.get("vendor_id", ""),
        family=int(family_text) if family_text.isdigit() else None,
        flags=frozenset(fields.get("flags", "").split()),
    )


@functools.lru_cache(maxsize=1)
def cpu_facts() -> CpuFacts:
    """This machine's `CpuFacts` (cached); an empty one where ``/proc/cpuinfo`` cannot be read."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        import platform

        return CpuFacts(model_name=platform.processor() or platform.machine())


# --------------------------------------------------------------------------------------------------------------------
# Measured bf16 speed
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bf16Speed:
    """bf16 speed as a multiple of fp32 speed (above 1: faster) for a matmul and a channels-last 3x3 conv."""

    matmul: float
    conv: float

    def text(self) -> str:
        return f"measured bf16 matmul {self.matmul:.2g}x, 3x3 conv {self.conv:.2g}x fp32"


def _best_seconds(call: Callable[[], object], budget: float) -> float:
    call()  # first call: oneDNN primitive creation, allocator
    best = math.inf
    deadline = time.perf_counter() + budget
    while best == math.inf or time.perf_counter() < deadline:
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


@functools.lru_cache(maxsize=1)
def measure_bf16_speed(budget: float = 0.02) -> Bf16Speed:
    """bf16 vs fp32 speed of a 256x256 matmul and a 64-channel 3x3 conv on this CPU (cached per process).

    The matmul decides whether bf16 is native (emulated bf16 matmuls are 10-100x slower than fp32, native ones
    faster); the conv is close to what the models' steps cost (emulated: 0.3-0.5x fp32). About 0.1 s in all, a
    few tenths of a second where bf16 is emulated.
    """
    import torch

    with torch.inference_mode():
        left = torch.randn(256, 256)
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
        image = torch.randn(1, 64, 64, 64).contiguous(memory_format=torch.channels_last)
        fp32_mm = _best_seconds(lambda: left @ left, budget)
        fp32_conv = _best_seconds(lambda: conv(image), budget)
        left16, conv16, image16 = left.bfloat16(), conv.bfloat16(), image.bfloat16()  # after the fp32 timings
        bf16_mm = _best_seconds(lambda: left16 @ left16, budget)
        bf16_conv = _best_seconds(lambda: conv16(image16), budget)
    return Bf16Speed(matmul=fp32_mm / bf16_mm, conv=fp32_conv / bf16_conv)


def bf16_is_native(facts: CpuFacts, speed: Bf16Speed) -> bool:
    """Flags and measurement agree that bf16 runs natively (flags alone decide nothing: an ISA cap or a VM can
    hide the units behind a listed flag)."""
    if not facts.known:
        return speed.matmul >= UNKNOWN_CPU_MIN_SPEEDUP
    return facts.native_bf16 and speed.matmul >= NATIVE_BF16_MIN_SPEEDUP


def _flag_text(facts: CpuFacts) -> str:
    if not facts.known:
        return "CPU flags unknown"
    if "amx_bf16" in facts.flags:
        return "CPU has AMX bf16"
    if "avx512_bf16" in facts.flags:
        return "CPU has AVX-512 bf16"
    return "no AVX-512 bf16 or AMX on this CPU"


def native_bf16_here() -> tuple[bool, str]:
    """Whether this machine runs bf16 natively (flags and measurement), and what was seen, e.g. "CPU has AMX bf16;
    measured bf16 matmul 4.1x, 3x3 conv 2.0x fp32"."""
    facts, speed = cpu_facts(), measure_bf16_speed()
    return bf16_is_native(facts, speed), f"{_flag_text(facts)}; {speed.text()}"


# --------------------------------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionChoice:
    """What `resolve_precision` decided.

    Attributes:
        precision: what runs: "fp32", "bf16" or "fp16".
        reason: one line saying why (printed once by `announce`).
        warning: one line when the user's explicit choice is emulated on this machine, else None.
        emulated: the chosen precision is emulated (slow) on this CPU.
    """

    precision: str
    reason: str
    warning: str | None = None
    emulated: bool = False


def resolve_precision(requested: str, device: str = "cpu", *, what: str = "precision",
                      facts: CpuFacts | None = None, speed: Bf16Speed | None = None,
                      cuda_bf16: bool | None = None, allow_fp16: bool = True) -> PrecisionChoice:  # fmt: skip
    """The precision a command runs in, and why.

    Args:
        requested: "auto" or an explicit "fp32" / "bf16" / "fp16".
        device: "cpu" or "cuda" (a torch device type).
        what: the setting's name in the messages, e.g. "train.precision".
        facts: CPU facts (default: this machine's); tests pass parsed fixture texts.
        speed: measured bf16 speed (default: measured now, once per process); tests inject it.
        cuda_bf16: whether the CUDA device supports bf16 (default: asked of torch).
        allow_fp16: fp16 is an option here (training: autocast + GradScaler); evaluation has only fp32/bf16.
    """
    if device == "cuda":
        return _resolve_cuda(requested, what, cuda_bf16, allow_fp16)
    if requested not in ("auto", "bf16"):
        return PrecisionChoice(requested, "")  # the user's own fp32: nothing to explain
    facts = cpu_facts() if facts is None else facts
    speed = measure_bf16_speed() if speed is None else speed
    native = bf16_is_native(facts, speed)
    if requested == "auto":
        if native:
            return PrecisionChoice("bf16", f"{what} auto -> bf16: {_flag_text(facts)} ({speed.text()})")
        if facts.native_bf16:
            why = f"{_flag_text(facts)} but {speed.text()} (an ISA cap or a VM hides it)"
        else:
            why = f"{_flag_text(facts)} (bf16 would be emulated: {speed.text()})"
        return PrecisionChoice("fp32", f"{what} auto -> fp32: {why}")
    if native:
        return PrecisionChoice("bf16", f"{what} bf16: {_flag_text(facts)} ({speed.text()})")
    cost = f"about {1 / speed.conv:.1f}x the fp32 time" if speed.conv < 1 else "slower than fp32 in whole models"
    warning = (f"warning: {what} bf16 is emulated on this CPU ({_flag_text(facts)}; {speed.text()}): it runs, "
               f"{cost}; 'auto' would pick fp32")  # fmt: skip
    return PrecisionChoice("bf16", f"{what} bf16 (emulated on this CPU)", warning, emulated=True)


def _resolve_cuda(requested: str, what: str, cuda_bf16: bool | None, allow_fp16: bool) -> PrecisionChoice:
    if requested != "auto":
        return PrecisionChoice(requested, f"{what} {requested} on CUDA")
    if cuda_bf16 is None:
        import torch

        cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if cuda_bf16:
        return PrecisionChoice("bf16", f"{what} auto -> bf16: the CUDA device supports bf16")
    if allow_fp16:
        return PrecisionChoice("fp16", f"{what} auto -> fp16: the CUDA device has no bf16")
    return PrecisionChoice("fp32", f"{what} auto -> fp32: the CUDA device has no bf16")


def resolve_openvino_precision(requested: str, *, what: str = "OpenVINO precision", facts: CpuFacts | None = None,
                               speed: Bf16Speed | None = None) -> PrecisionChoice:  # fmt: skip
    """OpenVINO's inference precision hint: its bf16 hint silently compiles to fp32 on a CPU without native bf16,
    so "auto" picks fp32 there and an explicit bf16 is labelled with what it will really run as."""
    facts = cpu_facts() if facts is None else facts
    speed = measure_bf16_speed() if speed is None else speed
    native = bf16_is_native(facts, speed)
    if requested == "auto":
        chosen = "bf16" if native else "fp32"
        return PrecisionChoice(chosen, f"{what} auto -> {chosen}: {_flag_text(facts)} ({speed.text()})")
    if requested == "bf16" and not native:
        warning = (f"warning: {what} bf16 compiles to fp32 on this CPU ({_flag_text(facts)}); it stays bf16 for "
                   "CPUs that have AVX-512 bf16 or AMX")  # fmt: skip
        return PrecisionChoice("bf16", f"{what} bf16 (runs as fp32 on this CPU)", warning, emulated=True)
    return PrecisionChoice(requested, f"{what} {requested}")


_ANNOUNCED: set[str] = set()


def announce(choice: PrecisionChoice, log: Callable[[str], None] | None = None) -> None:
    """Print the choice's reason (and warning) once per process, to stderr unless `log` is given."""
    write = log or (lambda line: print(line, file=sys.stderr, flush=True))
    for line in (choice.reason, choice.warning):
        if line and line not in _ANNOUNCED:
            _ANNOUNCED.add(line)
            write(line)


def choose_precision(requested: str, device: str = "cpu", *, what: str = "precision", allow_fp16: bool = True,
                     log: Callable[[str], None] | None = None) -> str:  # fmt: skip
    """`resolve_precision` for this machine, announced; returns the precision to run."""
    choice = resolve_precision(requested, device, what=what, allow_fp16=allow_fp16)
    announce(choice, log)
    return choice.precision


def resolve_experiment_precision(config, device: str = "cpu", log: Callable[[str], None] | None = None):
    """`config` (an `ExperimentConfig`) with ``train.precision`` and ``eval.precision`` resolved for `device` and
    announced; explicit values stay as they are (emulated ones warn).

    Raises:
        ConfigError: ``eval.precision: fp16`` off CUDA (refused before training, not at its first evaluation).
    """
    import dataclasses

    if config.eval.precision == "fp16" and device != "cuda":
        from attnseg.errors import ConfigError

        raise ConfigError(f"eval.precision fp16: fp16 evaluation needs a CUDA device, not {device}; use fp32 or bf16")
    if device != "cuda" and config.train.precision == config.eval.precision:  # one line for both
        train = evaluation = choose_precision(config.train.precision, device, what="precision", log=log)
    else:
        train = choose_precision(config.train.precision, device, what="train.precision", log=log)
        evaluation = choose_precision(config.eval.precision, device, what="eval.precision", allow_fp16=False, log=log)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, precision=train),
                               eval=dataclasses.replace(config.eval, precision=evaluation))  # fmt: skip


def resolve_backend_precision(backend: str, requested: str | None, device: str = "cpu", *, what: str = "--precision",
                              log: Callable[[str], None] | None = None) -> str | None:  # fmt: skip
    """A ``--precision`` flag of eval / predict / benchmark for `backend` ("torch", "onnxruntime", "openvino"),
    resolved and announced; None (not given) stays None."""
    if requested is None:
        return None
    if backend == "openvino":
        choice = resolve_openvino_precision(requested, what=what)
    elif backend == "onnxruntime":
        chosen = "fp32" if requested == "auto" else requested
        choice = PrecisionChoice(chosen, f"{what} {requested}: ONNX Runtime runs fp32")
    else:
        choice = resolve_precision(requested, device, what=what, allow_fp16=False)
    announce(choice, log)
    return choice.precision


# --------------------------------------------------------------------------------------------------------------------
# Threads under contention
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadPlan:
    """Threads to run with and what was seen: `available` cores this process may use, `busy` of them kept busy
    by other processes (measured), the chosen `threads` and one line saying so."""

    threads: int
    available: int
    busy: float
    reason: str


def available_cores() -> int:
    """Cores this process may run on (its affinity mask; all CPUs off Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_threads(requested: int | None, available: int, busy: float | None) -> ThreadPlan:
    """No more threads than free cores (at least one): `requested` (None: all available) lowered to the cores
    that other processes leave free. A core counts as taken when it is more than half busy."""
    wanted = min(requested, available) if requested else available
    free = available if busy is None else max(1, available - int(math.floor(busy + 0.5)))
    threads = max(1, min(wanted, free))
    seen = "load not measured" if busy is None else f"{busy:.1f} of {available} cores busy with other processes"
    if threads < wanted:
        reason = f"threads {threads} instead of {wanted}: {seen} (more threads than free cores wait at every barrier)"
    else:
        reason = f"threads {threads}: {seen}"
    return ThreadPlan(threads, available, 0.0 if busy is None else busy, reason)


def plan_threads(requested: int | None = None, interval: float = 0.1) -> ThreadPlan:
    """`choose_threads` for this machine now (sleeps `interval` seconds to measure the load)."""
    return choose_threads(requested, available_cores(), measure_busy_cores(interval))


def apply_thread_plan(requested: int | None = None, log: Callable[[str], None] | None = None) -> ThreadPlan:
    """Measure, set torch's intra-op threads to the plan and print its line (stderr unless `log` is given)."""
    import torch

    plan = plan_threads(requested)
    torch.set_num_threads(plan.threads)
    (log or (lambda line: print(line, file=sys.stderr, flush=True)))(plan.reason)
    return plan


def openmp_runtime() -> str:
    """The OpenMP runtime torch was built with, from ``torch.__config__.show()`` ("GNU libgomp", "Intel OpenMP"
    or "unknown"): both read ``OMP_WAIT_POLICY``; Intel's also ``KMP_BLOCKTIME``."""
    import torch

    text = torch.__config__.show()
    if "OpenMP" not in text:
        return "unknown"
    return "Intel OpenMP" if "iomp" in text.lower() else "GNU libgomp"


__all__ = [
    "CPU_CLASSES",
    "Bf16Speed",
    "CpuFacts",
    "PrecisionChoice",
    "ThreadPlan",
    "announce",
    "apply_thread_plan",
    "available_cores",
    "bf16_is_native",
    "busy_cores",
    "choose_precision",
    "choose_threads",
    "cpu_facts",
    "measure_bf16_speed",
    "native_bf16_here",
    "parse_cpuinfo",
    "parse_proc_stat",
    "plan_threads",
    "resolve_backend_precision",
    "resolve_experiment_precision",
    "resolve_openvino_precision",
    "resolve_precision",
]
