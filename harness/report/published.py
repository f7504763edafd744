"""Published numbers ddbench quotes beside its own: the reproduction table.

Each entry of ``published.toml`` (beside this module) is one number from a paper or a README:
the method and IPC, the dataset it was published on and the ddbench dataset that reproduces it,
its label kind, network, evaluation protocol, whether it was selected on the test set, its
source, how sure we are of it (``status``), the suite that reproduces it and the GPU time that
takes. ``docs/reproduction.md`` and the site's "published" column are rendered from here, so a
number is typed once. A number is never compared with a ddbench number of another setting
without its setting beside it.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SOURCE = Path(__file__).with_name("published.toml")
STATUS_TEXT = {"verified": "verified in the authors' own material",
               "author reprint": "reprinted by the same authors in a later README",
               "unverified": "seen only in third-party tables"}


class Published(BaseModel):
    """One published number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str  # the ddbench registry name of the method
    published_on: str  # the dataset as the paper names it
    dataset: str  # the ddbench dataset that reproduces it
    ipc: int = Field(ge=1)
    accuracy: float = Field(ge=0, le=100)  # percent, as printed
    std: float | None = Field(None, ge=0)
    labels: Literal["hard", "learned", "teacher"]
    network: str
    protocol: str
    selection: Literal["test-selected", "final"]
    source: str
    status: Literal["verified", "author reprint", "unverified"]
    suite: str
    gpu_hours: str

    def text(self) -> str:
        """``69.4 ± 0.4`` (as printed), with a dagger-free marker for test-selected numbers."""
        number = f"{self.accuracy:.1f}" if self.std is None else f"{self.accuracy:.1f} ± {self.std:.1f}"
        return number + (" (test-selected)" if self.selection == "test-selected" else "")


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entry: list[Published]


@lru_cache(maxsize=1)
def published_numbers() -> tuple[Published, ...]:
    """Every entry of ``published.toml``, in file order."""
    return tuple(_File.model_validate(tomllib.loads(SOURCE.read_text())).entry)


def published_for(dataset: str, ipc: int, method: str) -> list[Published]:
    """The published numbers of ``method`` at ``ipc`` on the dataset ddbench calls ``dataset``. A
    result on the JPEG copy of CIFAR-10 is shown beside CIFAR-10's numbers, named as such."""
    wanted = "cifar10" if dataset == "cifar10-jpeg" else dataset
    return [p for p in published_numbers() if (p.dataset, p.ipc, p.method) == (wanted, ipc, method)]


def reproduction_table() -> str:
    """The reproduction table in GitHub markdown (docs/reproduction.md embeds it)."""
    head = ["method", "published on", "IPC", "accuracy (%)", "labels", "network", "protocol", "source",
            "status", "reproduced by", "GPU time"]
    rows = [[p.method, p.published_on, str(p.ipc), p.text(), p.labels, p.network, p.protocol, p.source,
             p.status, p.suite, p.gpu_hours] for p in published_numbers()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
