"""The contract between the transfer saga and its three services."""

from sagakit import Command, Reply


class Debit(Command, type="ledger.Debit"):
    transfer_id: str
    account: str
    amount: int


class Debited(Reply, type="ledger.Debited"):
    balance: int


class InsufficientFunds(Reply, type="ledger.InsufficientFunds"):
    balance: int


class Refund(Command, type="ledger.Refund"):
    transfer_id: str
    account: str
    amount: int


class Refunded(Reply, type="ledger.Refunded"):
    pass


class Deposit(Command, type="ledger.Deposit"):
    transfer_id: str
    account: str
    amount: int


class Deposited(Reply, type="ledger.Deposited"):
    pass


class Screen(Command, type="fraud.Screen"):
    transfer_id: str
    source: str
    amount: int


class Cleared(Reply, type="fraud.Cleared"):
    pass


class Blocked(Reply, type="fraud.Blocked"):
    reason: str


class Withdraw(Command, type="fraud.Withdraw"):
    """The transfer did not go through: its screening no longer counts."""

    transfer_id: str


class Withdrawn(Reply, type="fraud.Withdrawn"):
    pass


class Notify(Command, type="notifier.Notify"):
    transfer_id: str
    account: str
    text: str


class Notified(Reply, type="notifier.Notified"):
    pass
