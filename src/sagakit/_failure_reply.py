"""The reply the framework itself sends when a participant cannot answer a command."""

from __future__ import annotations

from ._messages import Reply


class HandlerFailed(Reply, type="sagakit.HandlerFailed"):
    """A participant could not handle a command: its handler still raised (or timed out)
    after its attempts, or the service has no handler for the command's type.

    Nothing the handler wrote was kept (each run is a savepoint), so the command took no
    effect. The saga treats it as a failure of the step: it retries per the step's
    policy, then compensates; in compensation it retries, then parks the saga as
    FAILED_NEEDS_ATTENTION with the error as the reason. The command also went to the
    service's DLQ with the same error.
    """

    service: str
    command_type: str
    error_type: str
    error: str
    attempts: int

    def describe(self) -> str:
        """One line for a saga's failure reason."""
        tries = f" after {self.attempts} attempt(s)" if self.attempts else ""
        return f"{self.service} failed{tries}: {self.error_type}: {self.error}"
