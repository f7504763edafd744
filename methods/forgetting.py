"""Forgetting coreset (Toneva et al., "An Empirical Study of Example Forgetting during Deep Neural
Network Learning", ICLR 2019): per class, the IPC training images forgotten most often during a
training run on the real training split. A coreset baseline of the dataset distillation papers
(DC, Zhao et al. ICLR 2021, Table 1; DC-BENCH).

**Which end is kept: the most forgotten** (``keep = "most_forgotten"``, default). Toneva et al.
show that the rarely or never forgotten ("unforgettable") examples can be removed with little
loss, so the informative ones are the often forgotten: their ``run_cifar.py`` removes the
``remove_n`` least forgotten (``keep_lowest_n``) and trains on the rest, and DeepCore's
``Forgetting`` (``deepcore/methods/forgetting.py``, by one of the DC authors; balanced per class)
keeps the top of the descending sort of forgetting events. Never-learned examples rank above
every learned one, as Toneva's ``sort_examples_by_forgetting`` does (it gives them the maximum
count; DeepCore counts them 0, not copied). ``keep = "least_forgotten"`` is the other end, a named
option: at very small budgets the easiest examples can be the better choice (Sorscher et al.,
"Beyond neural scaling laws", NeurIPS 2022).

The scores: the training examples' forgetting counts of the scoring run of
:mod:`harness.train.forgetting` (``scoring``: the cell's network, SGD 0.01 with momentum 0.9 and
weight decay 5e-4, batch 128, 20 epochs, without augmentation; cached per (data, network,
recipe)), the same run as the hardness analysis's when the recipes agree (the suite's
``[hardness]`` table with the same epochs, batch size and seed). Toneva et al. train 200 epochs
(ResNet-18, CIFAR-10, with augmentation) and sum 5 runs; the hardness analysis's 20 epochs are
kept so that one run serves both (``scoring.epochs = 200`` gives Toneva's length). Counts tie
heavily; ties are broken as the hardness analysis breaks them (more observations misclassified,
i.e. learned later, ranks harder), the rest by a random order drawn from the cell's seed (DeepCore's
``np.argsort`` leaves their order to the sort). The scoring run does not depend on the cell's
seed: a seed changes only the order among exact ties.

The selected rows are in the set's ``meta["train_rows"]``; labels hard or the teacher's (see
:mod:`methods.random_real`).
"""

from __future__ import annotations

import time
from typing import Literal

import torch

from harness import DistillTask, Stream, register_method, step_seed
from harness.core.io import cache_name
from harness.method.builtin.random_real import RandomReal, RandomRealConfig
from harness.train import ForgettingRun, class_members, forgetting_history, hardness_key

TIE_ORDER = 1  # the tie order's position in the cell's SYN_INIT stream (random_real's draw is 0)


class ForgettingConfig(RandomRealConfig):
    """Which end of the forgetting order is kept, and the scoring run's recipe."""

    keep: Literal["most_forgotten", "least_forgotten"] = "most_forgotten"
    scoring: ForgettingRun = ForgettingRun()


def select_by_rank(rank: torch.Tensor, k: int, keep: str, gen: torch.Generator) -> torch.Tensor:
    """The positions of the ``k`` largest (``keep = "most_forgotten"``) or smallest entries of
    ``rank`` (easy -> hard), exact ties in a random order drawn from ``gen``."""
    if keep not in ("most_forgotten", "least_forgotten"):
        raise ValueError(f"keep must be 'most_forgotten' or 'least_forgotten', got {keep!r}")
    if not 0 <= k <= rank.numel():
        raise ValueError(f"cannot pick {k} of {rank.numel()} rows")
    shuffled = torch.randperm(rank.numel(), generator=gen)
    order = torch.argsort(rank[shuffled], descending=keep == "most_forgotten", stable=True)
    return shuffled[order[:k]]


@register_method("forgetting")
class Forgetting(RandomReal):
    """Forgetting coreset: per class, the training images forgotten most often in a real-data run (Toneva et al.)."""

    Config = ForgettingConfig
    selection = ("per class, the training images with the most forgetting events (never learned first, then later "
                 "learned) in a scoring run on the real training split (Toneva et al.)")

    def choose(self, task: DistillTask) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        t0 = time.perf_counter()
        run = forgetting_history(task.data, task.model, cfg.scoring)
        seconds = time.perf_counter() - t0
        self.network_seconds += seconds
        scores = run.train
        rank = hardness_key(scores, "misclassified")
        gen = torch.Generator().manual_seed(step_seed(task.seed, TIE_ORDER, Stream.SYN_INIT))
        rows = []
        for members in class_members(task.data):
            rows.append(members[select_by_rank(rank[members], task.ipc, cfg.keep, gen)])
        rows = torch.cat(rows)
        self.info["scoring_run"] = {
            "cache_file": None if run.cache_file is None else cache_name(run.cache_file),
            "seconds_this_cell": seconds, "training_seconds": run.seconds, "epochs": cfg.scoring.epochs,
            "final_train_accuracy": float(run.train_history[-1].double().mean()),
            "train_never_learned": int(scores.never_learned.sum()),
            "selected_forgetting_counts": scores.counts[rows].tolist(),
            "selected_never_learned": int(scores.never_learned[rows].sum())}
        self.info["keep"] = cfg.keep
        return task.data.train_x[rows.to(task.data.train_x.device)], rows
