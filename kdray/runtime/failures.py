"""Worker failures: which errors a restart would not cure, their record on the run's MLflow run,
and the Train failure policy that does not retry them.

A worker error that would happen again with the same inputs (a user mistake, a data error, a NaN
loss, a shape mismatch: `is_deterministic`) is recorded on the run's MLflow record (tag
`kdray.error` = "Type: message", artifact `error.txt`) and re-raised as `DeterministicError`;
`failure_policy_class` tells a DDP run's Train controller not to retry it, and a one-worker run
(`worker._with_retries`) raises it at once. Anything else (a worker or node lost, a collective
broken by a dead peer, an I/O error) is retried up to `resources.max_failures` times from the
last checkpoint.
"""

from __future__ import annotations

import logging
import re
import traceback

log = logging.getLogger(__name__)

TAG_STATUS = "kdray.status"      # running | finished | stopped | failed | interrupted
TAG_ERROR = "kdray.error"        # "Type: message" of the last failure
TAG_STOPPED = "kdray.stopped"    # asha: stopped early by the scheduler
TAG_ATTEMPTS = "kdray.attempts"  # worker-group starts of the run (1 = never restarted)
ERROR_ARTIFACT = "error.txt"
_REASON_CHARS = 300              # tag and table length of an error reason

# RuntimeError texts that mean a wrong shape or dtype (deterministic), and texts that mean a
# broken collective, a lost peer or memory (infrastructure: retried)
_SHAPE = re.compile(r"shape|size mismatch|must match the size|sizes? of tensors? must match|"
                    r"to match target batch_size|expected input\[|channels|dimension|"
                    r"expected scalar type|should be the same|out of bounds|index out of range",
                    re.I)
_INFRA = re.compile(r"gloo|nccl|connection|timed? ?out|peer|socket|barrier|"
                    r"out of memory|cuda error|broken pipe|heartbeat", re.I)


class DeterministicError(Exception):
    """A worker error the same inputs would raise again; Ray Train does not retry it.

    Carries the original exception's type name, message and traceback as plain strings, so it
    unpickles in the Train controller and the driver without the original's module."""

    def __init__(self, kind: str, message: str, trace: str = "") -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.trace = kind, message, trace

    def __reduce__(self):
        return (self.__class__, (self.kind, self.message, self.trace))


def is_deterministic(exc: BaseException) -> bool:
    """Would `exc` happen again on a restart with the same config, data and checkpoint?

    Yes for user mistakes (`kdray.checks.UserError`), a non-finite loss, programming and data
    errors (ValueError, TypeError, LookupError, AssertionError, ArithmeticError, ...) and
    RuntimeErrors about shapes or dtypes; no for everything that can come from the machine:
    Ray's actor and node errors, torch.distributed errors, OSError, out of memory, and
    RuntimeErrors that name a collective, a connection or a timeout."""
    from kdray.checks import UserError

    if isinstance(exc, DeterministicError | UserError):
        return True
    names = {c.__module__ + "." + c.__name__ for c in type(exc).__mro__}
    if any(n.startswith(("ray.", "torch.distributed")) for n in names) or any(
            "OutOfMemory" in n for n in names):
        return False
    if isinstance(exc, OSError | MemoryError | KeyboardInterrupt | SystemExit):
        return False
    text = str(exc)
    if isinstance(exc, ArithmeticError | ValueError | TypeError | LookupError | AssertionError
                  | AttributeError | NameError | ImportError | NotImplementedError):
        return not _INFRA.search(text) or isinstance(exc, ArithmeticError)
    if isinstance(exc, RuntimeError):
        return bool(_SHAPE.search(text)) and not _INFRA.search(text)
    return False


def reason(exc: BaseException | str | None) -> str:
    """"Type: first line of the message", short enough for a tag and the results table; the
    underlying worker error when `exc` is Ray's wrapper (RayTaskError, WorkerGroupError)."""
    if exc is None:
        return ""
    if isinstance(exc, str):
        return _short(exc)
    exc = _root(exc)
    if isinstance(exc, DeterministicError):
        return _short(f"{exc.kind}: {exc.message}")
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return _short(f"{type(exc).__name__}: {lines[0] if lines else ''}")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def _root(exc: BaseException) -> BaseException:
    """The worker's own error inside Ray's wrappers (a Tune trial's RayTaskError around Train's
    WorkerGroupError around the failing ranks' errors), preferring a DeterministicError."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)  # RayTaskError(cause)
        failures = getattr(exc, "worker_failures", None)  # WorkerGroupError
        if failures:
            errs = list(failures.values())
            exc = next((e for e in errs if isinstance(e, DeterministicError)), errs[0])
            exc = getattr(exc, "_base_exc", exc)
        elif isinstance(cause, BaseException) and cause is not exc:
            exc = cause
        else:
            break
    return exc


def count_attempt(tracker) -> int:
    """Rank 0 at every start of a run's worker group: `kdray.attempts` += 1 (a retry or a resumed
    run counts again); a stale `kdray.error` of an earlier attempt is dropped. Returns the count."""
    if not tracker.enabled:
        return 0
    client, run_id = tracker._client, tracker.run_id
    tags = client.get_run(run_id).data.tags if tracker.resumed else {}
    n = int(tags.get(TAG_ATTEMPTS, "0") or 0) + 1
    tracker.set_tag(TAG_ATTEMPTS, n)
    if TAG_ERROR in tags:
        client.delete_tag(run_id, TAG_ERROR)
    return n


def record_failure(tracker, exc: BaseException, rank: int = 0) -> BaseException:
    """Record a failed worker on its MLflow run (rank 0): tag `kdray.error`, `error.txt` with the
    traceback, `kdray.status=failed`, status FAILED. Returns the exception to raise: a
    `DeterministicError` (not retried) for `is_deterministic` errors, else `exc` itself."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    why = reason(exc)
    deterministic = is_deterministic(exc)
    if tracker.enabled:
        try:
            tracker.set_tags({TAG_ERROR: why, TAG_STATUS: "failed"})
            text = (f"{why}\n\nrank: {rank}\nretried by Ray Train: "
                    f"{'no (deterministic)' if deterministic else 'yes, up to max_failures'}\n\n"
                    f"{trace}")
            tracker._client.log_text(tracker.run_id, text, ERROR_ARTIFACT)
            tracker.set_terminated("FAILED")
        except Exception:  # the record must never hide the error itself
            log.exception("could not record the failure on MLflow run %s", tracker.run_id)
    if deterministic and not isinstance(exc, DeterministicError):
        return DeterministicError(type(exc).__name__, str(exc), trace)
    return exc


def failure_policy_class():
    """Ray Train's default failure policy, except that a worker-group failure in which some rank
    raised a `DeterministicError` and no worker was lost is raised at once, never retried."""
    from ray.exceptions import RayActorError
    from ray.train.v2._internal.execution.failure_handling import (
        DefaultFailurePolicy,
        FailureDecision,
    )
    from ray.train.v2.api.exceptions import WorkerGroupError

    class RunFailurePolicy(DefaultFailurePolicy):
        def make_decision(self, training_failed_error):
            if isinstance(training_failed_error, WorkerGroupError):
                errs = [getattr(e, "_base_exc", e)
                        for e in training_failed_error.worker_failures.values()]
                if any(isinstance(e, DeterministicError) for e in errs) and not any(
                        isinstance(e, RayActorError) for e in errs):
                    log.info("[kdray] deterministic worker error, not retried: %s",
                             reason(training_failed_error))
                    return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return RunFailurePolicy
