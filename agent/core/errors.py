"""One error hierarchy, with a transient branch (the only one retried), and exit codes."""

from __future__ import annotations

# Named exit codes, so supervisor's ``exitcodes=`` can tell bad configuration from a crash.
RET_OK = 0
RET_USAGE = 2  # click's own code for usage errors
RET_SOFTWARE = 70  # EX_SOFTWARE: an unexpected internal error
RET_CONFIG = 78  # EX_CONFIG: retrying cannot help; supervisor must not loop on it


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """Bad configuration: reported once, clearly, with RET_CONFIG."""


class SpoolError(AgentError):
    """The spool cannot be written (disk full, read-only, permissions)."""


class SpecError(AgentError):
    """A spec file that cannot be used: empty, truncated, not JSON, wrong version."""

    def __init__(self, message: str, flow_run_id: str | None = None) -> None:
        super().__init__(message)
        self.flow_run_id = flow_run_id


class JobVariableError(AgentError):
    """A job variable of the wrong type; fails only the run that has it."""


class ApiError(AgentError):
    """An API call failed; ``call`` names it, the message gives the server's reason."""

    def __init__(self, call: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{call}: {message}")
        self.call = call
        self.status = status


class TransientApiError(ApiError):
    """Connection error, timeout, 429, 502, 503 or 504: worth retrying."""

    def __init__(
        self,
        call: str,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(call, message, status)
        self.retry_after = retry_after


class AuthError(ApiError):
    """401/403: the key or auth string is wrong; retrying cannot help."""


class NotFoundError(ApiError):
    """404: the object (pool, queue, deployment, flow run) does not exist."""


class ApiShapeError(ApiError):
    """An answer that is not what the Prefect API sends (HTML, JSON of another shape):
    the URL reaches something else, or a proxy is in the way. Not retried in a call."""
