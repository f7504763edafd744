"""Networks trained on the whole real training split, once per (dataset, network, recipe) and
kept in the cache dir for every later suite: DD-Ranking's full-data model (the "real-hard"
accuracy of its HLR), the teacher whose soft labels a soft random baseline and a selection
method's ``labels = "teacher"`` get, and the embedding networks of the herding and k-center
coresets (the DC paper's "models trained on the whole dataset"). One training serves all of
them: the same data, network and recipe hit the same cache file.

What DD-Ranking does (NUS-HPC-AI-Lab/DD-Ranking, ``ddranking`` 0.2.0: ``metrics/hard_label.py``
``_compute_hard_label_metrics(mode='real')`` and ``utils/train_and_eval.py``
``REAL_DATA_TRAINING_CONFIG``): for CIFAR-10/100 with ConvNet-3 (and -BN) SGD at lr 0.01,
momentum 0.9, weight decay 5e-4, ``StepLR(step_size=100, gamma=0.1)`` stepped once per epoch,
``num_epochs`` 200; minibatches of ``real_batch_size`` (256 in all its configs) from a
``RandomSampler`` (a fresh permutation every epoch, the last batch smaller); plain cross entropy;
no augmentation (``aug_func=None`` for real data; the dataset's transform is ToTensor + Normalize
only); the test accuracy every ``test_interval`` epochs (10; 20 in the soft-label class) and the
**maximum over those test checkpoints** kept. With ``eval_full_data: true`` (every config of its
``eval`` branch) a fresh network is trained in each of the ``num_eval`` = 5 rounds, and round i's
HLR uses round i's network, so the mean HLR uses the mean of 5 networks. Without it the number
comes from ``REAL_DATA_ACC_CACHE`` (ImageNet-1K and Tiny ImageNet ResNet-18-BN only). Teachers
are checkpoints the user supplies (``teacher_dir/{dataset}/{model}/ckpt_best.pt``); the package
does not say how they were trained.

Here (:class:`FullDataConfig`, defaults as above): ``models`` networks (5), each from its own
seed, trained by that recipe on the training split (less the validation split when the suite
holds one out) and cached with their weights. Deviations, each for a reason:

* **epochs**: 200, the table's ``num_epochs``. DD-Ranking's loop actually runs the evaluator's own
  ``num_epochs`` (1000 in its eval configs) with the StepLR still stepping, so its epochs
  200-1000 run at lr 1e-4 and below (1e-11 at the end).
* **the accuracy**: the final networks' test accuracy. ddbench selects nothing on the test set;
  DD-Ranking's maximum over test checkpoints is recorded beside it (``test_selected_max``, "as
  DD-Ranking reports it: a test-selected upper bound"), from a test pass every ``test_every``
  epochs.
* **trained once**: cached by the data (preprocessing, sizes, labels), the network, the recipe and
  the dtype; DD-Ranking trains them again in every evaluation of every method.
* **the teacher** (:func:`teacher_model`): network 0 of these, the full-data model itself (same
  data, network and recipe): DD-Ranking's teacher is "a model trained on the real data" whose
  recipe it leaves to the user. Its soft labels (:func:`teacher_labels`) are
  ``softmax(logits / T)`` of the un-augmented images, one per image (DD-Ranking's
  ``soft_label_mode='S'``), probabilities that sum to one.
* **the embedding networks** of the herding and k-center coresets (``methods/herding.py``,
  ``methods/kcenter.py``): network ``seed % models`` of these, so that seeds of a cell differ in
  the selecting network as in the evaluation. The DC authors' coresets use "models trained on
  the whole dataset" without publishing their recipe; the DC code's own training recipe
  (``evaluate_synset``: SGD 0.01, momentum 0.9, weight decay 5e-4, batch 256, the lr x 0.1 at
  half the epochs) has the same form as this one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.core.config import StrictModel
from harness.core.io import atomic_torch_save, cache_dir, cache_lock, cache_name, key_digest
from harness.core.rng import Stream, step_seed
from harness.data import DatasetSplits
from harness.engine import InnerOptimizerConfig, inner_loss, make_torch_optimizer
from harness.models import ModelConfig
from harness.train.networks import data_key, key_json, new_network, read_cached, test_correct

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # 1: ddbench <= 0.2's json file of the accuracy alone, keyed by the protocol and the cell seed
FULL_DATA_POSITION = 2000  # positions of the full-data networks in the EVAL stream (of `seed`)
Report = Callable[[str, int, int], None]  # (what, done, total): a long part's progress


class FullDataConfig(StrictModel):
    """How the full-data networks are trained (DD-Ranking's real-data recipe, CIFAR ConvNet-3)."""

    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=1)  # DD-Ranking's real_batch_size
    models: int = Field(5, ge=1)  # one per DD-Ranking evaluation round (num_eval)
    optimizer: InnerOptimizerConfig = InnerOptimizerConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
    lr_step_epochs: int = Field(100, ge=1)  # StepLR step_size: the lr x lr_gamma every this many epochs
    lr_gamma: float = Field(0.1, gt=0, le=1)
    test_every: int = Field(10, ge=1)  # DD-Ranking's test_interval (the recorded test-selected maximum)
    seed: int = Field(0, ge=0)  # the networks' seeds: one set for every cell and suite


@dataclass
class FullData:
    """The cached full-data networks: their accuracies and weights."""

    accuracy_per_model: list[float]  # the final networks' test accuracies
    test_curves: list[list[tuple[int, float]]]  # per network: (epoch, test accuracy) every test_every epochs
    state_dicts: list[dict[str, torch.Tensor]]
    seconds: float  # the training's wall-clock when it was trained
    cache_file: str  # relative to the cache dir

    @property
    def accuracy(self) -> float:
        return float(torch.tensor(self.accuracy_per_model, dtype=torch.float64).mean())

    @property
    def test_selected_max(self) -> float:
        """DD-Ranking's number: each network's best test checkpoint, averaged (test-selected)."""
        return float(torch.tensor([max(a for _, a in c) for c in self.test_curves], dtype=torch.float64).mean())

    def network(self, index: int, model: ModelConfig, data: DatasetSplits, device, dtype) -> torch.nn.Module:
        net = new_network(model, data, 0, device, dtype)
        net.load_state_dict(self.state_dicts[index])
        return net.eval()

    def summary(self, cfg: FullDataConfig) -> dict[str, Any]:
        return {"epochs": cfg.epochs, "models": cfg.models, "accuracy": self.accuracy,
                "accuracy_per_model": self.accuracy_per_model,
                "selected": "the final networks (no selection)",
                "test_selected_max": self.test_selected_max,
                "test_selected_max_is": (f"as DD-Ranking reports it: each network's best of its test checkpoints "
                                         f"every {cfg.test_every} epochs, a test-selected upper bound"),
                "recipe": cfg.model_dump(mode="json", exclude={"models"})}


def full_data_key(data: DatasetSplits, model: ModelConfig, cfg: FullDataConfig) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "what": "full-data networks", **data_key(data),
            "model": model.model_dump(mode="json"), "recipe": cfg.model_dump(mode="json")}


def full_data_path(data: DatasetSplits, model: ModelConfig, cfg: FullDataConfig) -> Path:
    return cache_dir("ddranking") / f"full-{data.name}-{key_digest(full_data_key(data, model, cfg))}.pt"


def train_full_data(net: torch.nn.Module, data: DatasetSplits, cfg: FullDataConfig, gen: torch.Generator,
                    on_epoch: Callable[[int], None] | None = None) -> list[tuple[int, float]]:
    """Train ``net`` on the training split by DD-Ranking's real-data recipe: each epoch one pass
    over a fresh permutation in minibatches (the last one smaller), the lr x ``lr_gamma`` every
    ``lr_step_epochs`` epochs, no augmentation. Returns (epoch, test accuracy) at every
    ``test_every`` epochs and at the last."""
    opt = make_torch_optimizer(cfg.optimizer, net.parameters())
    x, y = data.train_x, data.train_y
    curve = []
    for epoch in range(cfg.epochs):
        for group in opt.param_groups:  # StepLR, stepped once per epoch
            group["lr"] = cfg.optimizer.lr * cfg.lr_gamma ** (epoch // cfg.lr_step_epochs)
        net.train()
        for idx in torch.randperm(x.shape[0], generator=gen).to(x.device).split(cfg.batch_size):
            loss = inner_loss(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if (epoch + 1) % cfg.test_every == 0 or epoch + 1 == cfg.epochs:
            curve.append((epoch + 1, float(test_correct(net, data, 2048).double().mean())))
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return curve


def _parse(path: Path) -> Callable[[dict[str, Any]], FullData]:
    return lambda payload: FullData([float(a) for a in payload["accuracy_per_model"]],
                                    [[(int(e), float(a)) for e, a in c] for c in payload["test_curves"]],
                                    payload["state_dicts"], float(payload["seconds"]), cache_name(path))


def full_data(data: DatasetSplits, model: ModelConfig, cfg: FullDataConfig, device, dtype,
              report: Report | None = None) -> FullData:
    """The full-data networks of ``(data, model, cfg)``: from the cache, else trained and cached
    (under a lock: cells running at once train them once). ``report(what, done, total)`` is
    called after every epoch while training."""
    key = full_data_key(data, model, cfg)
    path = full_data_path(data, model, cfg)
    with cache_lock(path):
        cached = read_cached(path, key, "full-data", _parse(path))
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        curves, states, total = [], [], cfg.models * cfg.epochs
        what = f"DD-Ranking full-data training ({cfg.models} x {cfg.epochs} epochs)"
        if report is not None:
            report(what, 0, total)
        for m in range(cfg.models):
            net_seed = step_seed(cfg.seed, FULL_DATA_POSITION + m, Stream.EVAL)
            net = new_network(model, data, net_seed, device, dtype)
            done_before = m * cfg.epochs
            on_epoch = None if report is None else (lambda e, d=done_before: report(what, d + e, total))
            curves.append(train_full_data(net, data, cfg, torch.Generator().manual_seed(net_seed), on_epoch))
            states.append({k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        seconds = time.perf_counter() - t0
        result = FullData([c[-1][1] for c in curves], curves, states, seconds, cache_name(path))
        log.info("trained the full-data networks of %s in %.0f s", data.name, seconds)
        payload = {"key": key_json(key), "accuracy_per_model": result.accuracy_per_model,
                   "test_curves": [[list(p) for p in c] for c in curves], "state_dicts": states, "seconds": seconds}
        try:
            atomic_torch_save(payload, path)
        except OSError as err:  # an unwritable cache costs time, not correctness
            log.warning("cannot write %s (%s)", path, err)
        return result


def teacher_model(data: DatasetSplits, model: ModelConfig, cfg: FullDataConfig, device, dtype,
                  report: Report | None = None) -> tuple[torch.nn.Module, str]:
    """A teacher trained on the real training split (cached, see :func:`full_data`): network 0 of
    the full-data networks, in eval mode; returns it and its cache file (relative)."""
    trained = full_data(data, model, cfg, device, dtype, report)
    return trained.network(0, model, data, device, dtype), trained.cache_file


@torch.no_grad()
def teacher_labels(teacher: torch.nn.Module, images: torch.Tensor, temperature: float = 1.0,
                   batch: int = 2048) -> torch.Tensor:
    """Soft labels of ``images``: ``softmax(teacher(images) / temperature)`` per image (float64
    probabilities that sum to one), the teacher in eval mode, no augmentation."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    teacher.eval()
    device = next(teacher.parameters()).device
    dtype = next(teacher.parameters()).dtype
    logits = torch.cat([teacher(images[s:s + batch].to(device, dtype)).double()
                        for s in range(0, images.shape[0], batch)])
    return F.softmax(logits / temperature, dim=1).cpu()
