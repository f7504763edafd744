"""One-process benchmark of the meta-gradient: the official recipe against the ddbench engine.

Every variant computes the same thing, the meta-gradient of one outer step (N inner Adam
steps on the whole synthetic set, the last M differentiated, the outer loss on a real batch),
on the same device, in this one process, one after the other:

* ``higher``: the official RaT-BPTT recipe, the baseline: a ``torch.optim.Adam`` prefix of
  N - M steps without a graph, then a ``higher.innerloop_ctx`` window of M steps, the outer
  loss on the real batch through the whole window's graph;
* ``full``: ddbench's engine, one graph through the window (outer loss taken first at the
  detached final parameters, so the real batch's activations and the window's graph never
  coexist);
* ``recompute``: ddbench's recompute mode (one step's graph at a time) with the real batch in
  chunks (and, on CUDA, the snapshots in host memory); ``recompute+graphs`` the same
  replaying captured CUDA graphs (CUDA only);
* ``floor``: N plain training steps and one forward/backward of the real batch, no
  meta-gradient: a lower bound on any exact method.

For each window M it reports the median seconds per outer step and the peak memory, and the
ratios against the baseline. ``--trajectories 1,2,4,8`` (the default) times ddbench's variants
with K inner trajectories per outer step run as one batched network (``engine.trajectories``,
K inits, the meta-gradient their mean): seconds per outer step, meta-gradients per second
(K / seconds) and peak memory, for every window; ``--methods`` adds whole outer steps of registered methods
(e.g. ``rat_bptt,at_bptt``) at the same shapes. ``--check`` first compares every variant's
meta-gradient with the baseline's on a short unroll in float64 (same init, same data).

Peak memory on CUDA is the caching allocator's reserved peak (it counts the private memory
pools of captured graphs; the allocated peak is in the JSON too). On CPU, where there is no
allocator counter, it is the exact peak of live tensor bytes created by one outer step
(``harness.engine.tensor_memory``), measured in a separate, untimed call.

Shapes are named (``benchmarks/bench_shapes.py``): ``cifar10`` (the default: the RaT-BPTT
paper's IPC 10 setting), ``tiny`` (CI), ``mnist-w64`` (the CPU speed check of issue 17:
ConvNet-3 width 64 on 28x28x1, T = 60, M = 20, real batch 1000, 2 threads; time it across
commits with ``benchmarks/commit_speed.py``). ``--budget-s`` bounds the run: measurements are
taken in order of interest (the first window's rows and K table, then the longer windows) and
those that would end past the budget are recorded as skipped; a variant that runs out of
device memory is recorded as such. The JSON is rewritten after every measurement.

Usage::

    python benchmarks/unroll.py                      # CIFAR-10 shapes, IPC 10, N = 200, M = 60/120/200
    python benchmarks/unroll.py --tiny               # small shapes on CPU, under a minute
    python benchmarks/unroll.py --json out.json --methods rat_bptt,at_bptt
    python benchmarks/unroll.py --shape mnist-w64 --methods rat_bptt:full --variants full --trajectories ''
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate

from harness.engine.cudagraphs import StepGraphs
from harness.engine import (FunctionalModel, InnerSchedule, RealBatchLoss, Synthetic, Trajectories, UnrollOptions,
                            meta_gradient, stack_schedules)
from harness.engine.memory import PeakMemory
from harness.models import ConvNet
from harness.models.batched import BatchedConvNet
from harness.engine.optim import InnerOptimizerConfig, make_inner_optimizer
from harness.core.provenance import hardware_info
from harness.engine.tensor_memory import TensorMemoryMeter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shapes import SHAPES, Shapes  # noqa: E402  (no ddbench import: commit_speed.py shares them)

LR = 1e-3


TINY = SHAPES["tiny"]


class Problem:
    """Random tensors of the benchmark's shapes (timing does not depend on pixel values)."""

    def __init__(self, shapes: Shapes, device: torch.device, dtype: torch.dtype, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        s = shapes
        self.shapes, self.device, self.dtype = s, device, dtype
        n = s.classes * s.ipc
        self.images = torch.randn(n, s.channels, s.size, s.size, generator=gen, dtype=dtype).to(device)
        self.labels = torch.arange(s.classes).repeat_interleave(s.ipc).to(device)
        self.real_x = torch.randn(s.real_batch, s.channels, s.size, s.size, generator=gen, dtype=dtype).to(device)
        self.real_y = torch.randint(0, s.classes, (s.real_batch,), generator=gen).to(device)
        self.functional: FunctionalModel | None = None  # built on first use by the ddbench variants
        # eps_convention="higher": the same Adam formula as higher's, so --check compares exactly.
        self.optimizer = make_inner_optimizer(InnerOptimizerConfig(name="adam", lr=LR, eps_convention="higher"))
        self.batched: dict[int, FunctionalModel] = {}  # K -> the K-trajectory network
        self.real: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # K -> the real batch, once per trajectory

    def network(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        s = self.shapes
        return ConvNet(s.channels, s.classes, s.size, s.width, s.depth).to(self.device, self.dtype)

    def schedule(self, n_steps: int) -> InnerSchedule:
        # The whole synthetic set at every step, like the official recipe.
        rows = torch.arange(self.images.shape[0], device=self.device)
        return InnerSchedule(rows.expand(n_steps, -1).contiguous())


# --------------------------------------------------------------------------- the variants


def step_higher(p: Problem, window: int, seed: int = 0) -> torch.Tensor:
    import higher

    images = p.images.detach().requires_grad_()
    net = p.network(seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    for _ in range(p.shapes.unroll - window):
        opt.zero_grad()
        F.cross_entropy(net(images.detach()), p.labels).backward()
        opt.step()
    with higher.innerloop_ctx(net, opt, copy_initial_weights=True) as (fnet, diffopt):
        for _ in range(window):
            diffopt.step(F.cross_entropy(fnet(images), p.labels))
        loss = F.cross_entropy(fnet(p.real_x), p.real_y)
    return torch.autograd.grad(loss, images)[0]


def _ddbench(p: Problem, window: int, seed: int, mode: str, chunk: int | None, graphs: StepGraphs | None):
    # One network and optimizer per problem, re-initialised each call (as the outer loop of a
    # method does): CUDA graphs are captured once for them and replayed on every later call.
    if p.functional is None:
        p.functional = FunctionalModel(p.network(seed))
    else:
        p.functional.module.load_state_dict(p.network(seed).state_dict())
    model = p.functional
    images = p.images.detach().requires_grad_()
    result = meta_gradient(model, model.parameters(), p.optimizer, Synthetic(images, p.labels, LR),
                           p.schedule(p.shapes.unroll), window, RealBatchLoss(p.real_x, p.real_y, chunk),
                           UnrollOptions(mode=mode, steps_factory=graphs.factory if graphs is not None else None,
                                         offload_snapshots=mode == "recompute" and p.device.type == "cuda"))
    return result.images


def step_trajectories(p: Problem, window: int, count: int, mode: str, chunk: int | None,
                      graphs: StepGraphs | None, seed: int = 0) -> torch.Tensor:
    """ddbench with ``count`` trajectories (inits ``seed .. seed + count - 1``) in one batched
    network; each trajectory has its own copy of the real batch. Returns the mean meta-gradient."""
    if count not in p.batched:
        p.batched[count] = FunctionalModel(BatchedConvNet(p.network(seed), count).to(p.device, p.dtype))
        p.real[count] = (p.real_x.repeat(count, 1, 1, 1), p.real_y.repeat(count))
    model = p.batched[count]
    model.module.load_blocks([p.network(seed + k) for k in range(count)])
    images = p.images.detach().requires_grad_()
    n = p.shapes.unroll
    result = meta_gradient(model, model.parameters(), p.optimizer, Synthetic(images, p.labels, LR),
                           stack_schedules([p.schedule(n)] * count), window, RealBatchLoss(*p.real[count], chunk),
                           UnrollOptions(mode=mode, trajectories=Trajectories((n,) * count, (window,) * count),
                                         steps_factory=graphs.factory if graphs is not None else None,
                                         offload_snapshots=mode == "recompute" and p.device.type == "cuda"))
    return result.images


def trajectory_variants(device: torch.device, shapes: Shapes) -> dict:
    out = {"full": lambda p, m, k: step_trajectories(p, m, k, "full", None, None),
           "recompute": lambda p, m, k: step_trajectories(p, m, k, "recompute", shapes.real_chunk, None)}
    if device.type == "cuda":
        graphs = StepGraphs()
        out["recompute+graphs"] = lambda p, m, k: step_trajectories(p, m, k, "recompute", shapes.real_chunk, graphs)
    return out


def _check_problem(shapes: Shapes, device: torch.device, window: int) -> tuple[Shapes, Problem]:
    """The gradient checks' small float64 problem: a 6-step unroll of the benchmark's shapes."""
    s = shapes.with_(unroll=6, windows=(window,), real_batch=min(shapes.real_batch, 256), real_chunk=100,
                     width=min(shapes.width, 16))
    return s, Problem(s, device, torch.float64, seed=1)


def trajectory_check(device: torch.device, shapes: Shapes, count: int = 2) -> float:
    """Relative error of the batched meta-gradient of ``count`` trajectories against the mean of
    the ``count`` single-trajectory ones (float64, short unroll, recompute mode)."""
    s, p = _check_problem(shapes, device, window=3)
    singles = [_ddbench(p, 3, 3 + k, "recompute", s.real_chunk, None) for k in range(count)]
    want = torch.stack(singles).mean(0)
    got = step_trajectories(p, 3, count, "recompute", s.real_chunk, None, seed=3)
    return float((got - want).norm() / want.norm())


def step_floor(p: Problem, window: int, seed: int = 0) -> None:
    net = p.network(seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    for _ in range(p.shapes.unroll):
        opt.zero_grad()
        F.cross_entropy(net(p.images), p.labels).backward()
        opt.step()
    F.cross_entropy(net(p.real_x), p.real_y).backward()


def variants(device: torch.device, shapes: Shapes) -> dict:
    out = {
        "higher": step_higher,
        "full": lambda p, m, seed=0: _ddbench(p, m, seed, "full", None, None),
        "recompute": lambda p, m, seed=0: _ddbench(p, m, seed, "recompute", shapes.real_chunk, None),
    }
    if device.type == "cuda":
        graphs = StepGraphs()  # captured on the first call, replayed after (the problem keeps its network)
        out["recompute+graphs"] = lambda p, m, seed=0: _ddbench(p, m, seed, "recompute", shapes.real_chunk, graphs)
    out["floor"] = step_floor
    return out


# --------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, steps: int, device: torch.device) -> dict:
    """Median and min seconds over ``steps`` calls after one warm-up call, and the peak memory.

    CUDA: the peak of the caching allocator's *reserved* memory over the timed calls, emptied
    of other variants' blocks first: it includes the private pools of captured CUDA graphs,
    which ``max_memory_allocated`` does not see (``peak_allocated_bytes`` is reported too).
    CPU: one more call under :class:`TensorMemoryMeter` (exact peak of live tensor bytes; not
    timed, it slows ops down).
    """
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with PeakMemory(device) as meter:
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    stats = {"median_s": statistics.median(times), "min_s": min(times)}
    if device.type == "cuda":
        stats["peak_bytes"] = int(torch.cuda.max_memory_reserved(device))
        stats["peak_allocated_bytes"] = int(meter.peak_bytes)
    else:
        with TensorMemoryMeter() as tensors:
            fn()
        stats["peak_bytes"] = int(tensors.peak_bytes)
    return stats


def gradient_check(device: torch.device, names: list[str], shapes: Shapes) -> dict[str, float]:
    """Relative error of every variant's meta-gradient against the baseline's (float64, short unroll).

    The whole unroll is differentiated (M = N): the official recipe's prefix runs
    ``torch.optim.Adam``, whose eps sits inside the bias correction, while ``higher``'s window
    (and ddbench here) put it outside; with a prefix the two recipes differ by that convention.
    """
    s, p = _check_problem(shapes, device, window=6)
    table = variants(device, s)
    want = table["higher"](p, 6, seed=3)
    errors = {}
    for name in names:
        if name in ("higher", "floor"):
            continue
        got = table[name](p, 6, seed=3)
        errors[name] = float((got - want).norm() / want.norm())
    return errors


# Where an outer step's time goes: cumulative seconds in these functions (cProfile), by name.
PROFILE_PARTS = {
    "inner steps without graph (prefix, recompute forward)": ("steps.py", "forward"),
    "reverse steps (rebuilt step + VJP)": ("steps.py", "reverse"),
    "  of which: low-rank Hessian builds (HVPs, QR, eigh)": ("lowrank.py", "_build"),
    "  of which: drift checks": ("lowrank.py", "_measure_drift"),
    "full-mode window (graph + backward)": ("unroll.py", "_window_full"),
    "outer loss on the real batch": ("unroll.py", "outer_loss_and_grad"),
    "probe trajectories (AT-BPTT)": ("unroll.py", "plain_trajectory"),
    "outer update (clip, Adam)": ("unrolled.py", "apply"),
}


def profile_step(fn, steps: int) -> dict[str, float]:
    """Seconds per outer step spent in each of :data:`PROFILE_PARTS` (cProfile, after a warm-up)."""
    import cProfile
    import pstats

    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        fn()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(tt for (_, _, tt, _, _) in stats.values())
    out = {"total": total / steps}
    for label, (file, func) in PROFILE_PARTS.items():
        cum = [ct for (path, _, name), (_, _, _, ct, _) in stats.items() if name == func and path.endswith(file)]
        out[label] = max(cum, default=0.0) / steps
    return out


def method_steps(specs: list[str], shapes: Shapes, device: torch.device, window: int,
                 profile: bool = False) -> list[dict]:
    """Whole outer steps of registered methods at the benchmark's shapes (random data).

    ``specs`` are ``name``, ``name:mode`` (engine mode ``full`` or ``recompute``, default
    recompute) or ``at_bptt:recompute:lowrank`` (AT-BPTT with its low-rank Hessian ablation on;
    rank 10, rebuilt per window). AT-BPTT runs with a 10-step epoch (CIFAR-10's 50000 / 5000).
    """
    from harness.data import DatasetSplits
    from harness.method import DistillTask
    from harness.models import ModelConfig
    from harness.method.registry import create_method

    p = Problem(shapes, device, torch.float32)
    data = DatasetSplits("random", p.real_x, p.real_y, p.real_x[:10], p.real_y[:10], shapes.classes,
                         tuple(map(str, range(shapes.classes))), {})
    task = DistillTask(data=data, ipc=shapes.ipc, seed=0, model=ModelConfig(width=shapes.width, depth=shapes.depth),
                       outer_steps=shapes.steps + 1, device=device)
    rows = []
    for spec in specs:
        name, mode, option = (spec.split(":") + ["", ""])[:3]
        mode = mode or "recompute"
        cfg = {"unroll": shapes.unroll, "window": window, "real_batch": shapes.real_batch,
               "inner": {"name": "adam", "lr": LR}, "init": "gaussian",
               "engine": {"mode": mode, "real_chunk": shapes.real_chunk if mode == "recompute" else None}}
        if name == "at_bptt":
            # d = W / 6, kept so that W + d fits in T (AT-BPTT's middle stage trains W + d steps):
            # no adaptive window at all when the window spans the whole unroll (M = T).
            delta = min(max(1, window // 6), shapes.unroll - window)
            cfg.update(window_delta=delta, adaptive_window=delta > 0, steps_per_epoch=10,
                       low_rank_hessian=option == "lowrank")
        method = create_method(name, **cfg)
        method.setup(task)
        counter = iter(range(10**6))
        stats = measure(lambda: method.step(next(counter)), shapes.steps, device)
        row = {"method": name, "mode": mode, "option": option, "window": window, **stats}
        if profile:
            row["profile"] = profile_step(lambda: method.step(next(counter)), shapes.steps)
        rows.append(row)
        print(f"  M={window:4d} {spec:26s} {stats['median_s']:.4f} s  {stats['peak_bytes'] / 2**20:9.1f} MiB",
              flush=True)
    return rows


class TimeBudget:
    """Skips the measurements that would end past ``seconds`` from now (None: no limit).

    A measurement's cost is predicted from the last one of the same variant: its median
    seconds per call (per trajectory for the K table) times the calls it makes. A variant not
    measured yet is started while any time is left: the caller's own timeout is the hard limit.
    """

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds
        self.per_call: dict[str, float] = {}

    def allows(self, key: str, calls: int, scale: float = 1.0) -> bool:
        if self.end is None:
            return True
        left = self.end - time.monotonic()
        known = self.per_call.get(key)
        return left > 0 and (known is None or known * scale * calls <= left)

    def record(self, key: str, stats: dict, scale: float = 1.0) -> None:
        if "median_s" in stats:
            self.per_call[key] = stats["median_s"] / scale


def attempt(fn, steps: int, device: torch.device) -> dict:
    """:func:`measure`, or ``{"error": ...}`` when the device runs out of memory (the M = 200
    window of the full-graph variants does not fit on an 80 GB card). On CUDA any other error is
    recorded too, so that one unattended run reports every setting it could measure; on a CPU it
    is raised."""
    try:
        return measure(fn, steps, device)
    except torch.cuda.OutOfMemoryError:
        error = "out of memory"
    except Exception as err:  # noqa: BLE001 - recorded, see above
        if device.type != "cuda":
            raise
        error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
    if device.type == "cuda":  # outside the handler, where the traceback's tensors are freed
        torch.cuda.empty_cache()
    return {"error": error}


def _cell(r: dict, key: str, fmt: str, scale: float = 1.0) -> str:
    """A table cell: the formatted value; for a row not measured, why (in its time column) or "-"."""
    if key in r:
        return fmt.format(r[key] / scale)
    if key == "median_s" and ("skipped" in r or "error" in r):
        return "skipped (time)" if "skipped" in r else r["error"]
    return "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the tiny shape on the CPU (CI), under a minute")
    ap.add_argument("--shape", default=None, help=f"named shape: {', '.join(SHAPES)} (default cifar10; tiny with --tiny)")
    ap.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    ap.add_argument("--windows", default=None, help="comma-separated M values (default: the shape's, 60,120,200)")
    ap.add_argument("--unroll", type=int, default=None, help="N (default: the shape's, 200)")
    ap.add_argument("--steps", type=int, default=None, help="timed outer steps per variant (default: the shape's, 5)")
    ap.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    ap.add_argument("--methods", default="", help="also time whole outer steps of registered methods, "
                    "e.g. rat_bptt:full,rat_bptt:recompute,at_bptt:recompute (the first is the reference)")
    ap.add_argument("--profile", action="store_true", help="with --methods: where each method's step time goes")
    ap.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                    help="compare the meta-gradients with the baseline's first (default on)")
    ap.add_argument("--trajectories", default="1,2,4,8",
                    help="comma-separated K values for the batched-trajectory table ('' to skip)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip the measurements that would end later than this many seconds after the checks "
                         "(in order: the first window's rows, its K table, the other windows' rows, their K tables)")
    ap.add_argument("--json", default=None, help="write the results here (rewritten after every measurement)")
    args = ap.parse_args(argv)

    name = args.shape or ("tiny" if args.tiny else "cifar10")
    if name not in SHAPES:
        print(f"unroll.py: error: --shape: unknown {name!r} (known: {', '.join(SHAPES)})", file=sys.stderr)
        return 2
    shapes = SHAPES[name]  # frozen: the table's shapes are never modified
    if args.windows:
        shapes = shapes.with_(windows=tuple(int(w) for w in args.windows.split(",")))
    if args.unroll:
        shapes = shapes.with_(unroll=args.unroll)
    if args.steps:
        shapes = shapes.with_(steps=args.steps)
    if shapes.threads:
        torch.set_num_threads(shapes.threads)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # Plain fp32 for every variant: TF32 would change the numbers, and the baseline has it off.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    table = variants(device, shapes)
    names = args.variants.split(",") if args.variants else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"unroll.py: error: --variants: unknown {unknown[0]!r} (known on {device.type}: {', '.join(table)})",
              file=sys.stderr)
        return 2
    try:
        counts = [int(k) for k in args.trajectories.split(",") if k]
    except ValueError:
        counts = [0]
    if any(k < 1 for k in counts):
        print(f"unroll.py: error: --trajectories: K values must be integers >= 1, got {args.trajectories!r}",
              file=sys.stderr)
        return 2
    if any(w > shapes.unroll or w < 1 for w in shapes.windows):
        print(f"unroll.py: error: --windows: every M must be in [1, {shapes.unroll}]", file=sys.stderr)
        return 2

    hw = hardware_info(device)
    memory_kind = "cuda_max_reserved" if device.type == "cuda" else TensorMemoryMeter.kind
    print(f"device: {hw['device_name']} | torch {hw['torch']} | shape {name}: {asdict(shapes)}", flush=True)
    checks: dict[str, float] = {}
    rows, trajectory_rows, method_rows = [], [], []

    def write() -> None:
        if not args.json:
            return
        payload = {"schema_version": 1, "kind": "ddbench.bench.unroll", "hardware": hw, "shape_name": name,
                   "shapes": asdict(shapes), "memory_kind": memory_kind, "budget_s": args.budget_s,
                   "gradient_check": checks, "rows": rows, "trajectories": trajectory_rows, "methods": method_rows}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(path)  # a reader (or a kill) never sees half a file

    checks.update(gradient_check(device, names, shapes) if args.check else {})
    for variant, err in checks.items():
        print(f"gradient check {variant:18s} relative error vs higher: {err:.2e}", flush=True)
    if args.check and counts:
        checks["trajectories_vs_mean_of_singles"] = trajectory_check(device, shapes)
        print(f"gradient check K=2 trajectories vs the mean of 2 single ones: "
              f"{checks['trajectories_vs_mean_of_singles']:.2e}", flush=True)
    write()

    problem = Problem(shapes, device, torch.float32)
    batched = trajectory_variants(device, shapes)
    budget = TimeBudget(args.budget_s)
    calls = 1 + shapes.steps + (device.type == "cpu")  # warm-up, timed, the CPU's memory call
    # In order of interest under a time budget: the paper's window and its K table, then the longer windows.
    first, rest = shapes.windows[:1], shapes.windows[1:]
    row_jobs = lambda ws: [("rows", w, n, 1) for w in ws for n in names]  # noqa: E731
    k_jobs = lambda ws: [("trajectories", w, n, k) for w in ws for k in counts for n in names if n in batched]  # noqa: E731
    jobs = row_jobs(first) + k_jobs(first) + row_jobs(rest) + k_jobs(rest)
    base: dict[int, dict] = {}
    for kind, window, variant, count in jobs:
        key = f"{kind}:{variant}"
        if kind == "rows":
            if not budget.allows(key, calls):
                rows.append({"variant": variant, "window": window, "skipped": "time budget"})
                print(f"  M={window:4d} {variant:18s} skipped: time budget", flush=True)
                continue
            stats = attempt(lambda: table[variant](problem, window), shapes.steps, device)
            budget.record(key, stats)
            if variant == "higher" and "median_s" in stats:
                base[window] = stats
            row = {"variant": variant, "window": window, **stats}
            if window in base and "median_s" in stats:
                row["speedup_vs_higher"] = base[window]["median_s"] / stats["median_s"]
                row["memory_fraction_of_higher"] = stats["peak_bytes"] / max(base[window]["peak_bytes"], 1)
            rows.append(row)
            print(f"  M={window:4d} {variant:18s} {_cell(row, 'median_s', '{:.4f} s')}  "
                  f"{_cell(row, 'peak_bytes', '{:9.1f} MiB', 2**20)}", flush=True)
        else:
            if not budget.allows(key, calls, count):
                trajectory_rows.append({"variant": variant, "window": window, "trajectories": count,
                                        "skipped": "time budget"})
                print(f"  M={window:4d} {variant:18s} K={count:2d} skipped: time budget", flush=True)
                continue
            stats = attempt(lambda: batched[variant](problem, window, count), shapes.steps, device)
            budget.record(key, stats, count)
            row = {"variant": variant, "window": window, "trajectories": count, **stats}
            if "median_s" in stats:
                row["meta_gradients_per_s"] = count / stats["median_s"]
            trajectory_rows.append(row)
            print(f"  M={window:4d} {variant:18s} K={count:2d} {_cell(row, 'median_s', '{:.4f} s')}  "
                  f"{_cell(row, 'meta_gradients_per_s', '{:8.2f} meta-grads/s')}  "
                  f"{_cell(row, 'peak_bytes', '{:9.1f} MiB', 2**20)}", flush=True)
        write()
    for window in shapes.windows[:1] if args.methods else ():
        method_rows = method_steps([m for m in args.methods.split(",") if m], shapes, device, window, args.profile)
    write()

    headers = ["M", "variant", "s / outer step", "peak memory (MiB)", "speedup vs higher", "memory vs higher"]
    body = [[r["window"], r["variant"], _cell(r, "median_s", "{:.4f}"), _cell(r, "peak_bytes", "{:.1f}", 2**20),
             _cell(r, "speedup_vs_higher", "{:.2f}x"), _cell(r, "memory_fraction_of_higher", "{:.3f}")] for r in rows]
    print(f"\n{hw['device_name']} ({device.type}), N = {shapes.unroll}, peak memory = {memory_kind}")
    print(tabulate(body, headers=headers, tablefmt="github", disable_numparse=True))
    if trajectory_rows:
        print("\nK trajectories per outer step, batched (the meta-gradient is their mean):")
        print(tabulate([[r["window"], r["variant"], r["trajectories"], _cell(r, "median_s", "{:.4f}"),
                         _cell(r, "meta_gradients_per_s", "{:.2f}"), _cell(r, "peak_bytes", "{:.1f}", 2**20)]
                        for r in trajectory_rows],
                       headers=["M", "variant", "K", "s / outer step", "meta-gradients / s", "peak memory (MiB)"],
                       tablefmt="github", disable_numparse=True))
    if method_rows:
        print("\nwhole outer steps of registered methods:")
        ref = method_rows[0]
        print(tabulate([[r["method"], ":".join(filter(None, (r["mode"], r["option"]))), r["window"],
                         f"{r['median_s']:.4f}", f"{r['peak_bytes'] / 2**20:.1f}",
                         f"{ref['median_s'] / r['median_s']:.2f}x", f"{r['peak_bytes'] / max(ref['peak_bytes'], 1):.3f}"]
                        for r in method_rows],
                       headers=["method", "engine", "M", "s / outer step", "peak memory (MiB)",
                                f"speedup vs {ref['method']}:{ref['mode']}", "memory vs it"],
                       tablefmt="github", disable_numparse=True))
        profiled = [r for r in method_rows if "profile" in r]
        if profiled:
            print("\nwhere an outer step's time goes (cProfile, seconds per step):")
            parts = ["total", *PROFILE_PARTS]
            print(tabulate([[part, *(f"{r['profile'][part]:.4f}" for r in profiled)] for part in parts],
                           headers=["", *(f"{r['method']}:{r['option'] or r['mode']}" for r in profiled)],
                           tablefmt="github", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
