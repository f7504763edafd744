"""Running suites: suite files (:mod:`.suite`), the runner that checks and schedules cells
(:mod:`.runner`), one cell's distillation, evaluation and record (:mod:`.cell`), the executors
that run cells (:mod:`.executors`) and the command line (:mod:`.cli`).

May import every layer below it; no other layer imports it.
"""
