"""GPU reproduction check, one command: at most 8 minutes on one H100/H200, one JSON and one markdown table.

Parts, in this order, each with its own time budget (:data:`GPU`; every process still running
at ``total_s`` = 480 s is stopped, SIGTERM first, so a ddbench cell checkpoints):

* **prepare** (<= 40 s): the data found inside the checkout (``data/cifar10-jpeg``, extracted
  from ``data/cifar10-jpeg.tar.gz`` or ``../shared/data/cifar10-jpeg.tar.gz`` when missing),
  decoded once into the run's own cache; the versions of torch, CUDA, torchopt, higher.
* **(c) distillation** (300 s, then start-up and evaluation, about 60-80 s on a GPU):
  ``ddbench run suites/gpu-repro-cifar10-jpeg.toml``: rat_bptt on cifar10-jpeg, IPC 10, the
  paper's shapes (ConvNet-3 width 128, T = 200, M = 60, real batch 5000, inner/outer Adam 1e-3,
  ZCA on the raw pixels) for a fixed 5 GPU-minutes (``budget.minutes``), evaluated with the
  ``ratbptt`` protocol (8 networks, 300/600/1000/3000 steps, budget selected on validation).
  It comes first: the accuracy is the number this check exists for.
* **(b) pytest -m cuda** and the **random_real** cell run beside rat_bptt's evaluation: they
  start when its distillation has ended (its checkpoint appears), so nothing shares the GPU with
  a timed part (no evaluation is timed). pytest's pass/fail counts come from its JUnit XML.
* **(a) unroll**, alone on the device, in what is left (about 60 s of measurements, 25 s kept
  for its start-up and float64 gradient checks): ``benchmarks/unroll.py`` at the CIFAR-10
  shapes, ``higher`` vs ddbench ``full`` vs ``recompute`` vs ``recompute+graphs`` (CUDA graphs),
  M = 60/120/200, K = 1/4/8 trajectories, one timed outer step after a warm-up per setting, in
  order of interest (M = 60, its K table, M = 120/200, their K tables); what does not fit in the
  time is recorded as skipped, what does not fit in device memory as such.

The table puts the reference numbers beside the measured ones: the official recipe (a torch
Adam prefix and a ``higher`` window) reached 53.3% +- 0.1 after 7 GPU-minutes on one H100
(random real 33.1%), at 1.2-1.5 s per outer step and 26.8 GiB at M = 60 (measured elsewhere).
Five minutes give fewer outer steps than seven: the table shows the steps made beside the
reference's minutes. A part stopped at its limit is reported as such; a rat_bptt cell stopped in
its evaluation resumes there from its checkpoint when ``ddbench run`` is given the same suite and
``--out`` (and ``DDBENCH_CACHE``: the run folder's ``cache``).

``--tiny`` runs the same parts on a CPU in about a minute (CI, ``tests/test_gpu_repro.py``): a
generated 16x16 set in cifar10-jpeg's layout (10 classes, JPEG), tiny shapes (``--set``
overrides of the same suite), ``unroll.py --tiny``; its numbers say nothing about CIFAR-10.

Prepared run on a GPU machine that has only a copy of the checkout and no package registry (here:
one NVIDIA H200, torch 2.11, torchvision 0.26, Python 3.12, no ``../shared``, no torchopt, optree,
higher or pydantic). Once, in the repository root of the checkout that is copied (``data/`` and
``.device/`` are git-ignored)::

    mkdir -p data .device/wheels && cp ../shared/data/cifar10-jpeg.tar.gz data/
    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .device/wheels torchopt==0.7.3 optree==0.20.0 higher==0.2.1 \\
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \\
        typing-extensions==4.16.0 graphviz==0.21

then copy the checkout with those two ignored paths (``.device/wheels``, ``data/cifar10-jpeg.tar.gz``:
23 MB) to the GPU machine and run there, in its root, within a 600 s limit (``$OUT``: the folder
whose files come back)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/wheels/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_repro.py --out /tmp/gpu-repro --export "$OUT"

``--export`` copies ``gpu_repro.json``, ``gpu_repro.md`` and ``artifacts.tar.gz`` (the logs, the
unroll JSON, the JUnit XML, the run records and the distilled set) there. Exit status 0 when every
part ended by itself, 1 when one failed or was stopped at its limit, 2 on bad arguments, missing
data or no CUDA device (without ``--tiny``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "gpu-repro-cifar10-jpeg.toml"
SUITE_NAME = "gpu-repro-cifar10-jpeg"
DATASET = "cifar10-jpeg"
ARCHIVE = "cifar10-jpeg.tar.gz"

REFERENCE = {
    "source": "the official RaT-BPTT recipe (torch Adam prefix + higher window), one H100, measured elsewhere",
    "gpu_minutes": 7, "accuracy_mean": 53.3, "accuracy_std": 0.1, "random_real_accuracy": 33.1,
    "seconds_per_outer_step": [1.2, 1.5], "peak_memory_gib": 26.8, "window": 60,
}


@dataclass(frozen=True)
class Plan:
    """Seconds per part. ``total_s`` is enforced: every process still running then is stopped.
    The distillation part comes first (its minutes are the suite's); the unroll benchmark gets
    what is left (at most ``unroll_max_s``), less ``unroll_overhead_s`` for its start-up and
    gradient checks, and is not started with less than ``unroll_min_s`` of measurements."""

    total_s: float
    prepare_s: float
    distill_s: float  # the suite's budget.minutes, in seconds
    unroll_overhead_s: float
    unroll_min_s: float
    unroll_max_s: float
    unroll_args: tuple[str, ...]


GPU = Plan(total_s=480, prepare_s=40, distill_s=300, unroll_overhead_s=25, unroll_min_s=10, unroll_max_s=480,
           unroll_args=("--windows", "60,120,200", "--trajectories", "1,4,8", "--steps", "1"))
TINY = Plan(total_s=240, prepare_s=60, distill_s=3, unroll_overhead_s=20, unroll_min_s=5, unroll_max_s=8,
            unroll_args=("--tiny", "--trajectories", "1,2", "--steps", "1"))

# The same suite at tiny shapes on a CPU (--set overrides: the file stays the one the GPU runs).
TINY_OVERRIDES = (
    'hardware.device="cpu"', "hardware.threads=1", "grid.ipcs=[2]", "model.width=8", "model.depth=2",
    "data.cifar10-jpeg.validation_size=20", f"budget.minutes={TINY.distill_s / 60}", "eval.models=2",
    "eval.budgets=[5, 10]", "method_defaults.real_batch=32", "methods.rat_bptt.unroll=6",
    "methods.rat_bptt.window=2",
)
ENGINES = {
    "suite": None,  # the suite's (recompute, real batch in chunks of 1000, CUDA graphs)
    "full": '{ mode = "full" }',
    "recompute": '{ mode = "recompute", real_chunk = 1000, cuda_graphs = false }',
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- processes


class Job:
    """One child process (its own process group), its output in ``log``, stopped at a deadline:
    SIGTERM first (a ddbench cell checkpoints), SIGKILL 10 s later."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict[str, str]):
        self.name, self.cmd, self.log, self.env = name, cmd, log, env
        self.proc: subprocess.Popen | None = None
        self.t0 = self.t1 = None
        self.stopped = False

    def start(self) -> "Job":
        self.t0 = time.monotonic()
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=self.env,
                                         start_new_session=True)
        return self

    def running(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None and self.t1 is None:
                self.t1 = time.monotonic()
            return False
        return True

    def wait(self, until: float) -> "Job":
        while self.running() and time.monotonic() < until:
            time.sleep(0.2)
        if self.running():
            self.stop()
        return self

    def stop(self) -> None:
        self.stopped = True
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        self.running()

    def summary(self, budget: str) -> dict:
        if self.proc is None:
            return {"status": "not run", "budget": budget}
        code = self.proc.returncode
        status = ("stopped at its time limit" if self.stopped else "ok" if code == 0 else f"failed (exit {code})")
        return {"status": status, "exit_code": code, "wall_s": round((self.t1 or time.monotonic()) - self.t0, 1),
                "budget": budget, "log": str(self.log.relative_to(self.log.parents[1]))}


# --------------------------------------------------------------------------- data


def cifar_root(data_dir: Path = REPO / "data", archives: tuple[Path, ...] | None = None) -> Path:
    """``data/cifar10-jpeg`` of the checkout, extracted from its archive (``data/`` first, then
    ``../shared/data/``) when missing; extracted whole or not at all."""
    root = data_dir / DATASET
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    archives = archives or (data_dir / ARCHIVE, REPO.parent / "shared" / "data" / ARCHIVE)
    for archive in archives:
        if archive.is_file():
            tmp = root.with_name(f".{DATASET}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            with tarfile.open(archive) as tar:
                try:
                    tar.extractall(tmp, filter="data")  # no links or paths out of tmp
                except TypeError:  # Python < 3.10.12 has no filters
                    tar.extractall(tmp)
            if not ((tmp / "train").is_dir() and (tmp / "test").is_dir()):
                shutil.rmtree(tmp, ignore_errors=True)
                raise FileNotFoundError(f"{archive} holds no train/ and test/ folders")
            tmp.replace(root)
            return root
    raise FileNotFoundError(f"{root} is missing and no {ARCHIVE} was found ({', '.join(map(str, archives))}): copy "
                            f"../shared/data/{ARCHIVE} to data/ (on the device machine: carry it)")


def tiny_root(out: Path) -> Path:
    """A generated set in cifar10-jpeg's layout: 10 classes of 16x16 JPEGs, 12 train and 4 test
    images each, every class its own colour and stripe (so that it can be learned), noise on top."""
    import numpy as np
    from PIL import Image

    root = out / "tiny-cifar10-jpeg"
    if root.is_dir():
        return root
    rng = np.random.default_rng(0)
    for c in range(10):
        colour = np.array([(37 * c) % 256, (91 * c + 60) % 256, (151 * c + 120) % 256], dtype=np.float64)
        for split, n in (("train", 12), ("test", 4)):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.tile(colour, (16, 16, 1))
                img[:, 2 * c % 16: 2 * c % 16 + 3] = 255 - colour
                img += rng.normal(0, 25, img.shape)
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def probe(root: str) -> int:
    """(child) Versions, the device, and the dataset decoded once into ``$DDBENCH_CACHE``."""
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1))
    from importlib.metadata import PackageNotFoundError, version

    for name in ("torchvision", "torchopt", "higher", "optree", "pydantic"):
        try:
            __import__(name)
            info[name] = version(name)
        except (ImportError, PackageNotFoundError) as err:  # reported in the table, not fatal here
            info[name] = f"missing ({err.__class__.__name__})"
    from harness.data import DataConfig, load_dataset

    t0 = time.perf_counter()
    data = load_dataset(DataConfig(name=DATASET, root=root, normalize=False, zca=False))
    info["dataset"] = {"root": root, "train_images": int(data.train_x.shape[0]), "test_images": int(data.test_x.shape[0]),
                       "decode_s": round(time.perf_counter() - t0, 1)}
    print("PROBE " + json.dumps(info), flush=True)
    return 0


def git_commit() -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": commit or None, "dirty": dirty if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


# --------------------------------------------------------------------------- results


def junit_counts(path: Path) -> dict | None:
    """Passed / failed / errors / skipped from pytest's JUnit XML, and the failing tests' ids."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
               if c.find("failure") is not None or c.find("error") is not None]
    return {"total": n["tests"], "passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"],
            "failed": n["failures"], "errors": n["errors"], "skipped": n["skipped"], "failing": failing,
            "seconds": round(sum(float(s.get("time", 0)) for s in suites), 1)}


def record_summary(runs: Path, method: str) -> dict | None:
    """What the table needs from a cell's record: accuracy (validation-selected budget), the
    test-selected maximum (the official code's way: an upper bound), steps, speed, memory."""
    paths = sorted(runs.rglob(f"{method}/seed*.json"))
    if not paths:
        return None
    rec = json.loads(paths[-1].read_text())
    ev, dist = rec.get("eval") or {}, rec.get("distill") or {}
    best = ev.get("test_selected")  # the record's own (best budget, and checkpoint where there are several)
    if best is None:  # a record without it: the best budget's mean test accuracy
        budgets = (ev.get("details") or {}).get("budgets") or []
        top = max(budgets, key=lambda b: b["test_accuracy"], default=None)
        best = top and {"accuracy_mean": top["test_accuracy"], "accuracy_std": None, "budget": top["steps"]}
    return {"record": str(paths[-1].relative_to(runs)), "status": rec.get("status"),
            "accuracy_mean": ev.get("accuracy_mean"), "accuracy_std": ev.get("accuracy_std"),
            "models": len(ev.get("accuracy_per_model") or []),
            "selected_budget": (ev.get("details") or {}).get("selected_budget"),
            "test_selected_accuracy": best["accuracy_mean"] if best else None,
            "test_selected_std": best.get("accuracy_std") if best else None,
            "test_selected_budget": best["budget"] if best else None,
            "outer_steps": dist.get("outer_steps"), "distill_s": dist.get("wall_clock_s"),
            "median_seconds_per_outer_step": dist.get("median_seconds_per_outer_step"),
            "peak_memory_bytes": dist.get("peak_memory_bytes"), "memory_kind": dist.get("memory_kind")}


def _pct(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def render_markdown(r: dict) -> str:
    env, ref = r.get("environment") or {}, REFERENCE
    tiny = r["mode"] == "tiny"
    what = ("TINY CPU smoke run: generated data, tiny shapes; its numbers say nothing about CIFAR-10" if tiny
            else "one GPU")
    lines = [f"# ddbench GPU reproduction check ({what})", "",
             f"{env.get('device_name', 'cpu')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, "
             f"torchopt {env.get('torchopt', '?')}, higher {env.get('higher', '?')}; commit "
             f"{(r['git'].get('commit') or 'unknown')[:12]}{' (dirty)' if r['git'].get('dirty') else ''}; "
             f"{r['started_at']}; {r['wall_s']:.0f} s of {r['plan']['total_s']:.0f} s.", "",
             "| part | budget | status | wall (s) |", "|---|---|---|---|"]
    for name, part in r["parts"].items():
        lines.append(f"| {name} | {part.get('budget', '-')} | {part['status']} | {part.get('wall_s', '-')} |")

    u = r.get("unroll") or {}
    lines += ["", "## (a) meta-gradient benchmark (benchmarks/unroll.py, one outer step each)", "",
              f"shape {u.get('shape_name', '-')}: {u.get('shapes', {})}; memory = {u.get('memory_kind', '-')}; "
              f"float64 gradient checks vs higher: "
              + (", ".join(f"{k} {v:.1e}" for k, v in (u.get("gradient_check") or {}).items()) or "-"), "",
              "| M | variant | s / outer step | peak memory (GiB) | speedup vs higher | memory vs higher |",
              "|---|---|---|---|---|---|"]
    for row in u.get("rows", []):
        lines.append(f"| {row['window']} | {row['variant']} | {_seconds(row)} | {_gib(row.get('peak_bytes'))} | "
                     + (f"{row['speedup_vs_higher']:.2f}x" if "speedup_vs_higher" in row else "-") + " | "
                     + (f"{row['memory_fraction_of_higher']:.3f}" if "memory_fraction_of_higher" in row else "-")
                     + " |")
    lines.append(f"| {ref['window']} | reference: official recipe (higher), one H100 | "
                 f"{ref['seconds_per_outer_step'][0]}-{ref['seconds_per_outer_step'][1]} | {ref['peak_memory_gib']} "
                 "| - | - |")
    if u.get("trajectories"):
        lines += ["", "| M | variant | K | s / outer step | meta-gradients / s | peak memory (GiB) |",
                  "|---|---|---|---|---|---|"]
        for row in u["trajectories"]:
            mps = f"{row['meta_gradients_per_s']:.2f}" if "meta_gradients_per_s" in row else "-"
            lines.append(f"| {row['window']} | {row['variant']} | {row['trajectories']} | {_seconds(row)} | {mps} | "
                         f"{_gib(row.get('peak_bytes'))} |")

    p = r.get("pytest_cuda")
    lines += ["", "## (b) pytest -m cuda", ""]
    if p:
        lines.append(f"{p['passed']} passed, {p['failed']} failed, {p['errors']} errors, {p['skipped']} skipped "
                     f"(of {p['total']} selected; {p['seconds']} s)" + (f"; failing: {', '.join(p['failing'])}"
                                                                        if p["failing"] else ""))
    else:
        lines.append("no result (see the part's status and log)")

    d = r.get("distillation") or {}
    rat, rnd = d.get("rat_bptt"), d.get("random_real")
    lines += ["", f"## (c) rat_bptt on {DATASET}, IPC {d.get('ipc', 10)}, the `ratbptt` protocol", "",
              "| run | minutes distilled | outer steps | s / outer step (median) | peak memory (GiB) | "
              "test accuracy % (budget selected on validation) | test-selected maximum % (as published: an upper "
              "bound) |", "|---|---|---|---|---|---|---|"]
    if rat:
        lines.append(f"| ddbench rat_bptt ({rat['status']}) | {_minutes(rat.get('distill_s'))} | "
                     f"{rat.get('outer_steps', '-')} | {_num(rat.get('median_seconds_per_outer_step'))} | "
                     f"{_gib(rat.get('peak_memory_bytes'))} ({rat.get('memory_kind')}) | "
                     f"{_pct(rat['accuracy_mean'], rat['accuracy_std'])} ({rat['models']} networks, "
                     f"{rat.get('selected_budget')} steps) | "
                     f"{_pct(rat.get('test_selected_accuracy'), rat.get('test_selected_std'))} "
                     f"({rat.get('test_selected_budget')} steps) |")
    else:
        lines.append("| ddbench rat_bptt | no record (see the part's status and log) | | | | | |")
    lines.append(f"| reference: official recipe, one H100 | {ref['gpu_minutes']} | - | "
                 f"{ref['seconds_per_outer_step'][0]}-{ref['seconds_per_outer_step'][1]} | {ref['peak_memory_gib']} | "
                 f"- | {ref['accuracy_mean']} ± {ref['accuracy_std']} |")
    if rnd:
        lines.append(f"| ddbench random_real ({rnd['status']}) | - | - | - | - | "
                     f"{_pct(rnd['accuracy_mean'], rnd['accuracy_std'])} ({rnd['models']} networks, "
                     f"{rnd.get('selected_budget')} steps) | "
                     f"{_pct(rnd.get('test_selected_accuracy'), rnd.get('test_selected_std'))} "
                     f"({rnd.get('test_selected_budget')} steps) |")
    else:
        lines.append("| ddbench random_real | no record (see the part's status and log) | | | | | |")
    lines.append(f"| reference: random real | - | - | - | - | - | {ref['random_real_accuracy']} |")
    lines += ["", f"Reference: {ref['source']}. Peak memory: ddbench's record counts the CUDA allocator's allocated "
              "bytes above the resident data; the benchmark's column (a) counts reserved bytes."]
    return "\n".join(lines) + "\n"


def _seconds(row: dict) -> str:
    if "median_s" in row:
        return f"{row['median_s']:.3f}"
    return "skipped (time)" if "skipped" in row else row.get("error", "-")


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _minutes(s) -> str:
    return "-" if s is None else f"{s / 60:.2f}"


# --------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=False, help="working folder: logs, records, the data cache, the results")
    ap.add_argument("--tiny", action="store_true", help="the same parts at tiny shapes on a CPU (CI, about a minute)")
    ap.add_argument("--parts", default="unroll,pytest,distill",
                    help="comma-separated subset of unroll, pytest, distill (default: all)")
    ap.add_argument("--engine", default="suite", choices=list(ENGINES),
                    help="rat_bptt's engine (default: the suite's: recompute, chunks of 1000, CUDA graphs)")
    ap.add_argument("--export", default=None, help="copy gpu_repro.json, gpu_repro.md and artifacts.tar.gz here")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # (child) versions and data
    args = ap.parse_args(argv)
    if args.probe is not None:
        return probe(args.probe)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in ("unroll", "pytest", "distill")]
    if not args.out or unknown:
        why = f"--parts: unknown {unknown[0]!r} (known: unroll, pytest, distill)" if unknown else "--out is required"
        print(f"gpu_repro.py: error: {why}", file=sys.stderr)
        return 2

    plan = TINY if args.tiny else GPU
    start = time.monotonic()
    deadline = start + plan.total_s
    out = Path(args.out).resolve()
    logs, runs = out / "logs", out / "runs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DDBENCH_CACHE": str(out / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    py = sys.executable
    result = {"schema_version": 1, "kind": "ddbench.gpu_repro", "mode": "tiny" if args.tiny else "gpu",
              "started_at": now_iso(), "plan": asdict(plan), "reference": REFERENCE, "git": git_commit(),
              "engine": args.engine, "parts": {}, "environment": None, "unroll": None, "pytest_cuda": None,
              "distillation": None}

    def say(text: str) -> None:
        print(f"[{time.monotonic() - start:6.1f} s] {text}", flush=True)

    # prepare: the data inside the checkout, the versions, one decode into the run's cache
    try:
        root = tiny_root(out) if args.tiny else cifar_root()
    except (OSError, tarfile.TarError) as err:
        print(f"gpu_repro.py: error: {err}", file=sys.stderr)
        return 2
    say(f"prepare: data at {root}")
    prep = Job("prepare", [py, str(Path(__file__).resolve()), "--probe", str(root)], logs / "prepare.log", env)
    prep.start().wait(min(deadline, time.monotonic() + plan.prepare_s))
    result["parts"]["prepare"] = prep.summary(f"{plan.prepare_s:.0f} s")
    probe_lines = [ln for ln in prep.log.read_text().splitlines() if ln.startswith("PROBE ")]
    result["environment"] = json.loads(probe_lines[-1][6:]) if probe_lines else None
    say(f"prepare: {result['parts']['prepare']['status']}: {result['environment']}")
    if result["environment"] is None or (not args.tiny and not result["environment"]["cuda_available"]):
        why = "the environment probe failed" if result["environment"] is None else "no CUDA device (use --tiny)"
        print(f"gpu_repro.py: error: {why}; see {prep.log}", file=sys.stderr)
        finish(result, out, start, args.export)
        return 2

    # (c) rat_bptt for the suite's minutes; (b) and random_real beside its evaluation
    ddbench = [py, "-m", "harness.run.cli", "run", str(SUITE), "--out", str(runs), "-q"]
    sets = [a for s in (TINY_OVERRIDES if args.tiny else ()) for a in ("--set", s)]
    sets += [f"--set", f"data.{DATASET}.root={json.dumps(str(root))}"] if args.tiny else []
    if ENGINES[args.engine]:
        sets += ["--set", f"method_defaults.engine={ENGINES[args.engine]}"]
    pytest = [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
              "--junitxml", str(out / "pytest-cuda.xml"), str(REPO / "tests")]
    beside = []
    if "pytest" in parts:
        beside.append(Job("pytest -m cuda", pytest, logs / "pytest-cuda.log", env))
    if "distill" in parts:
        beside.append(Job("random_real", [*ddbench, "--methods", "random_real", *sets], logs / "random_real.log", env))
        say(f"(c) rat_bptt: {plan.distill_s:.0f} s of distillation, then its evaluation")
        rat = Job("rat_bptt", [*ddbench, "--methods", "rat_bptt", *sets], logs / "rat_bptt.log", env).start()
        while rat.running() and time.monotonic() < deadline and not any(runs.rglob("rat_bptt/*.ckpt.pt")):
            time.sleep(0.5)
        say("(c) rat_bptt distilled; " + ", ".join(j.name for j in beside) + " start beside its evaluation")
        for job in beside:
            job.start()
        rat.wait(deadline)
        result["parts"]["distill rat_bptt"] = rat.summary(f"{plan.distill_s:.0f} s of distillation, then its "
                                                          f"evaluation")
    else:
        for job in beside:
            job.start()
    for job in beside:
        job.wait(deadline)
        label = "pytest -m cuda" if job.name.startswith("pytest") else "random_real"
        result["parts"][label] = job.summary("beside rat_bptt's evaluation")
    # (a) the unroll benchmark, alone on the device, in the time that is left
    if "unroll" in parts:
        measure_s = round(min(plan.unroll_max_s, deadline - time.monotonic() - plan.unroll_overhead_s))
        if measure_s < plan.unroll_min_s:
            result["parts"]["unroll"] = {"status": f"not run: {max(measure_s, 0)} s left for measurements",
                                         "budget": "what the distillation leaves"}
        else:
            cmd = [py, str(REPO / "benchmarks" / "unroll.py"), *plan.unroll_args, "--budget-s", str(measure_s),
                   "--json", str(out / "unroll.json")]
            say(f"(a) unroll benchmark: {measure_s} s of measurements")
            job = Job("unroll", cmd, logs / "unroll.log", env).start()
            job.wait(deadline - 5)
            result["parts"]["unroll"] = job.summary(f"{measure_s} s of measurements (what the distillation left)")
        if (out / "unroll.json").is_file():
            result["unroll"] = json.loads((out / "unroll.json").read_text())
        say(f"(a) {result['parts']['unroll']['status']}")
    result["pytest_cuda"] = junit_counts(out / "pytest-cuda.xml")
    if "distill" in parts:
        result["distillation"] = {"suite": str(SUITE.relative_to(REPO)), "overrides": list(sets[1::2]),
                                  "ipc": 2 if args.tiny else 10, "rat_bptt": record_summary(runs, "rat_bptt"),
                                  "random_real": record_summary(runs, "random_real")}
    say("done")
    finish(result, out, start, args.export)
    return 0 if all(p["status"] == "ok" for p in result["parts"].values()) else 1


def finish(result: dict, out: Path, start: float, export: str | None) -> None:
    """Write gpu_repro.json and gpu_repro.md (and copy them and the artifacts to ``export``)."""
    result["finished_at"] = now_iso()
    result["wall_s"] = round(time.monotonic() - start, 1)
    (out / "gpu_repro.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render_markdown(result)
    (out / "gpu_repro.md").write_text(table)
    print("\n" + table, flush=True)
    if export:
        dest = Path(export)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("gpu_repro.json", "gpu_repro.md"):
            shutil.copy2(out / name, dest / name)
        with tarfile.open(dest / "artifacts.tar.gz", "w:gz") as tar:
            for path in [out / "logs", out / "unroll.json", out / "pytest-cuda.xml", out / "runs"]:
                if path.exists():
                    tar.add(path, arcname=path.name, filter=lambda ti: None if ti.name.endswith((".lock", ".ckpt.pt"))
                            else ti)


if __name__ == "__main__":
    sys.exit(main())
