"""Image grids of distilled sets: a row per class, a column per image, drawn from the pixels the
runner saved with the set (normalization and ZCA undone). Learned soft labels are shown as each
image's top classes."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.report.site.plots import _PNG_META, _plt


def load_set(path: Path) -> dict:
    """A saved distilled set's tensors (no method code needed to read one)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def image_grid(path: Path, class_names: list[str] | None, folder: Path, name: str, max_per_class: int = 10
               ) -> tuple[str, str]:
    """The grid as ``name.png``; returns its file name and a caption saying how it was drawn."""
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
    cols = min(ipc, max_per_class)
    soft = labels.is_floating_point()
    plt = _plt()
    fig, axes = plt.subplots(num_classes, cols, figsize=(cols * 0.9 + 0.8, num_classes * (0.9 + 0.25 * soft)),
                             squeeze=False)
    for c in range(num_classes):
        for j in range(cols):
            ax = axes[c][j]
            row = c * ipc + j
            img = pixels[row].permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j == 0:
                ax.set_ylabel(class_names[c] if class_names and c < len(class_names) else str(c), fontsize=7,
                              rotation=0, ha="right", va="center")
            if soft:  # learned soft labels: the top classes of this image
                probs = labels[row].clamp_min(0)
                probs = probs / probs.sum().clamp_min(1e-12)
                top = probs.topk(min(2, probs.numel()))
                ax.set_title(" ".join(f"{int(i)}:{float(p):.2f}" for p, i in zip(top.values, top.indices)),
                             fontsize=5)
    if soft:
        caption += "; above each image its top two classes under the learned soft label"
    fig.subplots_adjust(wspace=0.05, hspace=0.25 if soft else 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", metadata=_PNG_META, bbox_inches="tight", dpi=80)
    plt.close(fig)
    return f"{name}.png", caption
