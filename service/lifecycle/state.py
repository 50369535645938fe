"""Study states: the transition table, the only status writer, the budget and "done".

Every function takes a session and never commits (the caller owns the transaction).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import ColumnElement, func, select, true, update
from sqlalchemy.orm import Session

from service.lifecycle.tables import optuna_studies, optuna_trials
from service.models import Study

__all__ = [
    "ACTIVE",
    "FINAL",
    "RESUMABLE",
    "ResumeRefused",
    "STALE_ERROR",
    "TRANSITIONS",
    "transition",
    "claim_slot",
    "release_slot",
    "give_back_claims",
    "request_stop",
    "timed_out",
    "not_done_reason",
    "claims_without_trial",
    "final_status",
    "vanished_error",
    "fail_vanished",
    "failed_slots",
    "resume",
]

# Which status may follow which. ``completed``/``stopped`` -> ``failed`` only for a study whose
# Optuna study vanished (its results are gone; showing it as completed with 0 trials misleads).
# ``stopped``/``completed``/``failed`` -> ``queued`` is a resume (:func:`resume`).
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "stopping", "stopped", "completed", "failed", "deleted"}),
    "running": frozenset({"stopping", "completed", "failed"}),
    "stopping": frozenset({"stopped", "failed"}),
    "stopped": frozenset({"queued", "failed", "deleted"}),
    "completed": frozenset({"queued", "failed", "deleted"}),
    "failed": frozenset({"queued", "deleted"}),
    "deleted": frozenset(),
}
RESUMABLE: tuple[str, ...] = tuple(s for s, targets in TRANSITIONS.items() if "queued" in targets)
ACTIVE: tuple[str, ...] = ("queued", "running", "stopping")  # statuses workers look at
FINAL: tuple[str, ...] = ("stopped", "completed", "failed", "deleted")  # set ``finished_at``
STALE_ERROR = "no heartbeat within the grace period: its worker died or lost the database"
FIRST_ERROR_CHARS = 300  # of the first trial's error in a failed study's error
ERROR_CHARS = 4000
_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _storable(error: str) -> str:
    """An error text every database stores: control characters (PostgreSQL refuses NUL in
    text) become ``?``, and at most :data:`ERROR_CHARS` characters."""
    return _UNSTORABLE.sub("?", error)[:ERROR_CHARS]


def transition(
    session: Session,
    study_id: int,
    to: str,
    *,
    from_: Sequence[str] | None = None,
    where: ColumnElement[bool] | None = None,
    error: str | None = None,
    also: dict[str, Any] | None = None,
) -> bool:
    """Move study ``study_id`` to ``to`` if its status is one of ``from_`` (default: every
    status :data:`TRANSITIONS` allows to reach ``to``) and ``where`` holds; whether it moved.

    Final states get ``finished_at``; ``running`` gets ``started_at`` (once); ``error`` is
    stored made safe for the database (see :func:`_storable`); ``also``: further columns
    written in the same statement (a resume's budget).
    """
    allowed = [s for s, targets in TRANSITIONS.items() if to in targets]
    sources = allowed if from_ is None else [s for s in from_ if s in allowed]
    if not sources:
        raise ValueError(f"no transition to {to!r} from {list(from_ or [])}")
    now = datetime.now(UTC)
    values: dict[str, Any] = {"status": to, "updated_at": now}
    if to in FINAL:
        values["finished_at"] = now
    if to == "running":
        values["started_at"] = func.coalesce(Study.started_at, now)
    if error is not None:
        values["error"] = _storable(error)
    values.update(also or {})
    result = session.execute(
        update(Study)
        .where(
            Study.id == study_id, Study.status.in_(sources), where if where is not None else true()
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def claim_slot(session: Session, study_id: int) -> int | None:
    """Atomically take one trial from the study-wide budget: the claim's index (0 for the
    study's first claim), or None when the budget is used up or the study takes no trials.
    The first claim moves a ``queued`` study to ``running``."""
    claimed = session.scalar(
        update(Study)
        .where(
            Study.id == study_id,
            Study.n_claimed < Study.n_trials,
            Study.status.in_(("queued", "running")),
        )
        .values(n_claimed=Study.n_claimed + 1, updated_at=datetime.now(UTC))
        .returning(Study.n_claimed)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        return None
    transition(session, study_id, "running", from_=("queued",))
    return int(claimed) - 1


def release_slot(session: Session, study_id: int) -> None:
    """Give one claimed unit back (a claim whose ``ask()`` popped a retry instead)."""
    session.execute(
        update(Study)
        .where(Study.id == study_id, Study.n_claimed > 0)
        .values(n_claimed=Study.n_claimed - 1)
        .execution_options(synchronize_session=False)
    )


def give_back_claims(session: Session, study_id: int, claimed: int, trials: int) -> bool:
    """Set ``n_claimed`` from ``claimed`` back to ``trials`` (claims whose trial was never
    created), only if no claim happened meanwhile."""
    result = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.n_claimed == claimed)
        .values(n_claimed=trials)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def request_stop(session: Session, study_id: int) -> bool:
    """Ask the workers to stop: a study that never got a claim stops at once, one with claims
    becomes ``stopping`` (its trials end within a few steps). False when it is neither
    queued nor running. Conditional updates: a claim at the same moment cannot be missed."""
    never_started = Study.n_claimed == 0
    if transition(session, study_id, "stopped", from_=("queued",), where=never_started):
        return True
    return transition(session, study_id, "stopping", from_=("queued", "running"))


def timed_out(timeout_s: float | None, started_at: datetime | None) -> bool:
    """Whether a study's ``timeout_s`` (counted from its first claim) has passed."""
    if timeout_s is None or started_at is None:
        return False
    return (datetime.now(UTC) - started_at).total_seconds() > timeout_s


def not_done_reason(row: Study, trials: Sequence[FrozenTrial], *, timed_out: bool) -> str | None:
    """Why study ``row`` is not finished yet, given all of its trials; None when it is done.

    Done: nothing RUNNING and (the timeout passed, or every claim became a trial and nothing is
    WAITING). A claim between its ``UPDATE`` and ``ask()`` has no trial yet: the study stays
    open (the reason starts with ``"{trials} trials for {claims} claims"``).
    """
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    if running:
        return f"trials {running} RUNNING"
    if timed_out:
        return None
    if row.n_claimed < row.n_trials:
        return f"{row.n_claimed}/{row.n_trials} claimed"
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    if waiting:
        return f"trials {waiting} WAITING"
    if missing := claims_without_trial(row, trials):
        return f"{row.n_claimed - missing} trials for {row.n_claimed} claims"
    return None


def claims_without_trial(row: Study, trials: Sequence[FrozenTrial]) -> int:
    """Claims of study ``row`` that have no trial (yet) once its budget is used up and nothing
    RUNNING or WAITING keeps it open: the claim's ``UPDATE`` committed but its ``ask()`` did
    not (in progress, or its worker died in between). Retries are not claims."""
    if row.n_claimed < row.n_trials:
        return 0
    if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
        return 0
    originals = sum(1 for t in trials if "failed_trial" not in t.system_attrs)
    return max(row.n_claimed - originals, 0)


def trial_error(trial: FrozenTrial) -> str | None:
    """A trial's error (user attr ``error``; only the heartbeat check fails without one)."""
    error = trial.user_attrs.get("error")
    if error is None and trial.state == TrialState.FAIL:
        return STALE_ERROR
    return None if error is None else str(error)


def final_status(trials: Sequence[FrozenTrial]) -> tuple[str, str | None]:
    """``(status, error)`` for a study that is done: ``completed`` when a trial COMPLETEd or
    was PRUNED (or none failed); ``failed`` when every finished trial FAILed, with ``error`` =
    "all N trials failed; first error: ..."."""
    if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
        return "completed", None
    failed = sorted((t for t in trials if t.state == TrialState.FAIL), key=lambda t: t.number)
    if not failed:
        return "completed", None
    originals = sum(1 for t in failed if "failed_trial" not in t.system_attrs)
    retries = len(failed) - originals
    first = trial_error(failed[0]) or "no error recorded"
    if len(first) > FIRST_ERROR_CHARS:
        first = first[: FIRST_ERROR_CHARS - 3] + "..."
    counted = f"all {originals} trials failed" if originals != 1 else "the only trial failed"
    if retries:
        counted += f" ({retries} retries too)"
    return "failed", f"{counted}; first error: {first}"


def vanished_error(optuna_name: str) -> str:
    return (
        f"its Optuna study {optuna_name!r} is gone from the database (renamed or deleted "
        "outside BNN-Tune, e.g. in optuna-dashboard); its trials cannot be run or shown"
    )


def fail_vanished(session: Session, older_than_s: float) -> list[int]:
    """Fail every study (not deleted, not failed) created more than ``older_than_s`` ago whose
    Optuna study no longer exists; the ids of the studies failed. (The API creates the Optuna
    study right after committing the row, so a younger one may simply not have it yet.)"""
    exists = select(optuna_studies.c.study_id).where(
        optuna_studies.c.study_name == Study.optuna_study_name
    )
    now = datetime.now(UTC)
    rows = session.execute(
        select(Study.id, Study.optuna_study_name, Study.created_at).where(
            Study.status.not_in(("deleted", "failed")),
            Study.optuna_study_name.is_not(None),
            ~exists.exists(),
        )
    ).all()
    failed = []
    for study_id, name, created in rows:
        if (now - created).total_seconds() < older_than_s:
            continue
        if transition(session, study_id, "failed", error=vanished_error(name)):
            failed.append(study_id)
    return failed


def failed_slots(session: Session, row: Study) -> int:
    """Budget slots of study ``row`` whose trial (and every retry of it) ended FAIL: the claims
    that did not end COMPLETE or PRUNED (each claim ends in at most one of those, its retries
    included), nothing RUNNING or WAITING being left in a finished study."""
    finished = session.scalar(
        select(func.count())
        .select_from(
            optuna_trials.join(
                optuna_studies, optuna_studies.c.study_id == optuna_trials.c.study_id
            )
        )
        .where(
            optuna_studies.c.study_name == row.optuna_study_name,
            optuna_trials.c.state.in_((TrialState.COMPLETE, TrialState.PRUNED)),
        )
    )
    return max(row.n_claimed - int(finished or 0), 0)


class ResumeRefused(ValueError):
    """A resume that cannot be done (wrong status, no budget to run): the reason."""


def resume(session: Session, row: Study, add_trials: int | None) -> int:
    """Queue a stopped, completed or failed study again; the number of trials added.

    The budget grows by ``add_trials``; without it, by the study's failed slots
    (:func:`failed_slots`) when its budget is used up -- so a study whose trials all failed
    (missing data, a bad parameter) runs as many trials again once the cause is fixed -- and by
    nothing while budget is left (a stopped study goes on with the rest). A study with its
    budget used up, nothing failed and no ``add_trials`` is refused (it would complete at
    once). The error is cleared; ``started_at`` too, so ``timeout_s`` counts from the resume.
    Conditional on the status the caller saw: a concurrent resume or delete wins cleanly.
    """
    if row.status not in RESUMABLE:
        raise ResumeRefused(
            f"study {row.id} is {row.status}; only {', '.join(RESUMABLE)} studies can be resumed"
        )
    if add_trials is None:
        add_trials = failed_slots(session, row) if row.n_claimed >= row.n_trials else 0
        if add_trials == 0 and row.n_claimed >= row.n_trials:
            raise ResumeRefused(
                f"study {row.id} used its whole budget ({row.n_trials} trials) and none failed; "
                "give add_trials to run more"
            )
    again = {
        "n_trials": Study.n_trials + add_trials,
        "error": None,
        "started_at": None,
        "finished_at": None,
    }
    if not transition(session, row.id, "queued", from_=(row.status,), also=again):
        raise ResumeRefused(f"study {row.id} changed meanwhile; try again")
    return add_trials
