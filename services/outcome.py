"""What a business rule of a sample service decided, whichever style coordinates it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

Style = Literal["orchestration", "choreography"]
STYLES: tuple[Style, ...] = ("orchestration", "choreography")


@dataclass(frozen=True, slots=True)
class Outcome:
    """DONE (now or before), refused (with the reason), or ALREADY_UNDONE: the order was
    compensated or expired before this arrived, so nothing is done and nothing follows."""

    kind: Literal["done", "refused", "undone"]
    reason: str = ""

    DONE: ClassVar[Outcome]
    ALREADY_UNDONE: ClassVar[Outcome]

    @classmethod
    def refusal(cls, reason: str) -> Outcome:
        return cls("refused", reason)

    @property
    def refused(self) -> bool:
        return self.kind == "refused"


Outcome.DONE = Outcome("done")
Outcome.ALREADY_UNDONE = Outcome("undone")
