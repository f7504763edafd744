"""DD-Ranking's scores of a distilled set (Li et al., "DD-Ranking: Rethinking the Evaluation of
Dataset Distillation", 2025), all under the record's own evaluation protocol:

* HLR (hard label recovery) = acc(full real training set) - acc(distilled set, hard labels);
* IOR (improvement over random) = acc(distilled set) - acc(random real subset, same IPC);
* LRS (label-robust score) = (e^a - e^-1) / (e - e^-1), a = w IOR - (1 - w) HLR, w = 0.5;
* ARS (augmentation-robust score): the same normalisation of
  b = w (acc_aug(distilled) - acc_aug(random)) + (1 - w) (acc_noaug(distilled) - acc_noaug(random)).

Accuracies are fractions in [0, 1], so a, b lie in [-1, 1] and the scores in [0, 1] as the
paper defines them (the ``ddranking`` 0.2.0 package plugs percentages into ``exp``: its
``hard_label.py`` l.380-383, ``aug_robust.py`` l.577-580; the formulas are otherwise the same).
The random subset is the one ``random_real`` draws for the same seed (its record's IOR is 0);
"hard labels" are the class-major labels of the set (its own when it learned none). The
full-data accuracy is computed once per (dataset, network, protocol) and cached, like the
forgetting scores: the protocol's optimizer, augmentation and schedule on the whole training
set, in minibatches, for ``full_data_epochs`` epochs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import replace
from typing import Any

import torch
from pydantic import Field

from harness.core.config import StrictModel
from harness.core.io import atomic_write, cache_dir
from harness.core.rng import Stream, step_seed
from harness.data import DatasetSplits
from harness.evaluation.analysis import Analysis, AnalysisContext, register_analysis
from harness.evaluation.protocols import PROTOCOLS, ProtocolConfig, evaluate, new_network, test_correct, train_network
from harness.method import DistilledSet, real_per_class
from harness.models import ModelConfig

log = logging.getLogger(__name__)
CACHE_VERSION = 1


class ScoresConfig(StrictModel):
    """The suite's ``[ddranking]`` table."""

    enabled: bool = True
    weight: float = Field(0.5, ge=0, le=1)  # w of LRS (DD-Ranking's lrs_lambda)
    ars_weight: float = Field(0.5, ge=0, le=1)  # w of ARS (ars_lambda)
    full_data_epochs: int = Field(20, ge=1)
    full_data_batch: int = Field(256, ge=1)
    full_data_models: int = Field(1, ge=1)


def normalized(a: float) -> float:
    """(e^a - e^-1) / (e - e^-1): [-1, 1] onto [0, 1]."""
    return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def lrs(hlr: float, ior: float, weight: float = 0.5) -> float:
    return normalized(weight * ior - (1 - weight) * hlr)


def ars(with_aug: float, without_aug: float, weight: float = 0.5) -> float:
    """From the improvement over random with (``with_aug``) and without augmentation."""
    return normalized(weight * with_aug + (1 - weight) * without_aug)


def full_data_accuracy(data: DatasetSplits, model: ModelConfig, protocol: ProtocolConfig, cfg: ScoresConfig,
                       seed: int, device, dtype) -> tuple[float, str]:
    """Mean test accuracy of ``cfg.full_data_models`` networks trained on the whole training split
    by the protocol's recipe (cached); returns it and the cache file."""
    labels = hashlib.sha256(data.train_y.cpu().numpy().tobytes() + data.test_y.cpu().numpy().tobytes()).hexdigest()
    key = {"version": CACHE_VERSION, "dataset": data.name, "preprocessing": data.preprocessing, "labels": labels,
           "model": model.model_dump(mode="json"), "protocol": protocol.model_dump(mode="json"),
           "config": cfg.model_dump(mode="json", exclude={"enabled", "weight", "ars_weight"}), "seed": seed,
           "dtype": str(dtype)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = cache_dir("ddranking") / f"{data.name}-full-{digest}.json"
    try:
        cached = json.loads(path.read_text())
        if cached["key"] == json.loads(json.dumps(key, default=str)):
            return float(cached["accuracy"]), str(path)
    except (OSError, ValueError, KeyError):
        pass
    n = data.train_x.shape[0]
    recipe = PROTOCOLS.get(protocol.protocol)().recipe(protocol, n)
    recipe.batch_size = cfg.full_data_batch
    recipe.steps = cfg.full_data_epochs * math.ceil(n / cfg.full_data_batch)
    accs = []
    for r in range(cfg.full_data_models):
        net_seed = step_seed(seed, 2000 + r, Stream.EVAL)
        net = new_network(model, data, net_seed, device, dtype)
        train_network(net, data.train_x, data.train_y, recipe, torch.Generator().manual_seed(net_seed))
        accs.append(float(test_correct(net, data, protocol.test_batch).double().mean()))
    accuracy = sum(accs) / len(accs)
    payload = json.dumps({"key": key, "accuracy": accuracy, "per_model": accs}, default=str).encode()
    try:
        atomic_write(path, lambda f: f.write(payload))
    except OSError as err:  # an unwritable cache costs time, not correctness
        log.warning("cannot write %s (%s)", path, err)
    return accuracy, str(path)


def random_subset(data: DatasetSplits, ipc: int, seed: int) -> DistilledSet:
    """The real images ``random_real`` takes for ``seed``: ``ipc`` per class, class-major."""
    images, labels = real_per_class(data, ipc, torch.Generator().manual_seed(step_seed(seed, 0, Stream.SYN_INIT)))
    return DistilledSet(images.cpu(), labels.cpu(), data.num_classes, ipc)


@register_analysis("ddranking")
class Scores(Analysis):
    """DD-Ranking's HLR, IOR, LRS and ARS, under the record's own protocol."""

    Config = ScoresConfig
    section = "scores"

    def run(self, cfg: ScoresConfig, ctx: AnalysisContext) -> dict[str, Any]:
        if not cfg.enabled:
            return {"config": cfg.model_dump(mode="json"), "skipped": "disabled in the suite"}
        protocol, d = ctx.protocol, ctx.distilled
        plain = PROTOCOLS.get(protocol.protocol)().without_augmentation(protocol)
        model = protocol.model or ctx.model

        def acc(s: DistilledSet, p: ProtocolConfig) -> float:
            return evaluate(s, ctx.data, p, ctx.model, seed=ctx.seed, device=ctx.device, dtype=ctx.dtype).accuracy_mean

        distilled = ctx.eval_result.accuracy_mean  # the record's own accuracy
        soft = d.labels.is_floating_point()
        hard = acc(replace(d, labels=d.hard_labels.cpu()), protocol) if soft else distilled
        rand = random_subset(ctx.data, d.ipc, ctx.seed)
        no_aug = acc(d, plain)
        # A set that is the random subset itself (random_real's) gets the same networks: not trained twice.
        same = (rand.labels.dtype == d.labels.dtype and torch.equal(rand.labels, d.labels.cpu())
                and torch.equal(rand.images, d.images.cpu()))
        accuracies = {"distilled": distilled, "distilled_hard_labels": hard,
                      "random": distilled if same else acc(rand, protocol),
                      "distilled_no_aug": no_aug, "random_no_aug": no_aug if same else acc(rand, plain)}
        accuracies["full_data"], cache = full_data_accuracy(ctx.data, model, protocol, cfg, ctx.seed, ctx.device,
                                                            ctx.dtype)
        hlr = accuracies["full_data"] - accuracies["distilled_hard_labels"]
        ior = accuracies["distilled"] - accuracies["random"]
        with_aug, without_aug = ior, accuracies["distilled_no_aug"] - accuracies["random_no_aug"]
        return {"config": cfg.model_dump(mode="json"), "protocol": protocol.protocol, "accuracies": accuracies,
                "hlr": hlr, "ior": ior, "lrs": lrs(hlr, ior, cfg.weight),
                "ars": ars(with_aug, without_aug, cfg.ars_weight), "full_data_cache": cache,
                "units": "accuracies as fractions in [0, 1]"}
