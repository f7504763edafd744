"""Seconds per outer step of a registered method at a named shape, for any ddbench commit.

It uses only what every ddbench version since 0.1 has (``create_method``, ``DistillTask``,
``ModelConfig``, ``DatasetSplits``), so one file times two checkouts at the same shape, on the
same machine, in the same run: put the other checkout first on the path::

    git worktree add /tmp/wt-ec286cf ec286cf
    (cd /tmp/wt-ec286cf && PYTHONPATH=/tmp/wt-ec286cf python /path/to/benchmarks/commit_speed.py --shape mnist-w64)
    python benchmarks/commit_speed.py --shape mnist-w64           # this checkout

The first line printed names the harness actually imported (its folder and git commit). Data
are random tensors of the shape (timing does not depend on pixel values): ``train_size`` real
training images from which the method draws its real batch. Each process runs ``--warmup``
untimed outer steps, then ``--steps`` timed ones (median and each one printed); compare whole
processes across commits with A/B-interleaved repeats and quote medians and ratios, together
with the machine's load average (printed at the start and the end).

``--profile`` then runs one more outer step under cProfile and one under ``torch.profiler``:
seconds per step inside the parts below (inclusive times, entered from outside the part; the
parts nest, so they do not add up) and the aten ops with the most self CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shapes import SHAPES, Shapes, shape as named_shape  # noqa: E402

LR = 1e-3

# (label, predicate on (file, function)): where an outer step's time goes, by function, in any
# ddbench version (the engine was harness/engine.py before it became harness/engine/unroll.py).
PARTS: list[tuple[str, callable]] = [
    ("method.step (whole outer step)", lambda f, n: _ours(f) and n == "step" and ("method" in f or "unrolled" in f)),
    ("meta_gradient (the engine)", lambda f, n: _ours(f) and n == "meta_gradient" and "engine" in f),
    ("  inner steps without graph (prefix)", lambda f, n: _ours(f) and n == "forward" and "engine" in f),
    ("  window with graph + its backward (full mode)", lambda f, n: _ours(f) and n == "_window_full"),
    ("  reverse steps (recompute mode)", lambda f, n: _ours(f) and n == "reverse" and "engine" in f),
    ("  outer loss on the real batch + its backward", lambda f, n: _ours(f) and n == "outer_loss_and_grad"),
    ("inner_step (forward, grad, optimizer update)", lambda f, n: _ours(f) and n == "inner_step"),
    ("network forward (ConvNet.forward)", lambda f, n: _ours(f) and n == "forward" and "models" in f),
    ("torch.func.functional_call (incl. the forward)", lambda f, n: "functional_call" in f and n == "functional_call"),
    ("autograd (torch.autograd.grad / backward)", lambda f, n: f.replace(os.sep, "/").endswith("torch/autograd/__init__.py")
     and n in ("grad", "backward")),
    ("inner optimizer (torchopt)", lambda f, n: f"{os.sep}torchopt{os.sep}" in f),
    ("real batch draw (_real_batch)", lambda f, n: _ours(f) and n == "_real_batch"),
    ("augmentation (augment)", lambda f, n: _ours(f) and n == "augment"),
    ("outer update (clip, Adam: apply)", lambda f, n: _ours(f) and n == "apply" and "unrolled" in f),
]


def _ours(path: str) -> bool:
    p = path.replace(os.sep, "/")
    return "/harness/" in p or "/methods/" in p


def _imports():
    """ddbench's API at whichever commit is on the path (create_method moved in 4eea1bc)."""
    from harness.data import DatasetSplits
    from harness.method import DistillTask
    from harness.models import ModelConfig
    try:
        from harness.method.registry import create_method
    except ImportError:  # before the harness was split into layers (4eea1bc)
        from harness.registry import create_method
        # Methods were then registered through the "ddbench.methods" entry point of the
        # installed package: import the checkout's own methods package instead.
        import methods  # noqa: F401
    return DatasetSplits, DistillTask, ModelConfig, create_method


def harness_origin() -> dict:
    import harness

    folder = Path(harness.__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"folder": str(folder), "commit": commit, "dirty": dirty}


def build_method(s: Shapes, name: str, mode: str, window: int, device: torch.device):
    """The method set up on random data of shape ``s`` (the same tensors for every commit)."""
    DatasetSplits, DistillTask, ModelConfig, create_method = _imports()
    gen = torch.Generator().manual_seed(0)
    n_train = s.train_size or s.real_batch
    train_x = torch.randn(n_train, s.channels, s.size, s.size, generator=gen).to(device)
    train_y = (torch.arange(n_train) % s.classes)[torch.randperm(n_train, generator=gen)].to(device)
    data = DatasetSplits("random", train_x, train_y, train_x[:10], train_y[:10], s.classes,
                         tuple(map(str, range(s.classes))), {})
    task = DistillTask(data=data, ipc=s.ipc, seed=0, model=ModelConfig(width=s.width, depth=s.depth),
                       outer_steps=10**6, device=device)
    cfg = {"unroll": s.unroll, "window": window, "real_batch": s.real_batch, "inner": {"name": "adam", "lr": LR},
           "init": "gaussian", "engine": {"mode": mode, "real_chunk": s.real_chunk if mode == "recompute" else None}}
    method = create_method(name, **cfg)
    method.setup(task)
    return method, cfg


def profile_parts(fn) -> dict[str, float]:
    """Seconds of one call of ``fn`` inside each of :data:`PARTS` (cProfile): for every function
    of a part, the cumulative time of its calls made from outside the part."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    out = {"total (cProfile)": sum(tt for (_, _, tt, _, _) in stats.values())}
    for label, inside in PARTS:
        members = {key for key in stats if inside(key[0], key[2])}
        seconds = 0.0
        for key in members:
            callers = stats[key][4]
            seconds += sum(c[3] for caller, c in callers.items() if caller not in members)
            if not callers:  # a root of the profile
                seconds += stats[key][3]
        out[label] = seconds
    return out


def profile_ops(fn, top: int) -> list[dict]:
    """The aten ops of one call of ``fn`` with the most self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = []
    for e in prof.key_averages():
        rows.append({"op": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
                     "cpu_total_s": e.cpu_time_total / 1e6})
    rows.sort(key=lambda r: -r["self_cpu_s"])
    total = sum(r["self_cpu_s"] for r in rows)
    for r in rows:
        r["share"] = r["self_cpu_s"] / total if total else 0.0
    return rows[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="mnist-w64", help=f"one of {', '.join(SHAPES)} (benchmarks/bench_shapes.py)")
    ap.add_argument("--method", default="rat_bptt")
    ap.add_argument("--mode", default="full", choices=("full", "recompute"), help="engine mode")
    ap.add_argument("--window", type=int, default=None, help="M (default: the shape's first window)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed outer steps first")
    ap.add_argument("--steps", type=int, default=None, help="timed outer steps (default: the shape's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the shape's)")
    ap.add_argument("--profile", action="store_true", help="then one step under cProfile and one under torch.profiler")
    ap.add_argument("--top", type=int, default=20, help="ops listed by --profile")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        s = named_shape(args.shape)
    except ValueError as err:
        print(f"commit_speed.py: error: --shape: {err}", file=sys.stderr)
        return 2
    threads = args.threads or s.threads
    if threads:
        torch.set_num_threads(threads)
    window = args.window or s.windows[0]
    steps = s.steps if args.steps is None else args.steps
    origin = harness_origin()
    load_start = os.getloadavg()
    print(f"harness: {origin['folder']} at {origin['commit']}{' (dirty)' if origin['dirty'] else ''} | torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads | load average {load_start[0]:.2f} "
          f"{load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    print(f"shape {args.shape}: {asdict(s)} | {args.method}:{args.mode} M = {window}", flush=True)

    method, cfg = build_method(s, args.method, args.mode, window, torch.device("cpu"))
    counter = iter(range(10**6))
    step = lambda: method.step(next(counter))  # noqa: E731
    times, plans = [], []
    for i in range(args.warmup + steps):
        t0 = time.perf_counter()
        metrics = step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        drawn = {k: metrics[k] for k in ("unroll", "window") if k in metrics}  # N, M of the step, where reported
        plans.append(drawn)
        print(f"  outer step {i}{' (warm-up)' if i < args.warmup else ''}: {dt:.3f} s {drawn or ''}", flush=True)
    result = {"schema_version": 1, "kind": "ddbench.bench.commit_speed", "harness": origin, "shape_name": args.shape,
              "shape": asdict(s), "method": args.method, "mode": args.mode, "window": window, "config": cfg,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "seconds_per_step": times, "plans": plans,
              "median_s": statistics.median(times) if times else None, "load_average_start": load_start}
    if times:
        print(f"median {result['median_s']:.3f} s per outer step over {len(times)} steps", flush=True)
    if args.profile:
        parts = profile_parts(step)
        ops = profile_ops(step, args.top)
        result.update(profile_parts=parts, profile_ops=ops)
        print("\nwhere one outer step's time goes (cProfile, inclusive seconds; parts nest):")
        for label, seconds in parts.items():
            print(f"  {label:50s} {seconds:8.3f}")
        print(f"\naten ops with the most self CPU time (torch.profiler, one step):")
        for r in ops:
            print(f"  {r['op']:42s} {r['calls']:7d} calls {r['self_cpu_s']:8.3f} s self {100 * r['share']:5.1f}%")
    result["load_average_end"] = os.getloadavg()
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in result['load_average_end'])}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
