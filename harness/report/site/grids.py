"""Image grids of distilled sets: a row per class, a column per image, drawn from the pixels the
runner saved with the set (normalization and ZCA undone), titled with the dataset, IPC, method
and seed. Learned soft labels are shown as each image's top classes.

**Contrast**: each set is stretched on its own: the set's 1st and 99th percentiles of pixel
values (all images and channels together, so colours keep their balance) are drawn black and
white. A set distilled from Gaussian noise of unit norm per image (``init = "gaussian"``, the
official RaT-BPTT init: about 0.04 per pixel in normalized units) stays near the dataset mean
after a few hundred CPU outer steps: MNIST IPC 1 sets span pixel values 0.09-0.20 once the
normalization is undone, which unstretched is a nearly black image. The caption says the
range that was stretched, so a low-contrast set is still recognisable as one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.report.site.plots import _PNG_META, _plt, text

STRETCH = (0.01, 0.99)  # the percentiles drawn black and white
_SAMPLE = 1_000_000  # pixels the percentiles are computed on (every k-th of a larger set)


def _ordinal(fraction: float) -> str:
    n = round(100 * fraction)
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def load_set(path: Path) -> dict:
    """A saved distilled set's tensors (no method code needed to read one)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def stretch_range(pixels: torch.Tensor) -> tuple[float, float]:
    """The set's (1st, 99th) percentile of pixel values (on at most a million evenly spaced pixels)."""
    flat = pixels.detach().flatten().to(torch.float64)
    if flat.numel() > _SAMPLE:
        flat = flat[:: -(-flat.numel() // _SAMPLE)]
    lo, hi = torch.quantile(flat, torch.tensor(STRETCH, dtype=torch.float64)).tolist()
    return lo, hi


def stretched(pixels: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``pixels`` with the set's percentile range mapped to [0, 1] (clipped); a flat set as it is."""
    lo, hi = stretch_range(pixels)
    if hi - lo < 1e-6:
        return pixels.clamp(0, 1), lo, hi
    return ((pixels - lo) / (hi - lo)).clamp(0, 1), lo, hi


def image_grid(path: Path, class_names: list[str] | None, folder: Path, name: str, max_per_class: int = 10,
               title: str = "") -> tuple[str, str]:
    """The grid as ``name.png`` (``title``, e.g. ``mnist IPC 1: rat_bptt s0``, above it); returns its
    file name and a caption saying how it was drawn."""
    payload = load_set(path)
    images, labels = payload["images"], payload["labels"]
    num_classes, ipc = payload["num_classes"], payload["ipc"]
    pixels = payload.get("pixels")
    if pixels is not None:
        caption = "pixels with the preprocessing undone (" + str(payload.get("meta", {}).get(
            "pixels", "normalization and ZCA undone")) + ")"
    else:  # a set saved before ddbench kept pixels: the raw tensor, scaled per image
        flat = images.flatten(1)
        lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
        pixels = (images - lo) / (hi - lo).clamp_min(1e-12)
        caption = "the stored tensors min-max scaled per image (this file keeps no pixels: preprocessing not undone)"
    pixels, lo, hi = stretched(pixels.to(torch.float32))
    caption += (f"; contrast stretched per set: its {_ordinal(STRETCH[0])} to {_ordinal(STRETCH[1])} percentile of "
                f"pixel values ({lo:.3g} to {hi:.3g}) drawn black to white")
    cols = min(ipc, max_per_class)
    soft = labels.is_floating_point()
    plt = _plt()
    height = num_classes * (0.9 + 0.25 * soft) + (0.3 if title else 0)
    fig, axes = plt.subplots(num_classes, cols, figsize=(cols * 0.9 + 0.8, height), squeeze=False)
    for c in range(num_classes):
        for j in range(cols):
            ax = axes[c][j]
            row = c * ipc + j
            img = pixels[row].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j == 0:
                ax.set_ylabel(text(class_names[c]) if class_names and c < len(class_names) else str(c), fontsize=7,
                              rotation=0, ha="right", va="center")
            if soft:  # learned soft labels: the top classes of this image
                probs = labels[row].clamp_min(0)
                probs = probs / probs.sum().clamp_min(1e-12)
                top = probs.topk(min(2, probs.numel()))
                ax.set_title(" ".join(f"{int(i)}:{float(p):.2f}" for p, i in zip(top.values, top.indices)),
                             fontsize=5)
    if title:  # just above the first row, whatever the grid's height
        fig.suptitle(text(title), fontsize=8, y=1 - 0.08 / height, va="top")
    if soft:
        caption += "; above each image its top two classes under its soft label"
    fig.subplots_adjust(wspace=0.05, hspace=0.25 if soft else 0.05, top=1 - (0.3 + 0.15 * soft) / height if title
                        else 0.98)
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", metadata=_PNG_META, bbox_inches="tight", dpi=80)
    plt.close(fig)
    return f"{name}.png", caption
