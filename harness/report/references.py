"""Where each method comes from: its paper(s) and reference code, by registry name.

The site links every row to these (``reference_for(registry name)``); a method not listed (a
user's plug-in, a new method) gets no link rather than a guessed one. ``code`` is the code the
ddbench implementation follows (its module docstring says which commit and file), or the
authors' release; ``None`` where there is none to point to.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    cite: str  # "Feng et al., ICLR 2024"
    title: str
    url: str


@dataclass(frozen=True)
class Reference:
    papers: tuple[Paper, ...]
    code: str | None = None  # a repository URL
    note: str = ""  # what the method is, when the paper alone does not say (a section, a baseline)


def _gh(repo: str) -> str:
    return f"https://github.com/{repo}"


REFERENCES: dict[str, Reference] = {
    "bptt": Reference((Paper("Wang et al., 2018", "Dataset Distillation", "https://arxiv.org/abs/1811.10959"),),
                      _gh("SsnL/dataset-distillation"), "back-propagation through every inner step"),
    "tbptt": Reference((Paper("Shaban et al., AISTATS 2019", "Truncated Back-propagation for Bilevel Optimization",
                              "https://arxiv.org/abs/1810.10667"),), None, "the last M of N inner steps"),
    "rat_bptt": Reference((Paper("Feng et al., ICLR 2024", "Embarrassingly Simple Dataset Distillation",
                                 "https://arxiv.org/abs/2311.07025"),), _gh("fengyzpku/Simple_Dataset_Distillation")),
    "at_bptt": Reference((Paper("Li et al., NeurIPS 2025",
                                "Beyond Random: Automatic Inner-Loop Optimization in Dataset Distillation",
                                "https://arxiv.org/abs/2510.04838"),), _gh("GH209515338/AT-BPTT")),
    "boost_dd": Reference((Paper("Feng et al., ICLR 2024", "Embarrassingly Simple Dataset Distillation (Sec. 6)",
                                 "https://arxiv.org/abs/2311.07025"),), _gh("fengyzpku/Simple_Dataset_Distillation"),
                          "Boost-DD: a set grown block by block"),
    "dm": Reference((Paper("Zhao & Bilen, WACV 2023", "Dataset Condensation with Distribution Matching",
                           "https://arxiv.org/abs/2110.04181"),), _gh("VICO-UoE/DatasetCondensation")),
    "mtt": Reference((Paper("Cazenavette et al., CVPR 2022", "Dataset Distillation by Matching Training Trajectories",
                            "https://arxiv.org/abs/2203.11932"),), _gh("GeorgeCazenavette/mtt-distillation")),
    "frepo": Reference((Paper("Zhou et al., NeurIPS 2022", "Dataset Distillation using Neural Feature Regression",
                              "https://arxiv.org/abs/2206.00719"),), _gh("yongchao97/FRePo")),
    "implicit": Reference((Paper("Lorraine et al., AISTATS 2020",
                                 "Optimizing Millions of Hyperparameters by Implicit Differentiation",
                                 "https://arxiv.org/abs/1911.02590"),
                           Paper("Loo et al., ICML 2023 (RCIG)",
                                 "Dataset Distillation with Convexified Implicit Gradients",
                                 "https://arxiv.org/abs/2302.06755")), _gh("yolky/RCIG")),
    "herding": Reference((Paper("Welling, ICML 2009", "Herding Dynamical Weights to Learn",
                                "https://doi.org/10.1145/1553374.1553517"),), None, "coreset baseline"),
    "kcenter": Reference((Paper("Sener & Savarese, ICLR 2018",
                                "Active Learning for Convolutional Neural Networks: A Core-Set Approach",
                                "https://arxiv.org/abs/1708.00489"),), None, "coreset baseline"),
    "forgetting": Reference((Paper("Toneva et al., ICLR 2019",
                                   "An Empirical Study of Example Forgetting during Deep Neural Network Learning",
                                   "https://arxiv.org/abs/1812.05159"),), _gh("mtoneva/example_forgetting"),
                            "coreset baseline"),
    "random_real": Reference((), None, "baseline: a random real subset"),
}


def reference_for(method: str) -> Reference | None:
    """The paper(s) and code of the method registered as ``method``; None when ddbench has none."""
    return REFERENCES.get(method)
