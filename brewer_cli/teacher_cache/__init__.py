"""The teacher-output cache (`distillation.teacher_cache`, DESIGN §9).

A teacher is frozen and in eval mode, and brewer never changes an example's inputs between epochs
(augmentation runs before training, into a file), so what the teacher says about example i is the
same in every epoch. The cache keeps it from the first time it is computed, keyed by the example's
index (`batch["index"]`), and hands it back from then on; a batch whose examples are all cached
skips the teacher's forward pass entirely, one with some misses runs the teacher on those only.

What is kept, per teacher the losses read:
- the logits, in fp32 and always in memory (one row per example, or the example's own tokens for
  token-level tasks) — exactly the values the teacher gave;
- the features the matches read (the listed layers' hidden states, attention scores or attention
  inputs, nothing else), in fp16, trimmed to the example's own length (scores: L_i × L_i) and laid
  end to end with offsets computed from the tokenized lengths: in memory (`memory`) or in a file
  read example by example (`disk`). Padding positions come back as zeros; every loss masks them.

`prefill` (prefill.py) fills everything in one teacher pass before training, into a store beside
the runs that later runs and --resume share; `memory` and `disk` fill lazily, as below. `auto`
prefills, in memory while the estimate adds at most `MEMORY_MARGIN` to the run's own peak memory
(and fits `MEMORY_BUDGET_BYTES`), on disk when it fits half the free space where the run is written, and is off otherwise — and off for a run of one epoch or less,
where no example is seen twice. The dry-run plan says which and why.

The lazily filled cache:

Both modes write what they hold to `runs/<name>/teacher_cache/` at every checkpoint (each example
once), with a fingerprint of the teacher weights, tokenizer, tokenized data, max length, features
and precision. `--resume` reuses it only when the fingerprint matches and refuses otherwise.
Each example carries the step at which it was filled: on resume from step S only entries filled
before S count, so a resumed run sees exactly the cache the uninterrupted run had at step S.

Several processes: each caches the examples it sees (lazy fill) in its own directory
(`process-<rank>/`); nothing is exchanged between processes.
"""

from __future__ import annotations

from brewer_cli.teacher_cache.cache import (
    DIRECTORY_NAME,
    FORMAT_VERSION,
    CacheCounts,
    TeacherCache,
    fingerprint,
    open_teacher_cache,
)
from brewer_cli.teacher_cache.layout import FEATURE_KINDS, FP16_MAX, Layout, Part, TeacherRead, example_lengths, probe_layout
from brewer_cli.teacher_cache.plan import DISK_SHARE, MEMORY_BUDGET_BYTES, MEMORY_MARGIN, MODES, CachePlan, plan_cache
from brewer_cli.teacher_cache.store import SlotStore

__all__ = [
    "DIRECTORY_NAME",
    "DISK_SHARE",
    "FEATURE_KINDS",
    "FORMAT_VERSION",
    "FP16_MAX",
    "MEMORY_BUDGET_BYTES",
    "MEMORY_MARGIN",
    "MODES",
    "CacheCounts",
    "CachePlan",
    "Layout",
    "Part",
    "SlotStore",
    "TeacherCache",
    "TeacherRead",
    "example_lengths",
    "fingerprint",
    "open_teacher_cache",
    "plan_cache",
    "probe_layout",
]
