"""What a caching run did, call by call: shared by every method, kept for logs, reports and tests."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CallRecord:
    """One model call: its sampler step, CFG branches, each branch's measured change, the verdict."""

    step: int
    branches: tuple[Hashable, ...]
    rel_l1: tuple[float | None, ...]  # the method's relative L1 signal per branch (None: not measured)
    computed: bool
    signal: tuple[float | None, ...] = ()  # per branch, what was compared with the threshold (TeaCache: the sum)


def computed_after_all(records: list[CallRecord], branches: tuple[Hashable, ...]) -> None:
    """The last call of these branches was decided as cached, but its replay failed and it computed instead.

    Found by its branches, not as the last record: parallel branch calls (multi-GPU) interleave.
    """
    index = max(i for i, record in enumerate(records) if record.branches == branches)
    records[index] = replace(records[index], computed=True)


@dataclass(frozen=True)
class RunSummary:
    """One sampling run of a method."""

    total_steps: int
    records: tuple[CallRecord, ...] = ()
    disabled: str | None = None  # why the method was off for this run (or from some call on)

    @property
    def calls(self) -> int:
        return len(self.records)

    @property
    def calls_computed(self) -> int:
        return sum(r.computed for r in self.records)

    @property
    def steps_computed(self) -> int:
        """Steps in which at least one call computed."""
        return len({r.step for r in self.records if r.computed})

    @property
    def skipped_steps(self) -> list[int]:
        """Steps in which no call computed."""
        computed = {r.step for r in self.records if r.computed}
        return sorted({r.step for r in self.records} - computed)
