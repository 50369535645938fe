"""``python -m worker.selfcheck``: does ``torch.compile`` work in this environment?

Run by the worker image at start-up (docker/worker-entrypoint.sh) so that an eager fallback is
never silent. It reports the C compiler (Inductor builds C++ kernels on the CPU and Triton
builds a small C launcher per kernel on CUDA), Triton on CUDA, the kernel cache directories
(``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR``: a volume there keeps compiled kernels across
restarts), then compiles and runs a binary conv block on the device and compares it with eager.

Exit status by ``--compile`` (default ``BNN_TUNE_COMPILE``, else ``auto``): ``on`` -> 1 when
compiling fails (every trial would fail); ``auto`` -> 0 with a WARNING line (stacked trials run
eager, slower); ``off`` -> 0 without compiling anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

__all__ = ["CompileReport", "check_compile", "main"]


class CompileReport:
    """What :func:`check_compile` found; ``works`` is the verdict."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.works = False
        self.reason = ""

    def add(self, key: str, value: object) -> None:
        self.lines.append(f"  {key:<24} {value}")


def _cache_dir(variable: str) -> str:
    path = os.environ.get(variable)
    if not path:
        return "unset (default under /tmp: lost with the container)"
    writable = os.access(path, os.W_OK) if os.path.isdir(path) else False
    return f"{path} ({'writable' if writable else 'NOT WRITABLE'})"


def _root_cause(exc: BaseException) -> str:
    """The innermost error (Dynamo wraps the compiler's in BackendCompilerFailed), one line."""
    seen = {id(exc)}
    while (inner := getattr(exc, "inner_exception", None) or exc.__cause__) is not None:
        if id(inner) in seen:
            break
        seen.add(id(inner))
        exc = inner
    lines = [line for line in str(exc).strip().splitlines() if line.strip()] or [""]
    return f"{type(exc).__name__}: {lines[0][:300]}"


def check_compile(device: str) -> CompileReport:
    """Compile a small conv + sign + batch-norm block on ``device`` and compare with eager."""
    report = CompileReport()
    compiler = next((shutil.which(cc) for cc in ("cc", "gcc", "clang") if shutil.which(cc)), None)
    report.add("C compiler", compiler or "NONE (install gcc: Inductor and Triton need one)")
    report.add("TORCHINDUCTOR_CACHE_DIR", _cache_dir("TORCHINDUCTOR_CACHE_DIR"))
    report.add("TRITON_CACHE_DIR", _cache_dir("TRITON_CACHE_DIR"))
    import torch

    report.add("torch", f"{torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            report.reason = f"device {device} requested but no CUDA device is visible"
            return report
        try:
            import triton

            report.add("triton", triton.__version__)
        except ImportError as exc:
            report.reason = f"triton missing: {exc}"
            return report
        report.add("GPU", torch.cuda.get_device_name(torch.device(device)))
    torch.manual_seed(0)
    block = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
    ).to(device)
    x = torch.randn(4, 3, 8, 8, device=device)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return torch.sign(block(inputs)).sum(dim=(2, 3))

    start = time.perf_counter()
    try:
        compiled = torch.compile(forward)
        got = compiled(x)
        expected = forward(x)
    except Exception as exc:  # noqa: BLE001 - any failure is the answer, reported in one line
        report.reason = _root_cause(exc)
        return report
    report.add("compile + first run", f"{time.perf_counter() - start:.1f} s")
    if not torch.allclose(got, expected):
        report.reason = "compiled result differs from eager"
        return report
    report.works = True
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.selfcheck", description=__doc__)
    parser.add_argument(
        "--device", default=os.environ.get("BNN_TUNE_DEVICE", "auto"), help="default: auto"
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default=os.environ.get("BNN_TUNE_COMPILE", "auto"),
        help="the worker's compile setting (decides the exit status)",
    )
    args = parser.parse_args(argv)
    if args.compile == "off":
        print("selfcheck: BNN_TUNE_COMPILE=off, torch.compile not used")
        return 0
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    report = check_compile(device)
    verdict = "works" if report.works else f"DOES NOT WORK: {report.reason}"
    print(f"selfcheck: torch.compile on {device} {verdict}")
    print("\n".join(report.lines))
    if report.works:
        return 0
    if args.compile == "on":
        print("selfcheck: ERROR: BNN_TUNE_COMPILE=on and compiling fails; every trial would fail")
        return 1
    print("selfcheck: WARNING: BNN_TUNE_COMPILE=auto falls back to eager (stacked trials slower)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
