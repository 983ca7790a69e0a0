"""Shared pieces of the benchmark scripts: metadata, side-by-side timing, JSON, tables, figures.

Absolute CPU times on shared machines are noise; ratios measured in one run are not. So
:func:`side_by_side` interleaves the repeats of every contender (round ``i`` of each before round
``i + 1`` of any), and reports medians, so that a burst of load from another process hits
every contender alike. On a GPU, :func:`cuda_time` brackets the work with CUDA events after a
synchronisation, which is what absolute GPU figures need.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Packages whose versions go into every result file (those not installed are listed as None).
VERSIONED = (
    "numpy", "scipy", "torch", "cupy", "numba", "sklearn", "teneva", "maxvolpy",
    "transformers", "matplotlib",
)


def versions() -> dict[str, str | None]:
    """Versions of curlinalg and of the packages in :data:`VERSIONED` that import."""
    out: dict[str, str | None] = {}
    for name in ("curlinalg", *VERSIONED):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:  # an optional peer that is absent or broken is recorded, not fatal
            out[name] = None
    return out


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except Exception:
        return None


def machine(device: str | None = None) -> dict[str, Any]:
    """Where the run happened: platform, CPU, load, BLAS threads and, for CUDA, the GPU."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": _git_commit(),
    }
    try:
        info["load_average_1_5_15"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(device)
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def command(interpreter: str = ".venv/bin/python") -> str:
    """The exact command line of this run, relative to the repository root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return " ".join(shlex.quote(a) for a in [interpreter, script, *sys.argv[1:]])


def add_commands(doc: dict[str, Any], commands: list[str]) -> None:
    """Append ``commands`` to ``doc["commands"]`` (a resumable results file), skipping repeats."""
    known = doc.setdefault("commands", [])
    known += [c for c in commands if c not in known]


def run_record(device: str | None = None) -> dict[str, Any]:
    """:func:`machine` plus :func:`versions`, for results files that collect many runs."""
    return {**machine(device), "versions": versions()}


def write_json(name: str, payload: dict[str, Any], *, device: str | None = None) -> Path:
    """Write ``payload`` with machine, versions and command to ``benchmarks/results/<name>``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": command(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(device),
        "versions": versions(),
        **payload,
    }
    path = dump_json(RESULTS / name, doc)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return path


def dump_json(path: Path, doc: Any) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def limit_threads(count: int | None) -> dict[str, Any]:
    """Cap BLAS/OpenMP threads (threadpoolctl) and torch's intra-op threads; return what was set.

    On a small machine shared with other jobs, OpenBLAS threads that spin-wait for a core held by
    another process make multi-threaded timings erratic (10x swings were seen on 2 busy cores);
    one thread per process gives stable ratios. ``None`` leaves the defaults.
    """
    info: dict[str, Any] = {"requested": count}
    if count is None:
        return info
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=count)
        info["threadpoolctl"] = True
    except ImportError:
        info["threadpoolctl"] = False
    try:
        import torch

        torch.set_num_threads(count)
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def side_by_side(
    contenders: dict[str, Callable[[], Any]],
    *,
    repeats: int = 3,
    warmup: bool = True,
    rounds: dict[str, int] | None = None,
    sync: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time several callables with interleaved repeats; return median, all times, last result.

    Parameters
    ----------
    contenders : dict of name -> callable
        Zero-argument callables; the last return value of each is kept (to measure errors
        without running it again).
    repeats : int
        Rounds; in each round every contender still due runs once, in the given order.
    warmup : bool
        Run each contender once, untimed, first (imports, JIT, allocator, BLAS thread start).
    rounds : dict of name -> int, optional
        Fewer rounds for slow contenders (they run in the first ``rounds[name]`` rounds only).
    sync : callable, optional
        Called before starting and before stopping each clock (``torch.cuda.synchronize``).

    Returns
    -------
    dict of name -> {"median_s", "times_s", "result"}
    """
    rounds = rounds or {}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    last: dict[str, Any] = {}
    if warmup:
        for name, fn in contenders.items():
            if rounds.get(name, repeats) > 0:
                last[name] = fn()
    for r in range(repeats):
        for name, fn in contenders.items():
            if r >= rounds.get(name, repeats):
                continue
            if sync is not None:
                sync()
            t = time.perf_counter()
            last[name] = fn()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - t)
    return {
        name: {
            "median_s": statistics.median(ts) if ts else None,
            "times_s": ts,
            "result": last.get(name),
        }
        for name, ts in times.items()
    }


def cuda_time(fn: Callable[[], Any], *, repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Median and all times (seconds) of ``fn`` on the current CUDA stream, with CUDA events."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return {"median_s": statistics.median(times), "times_s": times}


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text (and Markdown) table: ``columns`` are ``(key, header, format)``."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = row.get(key)
            cells.append("-" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(met: bool | None, figure: str) -> str:
    """``"met (figure)"``, ``"not met (figure)"`` or ``"not measured (figure)"``."""
    word = "not measured" if met is None else ("met" if met else "not met")
    return f"{word} ({figure})"


def cuda_or_skip(device: str) -> bool:
    """Whether to go on with ``device``: prints why and returns False when CUDA is missing."""
    if not str(device).startswith("cuda"):
        return True
    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (pip install torch with CUDA support)")
        return False
    if not torch.cuda.is_available():
        print(
            f"skipped: --device {device} asked for CUDA but torch {torch.__version__} sees no CUDA "
            "device (torch.cuda.is_available() is False); run on a CUDA machine, or pass "
            "--device cpu --small for a smoke run"
        )
        return False
    return True


def subplots(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``matplotlib.pyplot.subplots`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, path: Path, *, dpi: int = 120) -> Path:
    """Lay out, write and close ``fig``; print the path relative to the repository."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    print(f"wrote {os.path.relpath(path, ROOT)}")
    return Path(path)
