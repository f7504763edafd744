"""The mini-batch schedule of an unroll: what each of the N inner steps trains on, drawn ahead
so that any step can be recomputed exactly."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.models.augment import AugmentConfig, apply_affine, sample_affine


@dataclass(frozen=True)
class InnerSchedule:
    """What each of the N inner steps trains on.

    ``indices[t]`` are the rows of the synthetic set used at step t; ``affine[t]`` (optional)
    are their augmentation matrices. Drawn ahead, so any step can be recomputed exactly.
    """

    indices: torch.Tensor  # [N, B] int64
    affine: torch.Tensor | None = None  # [N, B, 2, 3]

    def __len__(self) -> int:
        return self.indices.shape[0]

    def batch(self, t: int, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices[t]
        x = images[idx]
        if self.affine is not None:
            x = apply_affine(x, self.affine[t])
        return x, labels[idx]


def class_balanced_schedule(
    n_steps: int,
    num_classes: int,
    ipc: int,
    *,
    per_class: int | None = None,
    classes_per_step: int | None = None,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    augment: AugmentConfig | None = None,
    image_size: int | None = None,
) -> InnerSchedule:
    """The RaT-BPTT mini-batch schedule for a class-major synthetic set (``ipc`` rows per class).

    At every step, ``classes_per_step`` classes are drawn without replacement (all classes by
    default; the "task sampler" for many classes), and ``per_class`` images of each drawn
    class without replacement (all ``ipc`` by default). Rows are sorted within a step.
    """
    per_class = min(per_class or ipc, ipc)
    classes_per_step = min(classes_per_step or num_classes, num_classes)
    rows = torch.rand(n_steps, num_classes, ipc, generator=generator).argsort(-1)[..., :per_class]
    rows = rows.sort(-1).values + torch.arange(num_classes)[None, :, None] * ipc
    if classes_per_step < num_classes:
        classes = torch.rand(n_steps, num_classes, generator=generator).argsort(-1)[:, :classes_per_step]
        classes = classes.sort(-1).values
        rows = torch.gather(rows, 1, classes[..., None].expand(-1, -1, per_class))
    indices = rows.reshape(n_steps, classes_per_step * per_class)
    affine = None
    if augment is not None and augment.enabled:
        affine = sample_affine(augment, n_steps, indices.shape[1], image_size, generator).to(device)
    return InnerSchedule(indices.to(device), affine)
