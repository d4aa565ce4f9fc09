"""The record of every study that did not get the full ensemble's prediction, and why.

Filled by the inference pipeline while it runs and printed as a summary at the end, so a Kaggle log
shows at a glance how many of the hidden studies fell back to the prior or lost a member. Kinds:

- ``absent``       named in test.csv, no folder in test_images                -> prior
- ``bad_uid``      the test.csv UID is not a DICOM UID, so it is never a path  -> prior
- ``unreadable``   the folder has no (or too few) readable slices             -> prior
- ``slices``       some slices were corrupt and skipped; the rest were used   -> prediction as usual
- ``localiser``    localisation failed; vertebra crops from an even split      -> prediction as usual
- ``member``       one member failed on the study; the others predicted        -> remaining members
- ``all_members``  every member failed                                         -> prior
- ``not_requested`` beyond limit_studies                                       -> prior
- ``error``        anything else that went wrong with the study (scratch disk) -> prior
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

USES_PRIOR = {"absent", "bad_uid", "unreadable", "all_members", "not_requested", "error"}


@dataclass
class FallbackLog:
    events: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, uid: str, detail: str = "") -> None:
        self.events[kind].append((uid, detail))

    def count(self, kind: str) -> int:
        return len(self.events.get(kind, []))

    def uids(self, kind: str) -> list[str]:
        return [uid for uid, _ in self.events.get(kind, [])]

    def prior_studies(self) -> set[str]:
        return {uid for kind in USES_PRIOR for uid in self.uids(kind)}

    def summary(self, n_studies: int, prior_source: str, show: int = 5) -> str:
        lines = [f"[summary] {n_studies} studies; {n_studies - len(self.prior_studies())} predicted by the models, "
                 f"{len(self.prior_studies())} given the prior ({prior_source})"]
        if not self.events:
            lines.append("[summary] no fallback was needed")
        for kind in sorted(self.events):
            items = self.events[kind]
            action = "prior" if kind in USES_PRIOR else "kept"
            lines.append(f"[summary] {kind} ({action}): {len(items)} studies")
            for uid, detail in items[:show]:
                lines.append(f"    {uid}: {detail}" if detail else f"    {uid}")
            if len(items) > show:
                lines.append(f"    ... and {len(items) - show} more")
        return "\n".join(lines)
