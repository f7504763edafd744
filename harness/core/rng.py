"""Every random stream of a run, in one table.

A run draws all its randomness from seeds derived from (run seed, position, stream): outer
step t's mini-batches from ``step_seed(seed, t, Stream.STEP)``, its network init from
``step_seed(seed, t, Stream.NET_INIT)``, and so on. Streams are independent, so that e.g. the
init of step t does not depend on how many numbers the schedule of step t drew, and a run
resumed at step t continues exactly as if it had never stopped. A new kind of randomness gets
a new member here, never a number typed at the place that uses it.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """Stream ids. The values are part of every recorded result: never renumber one."""

    STEP = 0  # outer step t: unroll length, mini-batch schedule, augmentation, real batch
    NET_INIT = 1  # outer step t: the inner network's initialisation
    SYN_INIT = 2  # the synthetic set's initialisation (and random_real's draw)
    EVAL = 3  # evaluation network r: init, batches, augmentation
    PROBE = 4  # AT-BPTT: schedule of the gradient-norm probe trajectory at step t
    SKETCH = 5  # AT-BPTT: Gaussian sketch of the low-rank Hessian built at (step, inner step)
    HARDNESS = 17  # the hardness analysis's scoring run (init, data order)
    SUBSETS = 23  # the subset analysis's random position draws (a five-word entropy, see subset_seed)
    PROBE_INIT = 104  # AT-BPTT: network init of the probe trajectory at step t
    SKETCH_DRIFT = 105  # AT-BPTT: the random vector of the low-rank Hessian's drift test
    VALIDATION = 31  # the validation split held out of the training set (evaluation protocols)
    RANDOM_SUBSET = 37  # random real subsets of the scores' baselines (DD-Ranking IOR)
    CHECKPOINT_EVAL = 41  # anytime evaluation during distillation
    PATCH = 43  # AT-BPTT: the real images of the patch-wise semantic preservation term at step t
    TRAJECTORY = 47  # trajectory k >= 1 of outer step t (engine.trajectories): like STEP (k = 0 is STEP)
    TRAJECTORY_INIT = 53  # trajectory k >= 1 of outer step t: its network init (k = 0 is NET_INIT)
    POOL_INIT = 59  # FRePo: the initial network of pool member i (position i)
    EXPERT = 61  # MTT: expert trajectory i's training (its init, batches, augmentation; position i)


def seed_from(*words: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy's SeedSequence).

    SeedSequence pads its entropy with zeros to four words, so ``(a, b, c)`` and ``(a, b, c, 0)``
    give the same seed: a fourth word is never 0 where three-word seeds of the same words exist
    (``Stream.TRAJECTORY``'s k starts at 1)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def step_seed(seed: int, step: int, stream: int = Stream.STEP) -> int:
    """The seed of (run seed, position, stream); all arguments >= 0."""
    return seed_from(seed, step, int(stream))


def sketch_position(step: int, inner_step: int) -> int:
    """The position of the Hessian sketch built at inner step ``inner_step`` of outer step ``step``
    (a window is far shorter than 100003 steps, so positions never collide)."""
    return step * 100003 + inner_step


def subset_seed(seed: int, cfg_seed: int, size: int, draw: int) -> int:
    """The subset analysis's draw ``draw`` of ``size`` positions: five words where step_seed has
    three, so it never equals a step seed."""
    return seed_from(seed, int(Stream.SUBSETS), cfg_seed, size, draw)
