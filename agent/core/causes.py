"""Why a run's process ended: one bounded cause, and the words Prefect shows. Pure.

The worker gathers the facts (the exit status the shim recorded, the OOM kills counted by
the run's cgroup, whether the worker itself stopped the run for a timeout or a
cancellation); this module names the cause. The cause is the ``cause`` label of
``agent_flow_runs_finished_total``, so its values are a closed set.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass


class Cause(enum.Enum):
    EXIT_CODE = "exit_code"  # exited by itself with a code (0 included)
    SIGNAL = "signal"  # killed by a signal the agent did not send
    OOM = "oom"  # the kernel's OOM killer ended it at its memory limit
    TIMEOUT = "timeout"  # the worker stopped it: timeout_seconds passed
    CANCELLED = "cancelled"  # the worker stopped it for a cancellation
    LOST = "lost"  # ended while no agent process watched; exit status unknown
    NOT_STARTED = "not_started"  # settled without a process (refused, final already)
    UNKNOWN = "unknown"  # settled from the outbox, cause not kept


@dataclass(frozen=True)
class Death:
    cause: Cause
    text: str  # "was killed by the OOM killer at its memory limit of 128MiB"


def signal_name(number: int) -> str | None:
    try:
        return signal.Signals(number).name
    except ValueError:
        return None  # a real-time signal, say


def exit_text(returncode: int | None, error: str | None) -> str:
    """How the process ended, in the words of Prefect's process worker."""
    if error:
        return error
    if returncode is None:
        return "exited without recording an exit status"
    if returncode < 0:
        name = signal_name(-returncode)
        if name is None:
            return f"was terminated by signal {-returncode}"
        return f"was terminated by signal {name} ({-returncode})"
    return f"exited with status code {returncode}"


def classify(
    returncode: int | None,
    error: str | None,
    *,
    oom_kills: int = 0,
    memory_limit: str | None = None,
    timeout: float | None = None,
    cancelled: bool = False,
    lost: bool = False,
) -> Death:
    """``oom_kills``: counted by the run's cgroup during the run; ``memory_limit``: the
    limit it ran under, as shown to the user; ``timeout``: set when the worker stopped
    the run because its timeout_seconds passed; ``cancelled``: when it stopped it for a
    cancellation; ``lost``: the exit status was never recorded."""
    plain = exit_text(returncode, error)
    if timeout is not None:
        return Death(Cause.TIMEOUT, f"exceeded timeout_seconds={_number(timeout)} ({plain})")
    if cancelled:
        return Death(Cause.CANCELLED, plain)
    if oom_kills > 0 and (returncode is None or returncode != 0):
        # The kernel's OOM kill is a SIGKILL: a flow may also have caught the MemoryError
        # of a failed allocation first; either way the limit is what ended it.
        at = f" at its memory limit of {memory_limit}" if memory_limit else ""
        return Death(Cause.OOM, f"was killed by the OOM killer{at} ({plain})")
    if lost or returncode is None:
        # No exit status: the shim or the spool lost it, whatever else is known.
        return Death(Cause.LOST, plain)
    if returncode is not None and returncode < 0:
        return Death(Cause.SIGNAL, plain)
    return Death(Cause.EXIT_CODE, plain)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
