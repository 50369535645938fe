"""The study lifecycle: the one owner of a study's status, its trial budget and its recovery.

Both processes use it: the worker (claims and trains trials) and the API's reaper (a short loop
over :meth:`Lifecycle.reap_once`). Nothing else writes ``bnn_studies.status``.

Contract (every caller may rely on these; every change here must keep them):

* A study's status changes only through :func:`transition`, and only along an edge of
  :data:`TRANSITIONS`. Each change is one conditional ``UPDATE ... WHERE status IN (...)``, so a
  stop or delete that lands at the same moment is never overwritten.
* ``0 <= n_claimed <= n_trials``. A fresh Optuna trial is created only after :func:`claim_slot`
  took one unit of the budget; a WAITING retry of a failed trial consumes none. Hence when a
  study completes, COMPLETE + PRUNED + finally-FAILED trials == ``n_claimed``.
* A RUNNING trial is owned by exactly one live worker, which records a heartbeat at least every
  ``heartbeat_interval_s``. A RUNNING trial whose heartbeat is older than ``grace_period_s`` is
  *stale*: it is failed and (while retries are left) re-enqueued WAITING with the same params.
  One rule for every process (:class:`StaleClock`): no trial is judged stale while this process
  sees the database down, nor within one grace period after it came back, since no worker could
  beat meanwhile.
* A study is ``completed`` (or ``failed`` when every trial failed, :func:`final_status`) once
  its budget is used up and nothing is RUNNING or WAITING, or once its ``timeout_s`` passed and
  nothing runs (:func:`not_done_reason` is the one "budget done" rule).
* A ``stopping`` study starts no trial; its WAITING retries are failed, and it becomes
  ``stopped`` once nothing runs.
* A ``stopped``, ``completed`` or ``failed`` study is queued again only by :func:`resume`: its
  error cleared, ``started_at`` cleared (``timeout_s`` counts from the resume) and its budget
  grown by ``add_trials`` -- by default by its failed slots (:func:`failed_slots`) when the
  budget is used up, by nothing while budget is left. Earlier trials stay (the sampler learns
  from them); the budget invariant above holds across resumes.
* A study whose Optuna study vanished (renamed or deleted in optuna-dashboard, which shares the
  database) ends ``failed`` with an error saying so (:func:`fail_vanished`).
* Every process opens Optuna's storage through :func:`make_storage` (one engine per retry
  policy), on a database that :func:`database_problem` found migrated.
* Database errors split in two (:func:`is_connectivity_error`): a lost connection is retried;
  any other (a NUL byte, a constraint, a value too long) is the data's fault and fails the study
  or trial it belongs to, so one poisoned study never stalls the others.
"""

from service.lifecycle.errors import db_error_text, is_connectivity_error, is_data_error
from service.lifecycle.lifecycle import Lifecycle, StudyContext
from service.lifecycle.recovery import (
    STOPPED_ERROR,
    VOLATILE_ATTRS,
    CleanRetryCallback,
    StaleClock,
    fail_waiting_trials,
    recover,
)
from service.lifecycle.state import (
    ACTIVE,
    FINAL,
    RESUMABLE,
    STALE_ERROR,
    TRANSITIONS,
    ResumeRefused,
    claim_slot,
    fail_vanished,
    failed_slots,
    final_status,
    give_back_claims,
    not_done_reason,
    release_slot,
    request_stop,
    resume,
    timed_out,
    transition,
    vanished_error,
)
from service.lifecycle.storage import DatabaseNotReady, database_problem, make_storage

__all__ = [
    "ACTIVE",
    "FINAL",
    "RESUMABLE",
    "STALE_ERROR",
    "STOPPED_ERROR",
    "TRANSITIONS",
    "VOLATILE_ATTRS",
    "CleanRetryCallback",
    "DatabaseNotReady",
    "ResumeRefused",
    "Lifecycle",
    "StaleClock",
    "StudyContext",
    "claim_slot",
    "database_problem",
    "db_error_text",
    "fail_vanished",
    "fail_waiting_trials",
    "failed_slots",
    "final_status",
    "give_back_claims",
    "is_connectivity_error",
    "is_data_error",
    "make_storage",
    "not_done_reason",
    "recover",
    "release_slot",
    "resume",
    "request_stop",
    "timed_out",
    "transition",
    "vanished_error",
]
