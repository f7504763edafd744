"""Expert trajectories for trajectory matching (MTT): networks trained on the real training split
with their parameters saved every few epochs, each expert trained once per (data, network,
recipe) and cached for every later cell and suite.

What ``buffer.py`` of GeorgeCazenavette/mtt-distillation does (its defaults): ``num_experts`` = 100
networks, each from a fresh init, trained for ``train_epochs`` = 50 epochs of SGD at
``lr_teacher`` = 0.01 with momentum ``mom`` = 0 and ``l2`` = 0, in minibatches of ``batch_train``
= 256 of a shuffled loader (a fresh permutation every epoch, the last batch smaller), every batch
augmented by DSA (``color_crop_cutout_flip_scale_rotate``, one op per batch, each image its own
parameters: ``DiffAugment`` with ``seed = -1``); ZCA where the data has it (``--zca``). The
parameters are saved before the first epoch and after every epoch (51 checkpoints), the list of
experts in files of ``save_interval`` = 10. ``--decay`` (off by default) multiplies the lr by 0.1
once, after epoch ``train_epochs // 2 + 1``, with a fresh optimizer.

Here (:class:`ExpertConfig`, those defaults): ``experts`` networks, expert i drawing all its
randomness (init, batch order, DSA draws) from ``step_seed(seed, i, Stream.EXPERT)``, its
parameters saved before training and after every ``save_every`` epochs (1: every epoch, as
buffer.py), its final test accuracy kept beside them (buffer.py prints it every epoch).

The cache: ``$DDBENCH_CACHE/experts/<dataset>-<digest>/expert-<i>.pt``, one file per expert,
written atomically (temp file + rename) as soon as that expert is trained. The digest keys the
data (description, sizes, labels, dtype), the network and the recipe, **not** the number of
experts: an interrupted build (an exception, a kill between experts) continues at the first
missing expert, and a config asking for more experts trains only the new ones; since expert i's
training depends on i alone, the result equals an uninterrupted build bit for bit. The folder is
locked while experts are read or trained, so cells running at once train each expert once; a
damaged or foreign file is trained again (with a warning). Files are read memory-mapped, so a
checkpoint costs only its own bytes (CIFAR-10 ConvNet-3: 51 x 1.3 MB per expert).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from harness.core.config import StrictModel
from harness.core.io import atomic_torch_save, cache_dir, cache_lock, cache_name, key_digest, remove_stale_temp_files
from harness.core.rng import Stream, step_seed
from harness.data import DatasetSplits
from harness.engine import InnerOptimizerConfig, Params, inner_loss, make_torch_optimizer
from harness.models import ModelConfig
from harness.models.dsa import DSAConfig, dsa_augment
from harness.train.networks import data_key, key_json, new_network, test_correct

log = logging.getLogger(__name__)
CACHE_VERSION = 1
Report = Callable[[str, int, int], None]  # (what, done, total): a long part's progress


class ExpertConfig(StrictModel):
    """How the experts are trained and saved (buffer.py's defaults)."""

    experts: int = Field(100, ge=1)  # num_experts
    epochs: int = Field(50, ge=1)  # train_epochs
    save_every: int = Field(1, ge=1)  # the checkpoint interval in epochs (buffer.py: every epoch)
    optimizer: InnerOptimizerConfig = InnerOptimizerConfig(name="sgd", lr=0.01, momentum=0.0)  # lr_teacher, mom, l2
    lr_decay: bool = False  # --decay: the lr x 0.1 once, after epoch epochs // 2 + 1
    batch_size: int = Field(256, ge=1)  # batch_train
    dsa: DSAConfig = DSAConfig()  # buffer.py's DSA (ops = [] trains without augmentation)
    seed: int = Field(0, ge=0)  # the experts' seeds: one set for every cell and suite

    @model_validator(mode="after")
    def _whole_intervals(self) -> "ExpertConfig":
        if self.epochs % self.save_every:
            raise ValueError(f"epochs ({self.epochs}) must be a multiple of save_every ({self.save_every}), so "
                             f"that the last epoch is saved")
        return self

    @property
    def checkpoint_epochs(self) -> list[int]:
        """The epoch of every saved checkpoint (0: the init)."""
        return list(range(0, self.epochs + 1, self.save_every))


def expert_key(data: DatasetSplits, model: ModelConfig, cfg: ExpertConfig) -> dict[str, Any]:
    """What identifies an expert besides its index: the data, the network, the recipe (not the count)."""
    return {"version": CACHE_VERSION, "what": "expert trajectories", **data_key(data),
            "model": model.model_dump(mode="json"), "recipe": cfg.model_dump(mode="json", exclude={"experts"})}


def experts_dir(data: DatasetSplits, model: ModelConfig, cfg: ExpertConfig) -> Path:
    return cache_dir("experts") / f"{data.name}-{key_digest(expert_key(data, model, cfg))}"


def expert_path(folder: Path, index: int) -> Path:
    return folder / f"expert-{index:04d}.pt"


def train_expert(index: int, data: DatasetSplits, model: ModelConfig, cfg: ExpertConfig, device, dtype,
                 on_epoch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train expert ``index`` as buffer.py does (see the module docstring); returns its payload:
    ``params`` (one ``[checkpoints, *shape]`` tensor per parameter, on the CPU), its final
    ``test_accuracy`` and the training's ``seconds``."""
    t0 = time.perf_counter()
    seed = step_seed(cfg.seed, index, Stream.EXPERT)
    net = new_network(model, data, seed, device, dtype)
    gen = torch.Generator().manual_seed(seed)
    optimizer = cfg.optimizer
    opt = make_torch_optimizer(optimizer, net.parameters())
    x, y = data.train_x, data.train_y
    saved = [_snapshot(net)]
    for epoch in range(cfg.epochs):
        net.train()
        for idx in torch.randperm(x.shape[0], generator=gen).to(x.device).split(cfg.batch_size):
            loss = inner_loss(net(dsa_augment(x[idx], cfg.dsa, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if (epoch + 1) % cfg.save_every == 0:
            saved.append(_snapshot(net))
        if cfg.lr_decay and epoch == cfg.epochs // 2 + 1:  # buffer.py: a fresh optimizer at lr x 0.1
            optimizer = optimizer.model_copy(update={"lr": optimizer.lr * 0.1})
            opt = make_torch_optimizer(optimizer, net.parameters())
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return {"params": [torch.stack(p) for p in zip(*saved)],
            "test_accuracy": float(test_correct(net, data, 2048).double().mean()),
            "seconds": time.perf_counter() - t0}


def _snapshot(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().to("cpu", copy=True) for p in net.parameters()]


@dataclass
class ExpertSet:
    """The experts of one (data, network, recipe): checkpoints read on demand (memory-mapped)."""

    folder: Path
    checkpoint_epochs: list[int]
    payloads: list[dict[str, Any]] = field(repr=False)
    trained: list[int]  # the experts this call trained (none: every one came from the cache)

    @property
    def count(self) -> int:
        return len(self.payloads)

    @property
    def test_accuracy(self) -> list[float]:
        return [float(p["test_accuracy"]) for p in self.payloads]

    @property
    def seconds(self) -> list[float]:
        """Each expert's training time when it was trained (here or by an earlier run)."""
        return [float(p["seconds"]) for p in self.payloads]

    def params(self, expert: int, epoch: int, device=None, dtype=None) -> Params:
        """Expert ``expert``'s parameters after ``epoch`` epochs (a saved epoch), copied to ``device``."""
        if epoch not in self.checkpoint_epochs:
            raise ValueError(f"epoch {epoch} is not saved (saved: every {self.checkpoint_epochs[1]} epochs up to "
                             f"{self.checkpoint_epochs[-1]})")
        c = self.checkpoint_epochs.index(epoch)
        return tuple(p[c].to(device, dtype, copy=True) for p in self.payloads[expert]["params"])

    def summary(self) -> dict[str, Any]:
        acc = torch.tensor(self.test_accuracy, dtype=torch.float64)
        return {"experts": self.count, "epochs": self.checkpoint_epochs[-1],
                "save_every": self.checkpoint_epochs[1] - self.checkpoint_epochs[0],
                "cache": cache_name(self.folder), "trained_by_this_run": len(self.trained),
                "training_seconds_this_run": sum(self.seconds[i] for i in self.trained),
                "training_seconds": sum(self.seconds), "test_accuracy_mean": float(acc.mean()),
                "test_accuracy_min": float(acc.min())}


def _read(path: Path, key: dict[str, Any], index: int, checkpoints: int) -> dict[str, Any] | None:
    """Expert ``index``'s payload from ``path`` (memory-mapped), or None when there is none; a
    damaged or foreign file is ignored with a warning (and trained again)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if payload["key"] != key_json(key) or payload["index"] != index:
            raise ValueError("its key differs")
        if any(p.shape[0] != checkpoints for p in payload["params"]):
            raise ValueError("its checkpoints differ")
        return payload
    except Exception as err:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        log.warning("ignoring the expert cache file %s (%s: %s); training again", path, type(err).__name__, err)
        return None


def expert_trajectories(data: DatasetSplits, model: ModelConfig, cfg: ExpertConfig, device, dtype,
                        report: Report | None = None) -> ExpertSet:
    """The ``cfg.experts`` experts of ``(data, model, cfg)``: each from the cache, else trained and
    cached at once (under the folder's lock). ``report(what, done, total)`` after every epoch
    trained. An expert that cannot be written is kept in memory (an unwritable cache costs time)."""
    key = expert_key(data, model, cfg)
    folder = experts_dir(data, model, cfg)
    checkpoints = len(cfg.checkpoint_epochs)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning("cannot create %s (%s)", folder, err)
    trained: list[int] = []
    with cache_lock(folder):
        paths = [expert_path(folder, i) for i in range(cfg.experts)]
        remove_stale_temp_files(*paths)  # a build killed while writing: we hold the lock
        payloads = [_read(p, key, i, checkpoints) for i, p in enumerate(paths)]
        missing = [i for i, p in enumerate(payloads) if p is None]
        what, total = f"MTT expert trajectories ({len(missing)} x {cfg.epochs} epochs)", len(missing) * cfg.epochs
        for i in missing:
            on_epoch = None if report is None else (lambda e, d=len(trained) * cfg.epochs: report(what, d + e, total))
            payload = {"key": key_json(key), "index": i, **train_expert(i, data, model, cfg, device, dtype, on_epoch)}
            trained.append(i)
            try:
                atomic_torch_save(payload, paths[i])
            except OSError as err:
                log.warning("cannot write %s (%s)", paths[i], err)
            payloads[i] = payload
            log.info("expert %d of %s: test accuracy %.4f after %d epochs, %.1f s", i, data.name,
                     payload["test_accuracy"], cfg.epochs, payload["seconds"])
    if trained:
        log.info("trained %d expert trajectories of %s", len(trained), data.name)
    return ExpertSet(folder, cfg.checkpoint_epochs, payloads, trained)
