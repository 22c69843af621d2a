"""Where a resumed run starts: the newest checkpoint that verifies, whose tables hold
exactly its rows, common to every running member.

A checkpoint that fails its checksum, is empty, or lacks its checksum beside a
verified one is skipped, and said in one line; tables that do not match the
checkpoint are refused with the ``resume.rebuild=true`` offer (rebuild: the newest
checkpoint they do match, else step 0). Checkpoints after the chosen step are moved
aside (``<run dir>/.replaced/``), never deleted; the tables are truncated to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnlab.engine.step import TrainState, stack, unstack
from bnlab.errors import UserError, say
from bnlab.record.checkpoint import Checkpoints
from bnlab.record.integrity import table_digest, table_problems
from bnlab.record.tables import RunRecord


def ended(summary: dict[str, Any] | None, steps: int) -> bool:
    """Whether a member's record is complete for a run of ``steps`` steps (a finished
    run asked for more steps continues)."""
    if not summary:
        return False
    return summary["status"] == "diverged" or (
        summary["status"] == "finished" and summary["step"] >= steps
    )


def read_summary(record: RunRecord) -> dict[str, Any] | None:
    try:
        return record.read_summary()
    except ValueError as e:  # garbled: the tables and checkpoints say where the run is
        say(f"warning: {record.dir}/summary.json is unreadable ({e}); checking the tables")
        return None


def digests(frames: dict[str, Any], step: int) -> dict[str, Any]:
    """The digests a checkpoint at ``step`` keeps of the tables just written."""
    return {n: table_digest(n, df[df["step"] <= step].reset_index(drop=True))
            for n, df in frames.items()}  # fmt: skip


def good_steps(ck: Checkpoints, rec: RunRecord, cfg: Any) -> list[int]:
    """The steps, newest first, whose checkpoint verifies and whose tables match it."""
    steps = sorted(ck.steps(), reverse=True)
    checks = {s: ck.verify(s) for s in steps}
    trusted = [s for s in steps if checks[s] is None]
    if not trusted:  # written before checksums, or killed before its first one
        trusted = [s for s in steps if checks[s] == "has no checksum"]
    skipped = [s for s in steps if s not in trusted and (not trusted or s > trusted[0])]
    if skipped:
        s = skipped[0]
        then = f"the one at step {trusted[0]}" if trusted else "step 0"
        say(f"warning: {rec.dir}: the checkpoint at step {s} {checks[s]}; resuming from "
            f"{then}, the tables truncated to it (set aside in .replaced/)")  # fmt: skip
    out = []
    for s in trusted:
        sums = ck.checksums(s) or {}
        probs = table_problems(rec.dir, s, sums.get("tables"), cfg.probe.every,
                               cfg.probe.ics_every)  # fmt: skip
        if not probs:
            out.append(s)
        elif not out and not cfg.resume.rebuild:
            raise UserError(
                f"the tables of {rec.dir} do not match its checkpoint at step {s} "
                f"({'; '.join(probs[:3])}): add resume.rebuild=true to continue from the "
                "newest checkpoint they match (or from step 0)"
            )
        elif not out:
            say(f"resume.rebuild: {rec.dir}: the tables do not match the checkpoint at step "
                f"{s} ({'; '.join(probs[:2])}); trying an older one")  # fmt: skip
    return out


def resume_point(loop: Any, states: TrainState) -> tuple[int, TrainState] | None:
    """Member states at the newest step every running member can resume from, each
    record truncated to it; None: from step 0 (the unusable checkpoints set aside)."""
    cfg, ckpts, records = loop.cfg, loop.ckpts, loop.records
    members = [unstack(states, i) for i in range(len(loop.ms))]
    good = {i: good_steps(ckpts[i], records[i], cfg) for i in loop.running}
    common = sorted(set.intersection(*(set(g) for g in good.values())), reverse=True)
    at, restored = -1, {}
    for s in common:
        try:
            restored = {i: ckpts[i].restore(members[i], s) for i in loop.running}
        except Exception as e:  # verified, yet Orbax cannot read it (another version?)
            first = (str(e).strip().splitlines() or [""])[0][:120]
            say(f"warning: the checkpoint at step {s} is unreadable "
                f"({type(e).__name__}: {first}); trying an older one")  # fmt: skip
            continue
        at = s
        break
    moved = [ckpts[i].drop_after(at, records[i].dir) for i in loop.running]
    if at < 0:
        if any(moved):
            say(
                "no checkpoint to resume from: training from step 0 (the checkpoints were "
                "set aside in .replaced/)"
            )
        return None
    for i in loop.running:
        members[i] = restored[i]
        records[i].truncate(at)
    for i, d in enumerate(loop.done):
        if d:  # a finished or diverged member of a sweep stays as it is
            members[i] = members[i].replace(alive=np.zeros((), bool))
    say(f"resumed from the checkpoint at step {at}")
    return at, loop.engine.place_states(stack(members))
