"""What every network trained on the real data shares: a fresh network from a seed, which
examples it classifies correctly, its penultimate features, and what identifies the data it
was trained on (the data part of every cache key in this layer)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from harness.core.process import seeded
from harness.data import DatasetSplits
from harness.models import ModelConfig, create_model
from harness.models.networks import embed

log = logging.getLogger(__name__)
T = TypeVar("T")


def new_network(model_cfg: ModelConfig, data: DatasetSplits, seed: int, device, dtype) -> torch.nn.Module:
    """A freshly initialised network for ``data`` (its init drawn under ``seed``, the caller's
    random state untouched)."""
    with seeded(seed, device):  # the network's default init draws from the global generator
        return create_model(model_cfg, data.image_shape, data.num_classes).to(device, dtype)


@torch.no_grad()
def correct_on(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    """Which examples of ``(x, y)`` ``net`` classifies correctly, as a bool vector (on the CPU)."""
    net.eval()
    out = [net(x[s:s + batch]).argmax(-1) == y[s:s + batch] for s in range(0, x.shape[0], batch)]
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.bool)


def test_correct(net: torch.nn.Module, data: DatasetSplits, batch: int) -> torch.Tensor:
    """Which test examples ``net`` classifies correctly."""
    return correct_on(net, data.test_x, data.test_y, batch)


@torch.no_grad()
def embeddings(net: torch.nn.Module, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """``net``'s penultimate features of ``x`` (what its final linear layer reads:
    :func:`harness.models.networks.embed`), in eval mode, as a float64 ``[N, D]`` CPU tensor."""
    net.eval()
    param = next(net.parameters())
    out = [embed(net, x[s:s + batch].to(param.device, param.dtype)).double().cpu()
           for s in range(0, x.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def data_key(data: DatasetSplits) -> dict[str, Any]:
    """What identifies the data a network trains and is tested on: its description, sizes, labels, dtype."""
    labels = hashlib.sha256()
    for y in (data.train_y, data.test_y):
        labels.update(y.detach().cpu().to(torch.int64).numpy().tobytes())
    return {"dataset": data.name, "preprocessing": data.preprocessing,
            "shapes": [list(data.train_x.shape), list(data.test_x.shape)], "labels_sha256": labels.hexdigest(),
            "dtype": str(data.train_x.dtype)}


def key_json(key: dict[str, Any]) -> Any:
    """``key`` as it reads back from a file (tuples as lists)."""
    return json.loads(json.dumps(key, default=str))


def class_members(data: DatasetSplits) -> list[torch.Tensor]:
    """The training-split rows of every class, ascending (int64, on the CPU)."""
    train_y = data.train_y.cpu()
    return [(train_y == c).nonzero().flatten() for c in range(data.num_classes)]


def read_cached(path: Path, key: dict[str, Any], what: str, parse: Callable[[dict[str, Any]], T]) -> T | None:
    """``parse(payload)`` of the cache file ``path`` if it holds ``key``'s payload; None when there
    is none, and with a warning when it is damaged, foreign or ``parse`` refuses it (raises)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["key"] != key_json(key):
            raise ValueError("its key differs")
        return parse(payload)
    except Exception as err:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        log.warning("ignoring the %s cache file %s (%s: %s); training again", what, path, type(err).__name__, err)
        return None
