"""`attnseg benchmark MODEL`: time every CPU inference route of one model and print ONE table.

Routes: torch-fp32 (eager, the reference), torch-bf16 (bf16 autocast + channels-last), torch-compile (the same,
compiled), onnxruntime (fp32), openvino-fp32, openvino-bf16 (explicit precision hints), openvino-int8 (the exported
graph quantized with NNCF as `attnseg quantize` does, calibrated on --int8-calib synthetic scenes; needs the int8
extra). For each: median/min/max seconds, images/s, speed-up over fp32 eager, achieved TFLOP/s and its share of the
measured bf16 matmul rate and of the rate of the route's own precision (fp32, bf16 or int8), peak resident memory,
label agreement with fp32 eager, and the first call (compilation) time; for OpenVINO routes, how many convolutions
and matrix products the runtime graph ran in each precision. Each route runs in its own child process; see
`attnseg.benchmark` for how memory and FLOPs are measured.

Example (README table): ``attnseg benchmark mscale_ocr_hrnet_w48 --size 1024 2048 --scales 0.5,1.0,2.0
--slow-routes torch-fp32 --slow-runs 1``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from attnseg.benchmark import ROUTES
    from attnseg.cli.arguments import non_negative_int, positive_int, scale_series

    parser = subparsers.add_parser(
        "benchmark",
        help="time PyTorch fp32/bf16/compiled, ONNX Runtime and OpenVINO inference of a model; one table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="registered model name (random weights) or native checkpoint / run directory")
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), default=[1024, 2048],
                        help="input size")
    parser.add_argument("--batch", type=positive_int, default=1, help="images per call (default 1)")
    parser.add_argument("--scales", type=scale_series, default=(1.0,),
                        help="in-model scales (MscaleOCR), e.g. 0.5,1.0,2.0")
    parser.add_argument("--routes", default=None,
                        help=f"comma list of {', '.join(ROUTES)} (default: all whose packages are installed)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default=None,
                        help="keep only the routes of this precision (torch-fp32 is always run as the reference)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="--no-compile drops the torch-compile route")  # fmt: skip
    parser.add_argument("--runs", type=positive_int, default=3, help="timed runs per route (default 3)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="warm-up runs per route (default 1)")
    parser.add_argument("--slow-routes", default="", help="routes timed --slow-runs times without warm-up")
    parser.add_argument("--slow-runs", type=positive_int, default=1, help="timed runs of the slow routes (default 1)")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads per runtime (default 2)")
    parser.add_argument("--int8-calib", type=non_negative_int, default=1,
                        help="synthetic scenes (other than the measured one) the INT8 route is calibrated on; 0: the "
                             "measured image itself (default 1)")  # fmt: skip
    parser.add_argument("--int8-calib-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                        help="size of the calibration scenes (default --size); NNCF holds most activations at once "
                             "(W48, 3 scales: 5.8 GB at 256 512), so large models calibrate smaller")  # fmt: skip
    parser.add_argument("--no-memory-check", action="store_true", help="skip the largest-scale-alone memory run")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep checkpoint/exports/labels here")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this text file")
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """Refuse an input or calibration size (scales included) above the size limit and an --out path that is a folder.

    Raises:
        ConfigError: naming the option, the value and the limit.
    """
    from attnseg.cli.arguments import check_output_file
    from attnseg.errors import ConfigError
    from attnseg.inference.scales import MAX_SIDE, check_scaled_input

    for flag, size in (("--size", args.size), ("--int8-calib-size", args.int8_calib_size)):
        if size is None:
            continue
        if max(size) > MAX_SIDE:
            raise ConfigError(f"{flag} {size[0]} {size[1]}: more than the {MAX_SIDE} px per side attnseg allows")
        try:
            check_scaled_input(size[0], size[1], tuple(args.scales), flag)
        except ConfigError as error:
            raise ConfigError(f"--scales: {error}") from None
    check_output_file(args.out, "--out")


def select_routes(text: str, precision: str | None, compile_flag: bool | None) -> list[str]:
    """Route names from the flags, in `ROUTES` order; the fp32 eager reference is always included."""
    from attnseg.benchmark import REFERENCE_ROUTE, ROUTES
    from attnseg.errors import ConfigError

    wanted = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROUTES]
    if unknown:
        raise ConfigError(f"--routes: unknown {unknown}; available: {', '.join(ROUTES)}")
    if precision is not None:
        wanted = [r for r in wanted if ROUTES[r]["precision"] == precision]
    if compile_flag is False:
        wanted = [r for r in wanted if not ROUTES[r].get("compile")]
    if REFERENCE_ROUTE not in wanted:
        wanted.append(REFERENCE_ROUTE)
    return [r for r in ROUTES if r in wanted]


def installed_routes(routes: list[str], explicit: bool, log: Callable[[str], None]) -> list[str]:
    """`routes` whose optional packages are installed. Asked for by name (`explicit`), a route that cannot run is an
    error naming the extra to install; by default it is left out with a line saying so."""
    from attnseg.benchmark import missing_packages
    from attnseg.errors import install_hint, require_optional

    kept = []
    for route in routes:
        missing = missing_packages(route)
        if not missing:
            kept.append(route)
        elif explicit:
            require_optional(missing[0])  # raises an AttnsegError naming the pip extra
        else:
            log(f"skipping route {route}: {missing[0]!r} is not installed; {install_hint(missing[0])}")
    return kept


def native_routes(routes: list[str], explicit: bool, log: Callable[[str], None]) -> tuple[list[str], dict[str, str]]:
    """(routes to run, emulated ones among them with the reason). By default a route whose precision this CPU only
    emulates is left out with a line saying why; asked for by name it runs, marked in the table."""
    from attnseg.benchmark import emulated_routes

    emulated = emulated_routes(routes)
    if explicit:
        for route, reason in emulated.items():
            log(f"route {route} runs emulated: {reason}")
        return routes, emulated
    for route, reason in emulated.items():
        log(f"skipping route {route}: {reason}")
    return [route for route in routes if route not in emulated], {}


def run(args: argparse.Namespace) -> int:
    from attnseg.benchmark import ROUTES, BenchmarkSpec, format_report, run_benchmark
    from attnseg.fileio import atomic_write_text

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    explicit = args.routes is not None
    routes = select_routes(args.routes if explicit else ",".join(ROUTES), args.precision, args.compile)
    routes = installed_routes(routes, explicit, log)
    routes, emulated = native_routes(routes, explicit, log)
    slow = tuple(r.strip() for r in args.slow_routes.split(",") if r.strip())
    spec = BenchmarkSpec(
        model=args.model, input_size=(args.size[0], args.size[1]), scales=tuple(args.scales), batch=args.batch,
        runs=args.runs, warmup=args.warmup, threads=args.threads, slow_runs=args.slow_runs if slow else None,
        slow_routes=slow, int8_calibration=args.int8_calib,
        int8_calibration_size=tuple(args.int8_calib_size) if args.int8_calib_size else None,
    )  # fmt: skip
    report = run_benchmark(spec, routes, memory_check=not args.no_memory_check, work_dir=args.work_dir, log=log)
    report.emulated = emulated
    table = format_report(report)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, table + "\n")
    return 0 if all(r.error is None for r in report.results) else 1
