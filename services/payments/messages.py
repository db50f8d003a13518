"""The payments service's contract: the commands it handles and the replies it sends."""

from sagakit import Command, Reply


class CreditReserved(Reply, type="payments.CreditReserved"):
    order_id: str


class CreditLimitExceeded(Reply, type="payments.CreditLimitExceeded"):
    order_id: str
    requested: int
    available: int

    @property
    def reason(self) -> str:
        return f"credit limit exceeded: {self.requested} requested, {self.available} available"


class CreditReleased(Reply, type="payments.CreditReleased"):
    order_id: str


class ReserveCredit(
    Command, type="payments.ReserveCredit", replies=(CreditReserved, CreditLimitExceeded)
):
    order_id: str
    customer_id: str
    amount: int


class ReleaseCredit(Command, type="payments.ReleaseCredit", replies=(CreditReleased,)):
    order_id: str
    customer_id: str
