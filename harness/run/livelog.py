"""Live logs of a run's distillation history, for watching it while it runs: TensorBoard event
files (``ddbench run ... --log tensorboard DIR``) and Weights & Biases in offline mode
(``--log wandb [DIR]``, where ``wandb`` is installed; ``wandb sync`` uploads later), as the
official RaT-BPTT code's users watch their runs. Each cell logs its per-step metrics under its
own name; on a Ray cluster DIR must be shared storage, like the results folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import DDBenchError
from harness.run.progress import CellProgress


@dataclass(frozen=True)
class LiveLog:
    """Which live log, where: parsed from ``--log``."""

    kind: str  # tensorboard | wandb
    folder: Path

    @classmethod
    def parse(cls, words: list[str]) -> "LiveLog":
        kind, rest = words[0], words[1:]
        if kind == "tensorboard" and len(rest) == 1:
            return cls(kind, Path(rest[0]))
        if kind == "wandb" and len(rest) <= 1:
            return cls(kind, Path(rest[0] if rest else "wandb"))
        raise DDBenchError("expected --log tensorboard DIR or --log wandb [DIR]", field="--log")

    def check(self) -> None:
        """Refuse at once (one line) what could not log: a missing package."""
        try:
            if self.kind == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            else:
                import wandb  # noqa: F401
        except ImportError:
            package = "tensorboard" if self.kind == "tensorboard" else "wandb"
            raise DDBenchError(f"--log {self.kind} needs the {package} package: pip install {package}",
                               field="--log") from None

    def sink(self, name: str, config: dict) -> "CellProgress":
        return _TensorBoard(self.folder, name) if self.kind == "tensorboard" else _WandB(self.folder, name, config)


def _name(desc: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", desc)


class _TensorBoard(CellProgress):
    def __init__(self, folder: Path, name: str):
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(folder) / _name(name)))

    def step(self, step, elapsed, metrics):
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"distill/{key}", value, step)
        self.writer.add_scalar("distill/seconds", elapsed, step)

    def end(self):
        self.writer.close()


class _WandB(CellProgress):
    def __init__(self, folder: Path, name: str, config: dict):
        super().__init__()
        import wandb

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(folder), project="ddbench", name=_name(name), config=config,
                              reinit=True)

    def step(self, step, elapsed, metrics):
        self.run.log({**{k: v for k, v in metrics.items() if isinstance(v, (int, float))}, "seconds": elapsed},
                     step=step)

    def end(self):
        self.run.finish()


class Tee(CellProgress):
    """Several progress sinks as one (the bar and a live log)."""

    def __init__(self, sinks: list[CellProgress]):
        super().__init__()
        self.sinks = list(sinks)

    def begin(self, desc, total, initial, limit_s):
        for s in self.sinks:
            s.begin(desc, total, initial, limit_s)

    def step(self, step, elapsed, metrics):
        for s in self.sinks:
            s.step(step, elapsed, metrics)

    def inner(self, done, total, phase):
        for s in self.sinks:
            s.inner(done, total, phase)

    def phase(self, text):
        for s in self.sinks:
            s.phase(text)

    def end(self):
        for s in self.sinks:
            s.end()
