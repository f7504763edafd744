"""Herding (Welling, "Herding Dynamical Weights to Learn", ICML 2009; the coreset of Chen et al.
2010 and iCaRL, Rebuffi et al. 2017): per class, real images chosen greedily so that the mean of
the chosen ones' embeddings stays closest to the class mean. A coreset baseline of the dataset
distillation papers (DC, Zhao et al. ICLR 2021, Table 1; DC-BENCH), run here as theirs is.

What the DC authors did (their pseudocode in VICO-UoE/DatasetCondensation issue #15, "run it
class by class"; the DC paper: the features of "models trained on the whole dataset", the
Euclidean distance)::

    mean = features.mean(0)
    for i in range(ipc):
        residual = mean * (i + 1) - features[selected].sum(0)
        pick the unselected x with the smallest || residual - x ||

so step i adds the image that puts the running mean of the i + 1 chosen embeddings nearest to
the class mean (``|| (i+1) mean - sum - x || = (i+1) || mean - (sum + x) / (i+1) ||``). Here:

* **features**: the penultimate features (what the classifier reads, unnormalised) of a network
  of the cell's architecture trained on the whole real training split: network ``seed % models``
  of the cached full-data networks (:mod:`harness.train.full`, DD-Ranking's real-data recipe,
  which has the form of the DC code's own training recipe); the DC authors do not say which
  network or recipe. Another seed, another network: the seeds of a cell differ in the selecting
  network (the greedy rule itself draws nothing).
* **distance**: Euclidean, on float64 features; a tie goes to the lowest training row.
* DeepCore (``deepcore/methods/herding.py``, by one of the DC authors) takes the ``argmax`` of that
  distance, which picks the image farthest from the residual; not copied (the authors' pseudocode
  and herding itself take the nearest).

The selected rows are in the set's ``meta["train_rows"]``; labels hard or the teacher's (see
:mod:`methods.random_real`).
"""

from __future__ import annotations

import torch

from harness import register_method
from harness.method.builtin.random_real import EmbeddingSelection, EmbeddingSelectionConfig


def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """The rows of ``features`` ``[n, D]`` that herding picks, in order: step i takes the unpicked
    row x minimising ``|| (i + 1) mean - sum(picked) - x ||`` (float64)."""
    if not 0 <= k <= features.shape[0]:
        raise ValueError(f"cannot pick {k} of {features.shape[0]} rows")
    x = features.double()
    mean, total = x.mean(0), torch.zeros_like(x[0])
    free = torch.ones(x.shape[0], dtype=torch.bool)
    picked = []
    for i in range(k):
        dist = ((x - ((i + 1) * mean - total)) ** 2).sum(1)
        dist[~free] = float("inf")
        j = int(torch.argmin(dist))  # the first minimum: the lowest row on a tie
        picked.append(j)
        free[j] = False
        total = total + x[j]
    return torch.tensor(picked, dtype=torch.int64)


@register_method("herding")
class Herding(EmbeddingSelection):
    """Herding coreset: per class, the running embedding mean kept nearest the class mean (DC's baseline)."""

    Config = EmbeddingSelectionConfig
    selection = ("herding on the penultimate features of a network trained on the real training split, per class "
                 "(the DC authors' greedy rule)")

    def rule(self, features: torch.Tensor, k: int) -> torch.Tensor:
        return herding(features, k)
