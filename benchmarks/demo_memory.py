"""Peak resident memory of the demo's steps (issue 23, item 5): where the demo's peak RSS comes from.

Runs the demo's steps in one process, as the demo runs them (load SmolLM2-135M from its GGUF file,
perplexity of the dense model in and out of domain, compression with the demo's method and
calibration, the memory release, perplexity of the compressed model in and out of domain) and
samples the process's RSS every 20 ms from a thread, recording the peak of each step and the RSS
after it, with its minor page faults and CPU time (``getrusage``). ``/usr/bin/time -v python -m
adapters demo`` gives the demo's overall peak; this says which step sets it. The demo fixes
glibc's mmap threshold first (:func:`adapters._common.map_large_blocks`), and so does this
script unless ``--malloc-default`` is given (the comparison without it).

Usage::

    python benchmarks/demo_memory.py --output benchmarks/results/demo_memory.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common  # noqa: E402


class Sampler:
    """The peak RSS (bytes) of the current step, sampled from a thread."""

    def __init__(self, every: float = 0.02):
        self.proc = psutil.Process()
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def step(self, name, fn, steps):
        self.peak = self.proc.memory_info().rss
        t, use = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        out = fn()
        rss, used = self.proc.memory_info().rss, resource.getrusage(resource.RUSAGE_SELF)
        steps.append({"step": name, "peak_rss_mb": max(self.peak, rss) / 2**20, "rss_after_mb": rss / 2**20,
                      "seconds": time.perf_counter() - t, "cpu_seconds": used.ru_utime + used.ru_stime - use.ru_utime
                      - use.ru_stime, "system_seconds": used.ru_stime - use.ru_stime,
                      "minor_page_faults": used.ru_minflt - use.ru_minflt})
        x = steps[-1]
        print(f"{name:36s} peak {x['peak_rss_mb']:8.1f} MB   after {x['rss_after_mb']:8.1f} MB   {x['seconds']:7.1f} s"
              f"   cpu {x['cpu_seconds']:7.1f} s (system {x['system_seconds']:5.1f})   "
              f"{x['minor_page_faults']:>10,} faults", flush=True)
        return out


def main(argv=None) -> int:
    from adapters.cli import (DEMO_METHOD, SMOLLM2, _calibration_text, _ood_text, _parser, _ppl, config_from_args,
                              load_model)
    from adapters._common import map_large_blocks, release_memory
    from adapters.compression import compress
    from adapters.eval import load_wikitext2

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(HERE / "results" / "demo_memory.json"))
    p.add_argument("--malloc-default", action="store_true",
                   help="leave glibc's mmap threshold as it is (the demo fixes it: adapters._common.map_large_blocks)")
    args = p.parse_args(argv)
    demo = _parser().parse_args(["--quiet", "demo"])  # the demo's own options and defaults
    config = config_from_args(demo)
    mapped = False if args.malloc_default else map_large_blocks()
    steps: list = []
    with Sampler() as s:
        model, tok = s.step("load (GGUF, float32)", lambda: load_model(SMOLLM2), steps)
        data = s.step("load evaluation texts", lambda: load_wikitext2(tokenizer=tok), steps)
        ood = _ood_text(demo)
        s.step("perplexity, dense, WikiText-2", lambda: _ppl(model, tok, data.eval_text, demo), steps)
        if ood is not None:
            s.step("perplexity, dense, Shakespeare", lambda: _ppl(model, tok, ood, demo), steps)
        calibration = _calibration_text(demo, tok)
        s.step("release_memory (as the demo)", release_memory, steps)
        model, report = s.step("compress", lambda: compress(model, config, calibration=calibration, tokenizer=tok,
                                                            progress=False), steps)
        s.step("release_memory (as the demo)", release_memory, steps)
        s.step("perplexity, compressed, WikiText-2", lambda: _ppl(model, tok, data.eval_text, demo), steps)
        if ood is not None:
            s.step("perplexity, compressed, Shakespeare", lambda: _ppl(model, tok, ood, demo), steps)
    result = {"steps": steps, "peak_rss_mb": max(x["peak_rss_mb"] for x in steps), "config": config.to_dict(),
              "demo_method": DEMO_METHOD, "params_after": report.params_after, "map_large_blocks": mapped,
              "machine": _common.run_record("cpu")}
    _common.add_commands(result, [_common.command("python")])
    _common.dump_json(Path(args.output), result)
    print(f"peak RSS {result['peak_rss_mb']:.1f} MB -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
