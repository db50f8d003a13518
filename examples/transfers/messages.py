"""The contract between the transfer saga and its three services."""

from sagakit import Command, Reply


class Debited(Reply, type="ledger.Debited"):
    balance: int


class InsufficientFunds(Reply, type="ledger.InsufficientFunds"):
    balance: int


class Refunded(Reply, type="ledger.Refunded"):
    pass


class Deposited(Reply, type="ledger.Deposited"):
    pass


class Cleared(Reply, type="fraud.Cleared"):
    pass


class Blocked(Reply, type="fraud.Blocked"):
    reason: str


class Withdrawn(Reply, type="fraud.Withdrawn"):
    pass


class Notified(Reply, type="notifier.Notified"):
    pass


class Debit(Command, type="ledger.Debit", replies=(Debited, InsufficientFunds)):
    transfer_id: str
    account: str
    amount: int


class Refund(Command, type="ledger.Refund", replies=(Refunded,)):
    transfer_id: str
    account: str
    amount: int


class Deposit(Command, type="ledger.Deposit", replies=(Deposited,)):
    transfer_id: str
    account: str
    amount: int


class Screen(Command, type="fraud.Screen", replies=(Cleared, Blocked)):
    transfer_id: str
    source: str
    amount: int


class Withdraw(Command, type="fraud.Withdraw", replies=(Withdrawn,)):
    """The transfer did not go through: its screening no longer counts."""

    transfer_id: str


class Notify(Command, type="notifier.Notify", replies=(Notified,)):
    transfer_id: str
    account: str
    text: str
