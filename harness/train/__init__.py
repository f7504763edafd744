"""Networks trained on the real training split, each trained once per (data, network, recipe) and
cached for every later cell and suite: the full-data networks, DD-Ranking's full-data model and
the teacher (:mod:`.full`), the forgetting scoring run (:mod:`.forgetting`), and what they share
(:mod:`.networks`: a fresh network, which examples it classifies correctly, its penultimate
features, the data part of a cache key). The coreset methods (herding, k-center, forgetting)
and a selection's teacher labels use them from ``methods/``; the evaluation's analyses
(DD-Ranking's scores, the hardness buckets) from :mod:`harness.evaluation`.

May import: :mod:`harness.core`, :mod:`harness.data`, :mod:`harness.models`,
:mod:`harness.engine`. Nothing above it, and not :mod:`harness.method` (its sibling).
"""

from harness.train.forgetting import (ForgettingCounts, ForgettingHistory, ForgettingRun, forgetting_counts,
                                      forgetting_history, hardness_key, history_key, history_path,
                                      training_history)
from harness.train.full import (FullData, FullDataConfig, full_data, full_data_key, full_data_path, teacher_labels,
                                teacher_model, train_full_data)
from harness.train.networks import (class_members, correct_on, data_key, embeddings, key_json, new_network,
                                    test_correct)

__all__ = ["ForgettingCounts", "ForgettingHistory", "ForgettingRun", "forgetting_counts", "forgetting_history",
           "hardness_key", "history_key", "history_path", "training_history", "FullData", "FullDataConfig",
           "full_data", "full_data_key", "full_data_path", "teacher_labels", "teacher_model", "train_full_data",
           "class_members", "correct_on", "data_key", "embeddings", "key_json", "new_network", "test_correct"]
