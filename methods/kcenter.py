"""K-center greedy (Sener & Savarese, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach", ICLR 2018; Gonzalez 1985's farthest-point rule; Wolf 2011): per class, real images
chosen so that every image of the class lies near a chosen one, greedily. A coreset baseline of
the dataset distillation papers (DC, Zhao et al. ICLR 2021, Table 1; DC-BENCH).

What the DC authors did (their pseudocode in VICO-UoE/DatasetCondensation issue #21, "run it
class by class"; the DC paper: features of "models trained on the whole dataset", Euclidean
distance)::

    first center = the image nearest the class mean
    repeat ipc - 1 times: add the image whose distance to its nearest center is largest

The greedy radius (the largest distance of an image to its nearest center) is at most twice the
optimal k-center radius (Gonzalez), whatever the first center. Here:

* **features**: as ``herding``'s: the unnormalised penultimate features of network ``seed % models``
  of the cached full-data networks (:mod:`methods.herding`, :mod:`harness.train.full`).
* **first center**: the image nearest the class mean, as the DC authors'; DeepCore
  (``deepcore/methods/kcentergreedy.py``) and Sener & Savarese start from a random or an already
  labelled point instead. Nothing is random: a seed changes the selection only through the network.
* **distance**: Euclidean on float64 features; a tie goes to the lowest training row.

The selected rows are in the set's ``meta["train_rows"]``, the final radius per class in the
summary; labels hard or the teacher's (see :mod:`methods.random_real`).
"""

from __future__ import annotations

import torch

from harness import register_method
from harness.method.builtin.random_real import EmbeddingSelection, EmbeddingSelectionConfig


def distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[len(x), len(y)]``, computed directly (not by ``|x|^2 + |y|^2 - 2 x.y``,
    whose rounding could reorder near ties)."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def k_center_greedy(features: torch.Tensor, k: int) -> torch.Tensor:
    """The rows of ``features`` ``[n, D]`` the greedy k-center rule picks, in order: first the row
    nearest the mean, then each time the row farthest from its nearest picked row (float64)."""
    if not 0 <= k <= features.shape[0]:
        raise ValueError(f"cannot pick {k} of {features.shape[0]} rows")
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    x = features.double()
    first = int(torch.argmin(distances(x, x.mean(0, keepdim=True))[:, 0]))
    picked = [first]
    nearest = distances(x, x[first:first + 1])[:, 0]  # each row's distance to its nearest picked row
    for _ in range(k - 1):
        j = int(torch.argmax(nearest))  # the first maximum: the lowest row on a tie
        picked.append(j)
        nearest = torch.minimum(nearest, distances(x, x[j:j + 1])[:, 0])
    return torch.tensor(picked, dtype=torch.int64)


def radius(features: torch.Tensor, centers: torch.Tensor) -> float:
    """The k-center objective: the largest distance of a row to its nearest center."""
    x = features.double()
    return float(distances(x, x[centers]).min(1).values.max())


@register_method("kcenter")
class KCenter(EmbeddingSelection):
    """K-center greedy coreset: per class, farthest-point centers from the one nearest the mean (DC's baseline)."""

    Config = EmbeddingSelectionConfig
    selection = ("greedy k-center on the penultimate features of a network trained on the real training split, per "
                 "class, from the image nearest the class mean (the DC authors' rule)")

    def rule(self, features: torch.Tensor, k: int) -> torch.Tensor:
        centers = k_center_greedy(features, k)
        self.info.setdefault("radius_per_class", []).append(radius(features, centers))
        return centers
