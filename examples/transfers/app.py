"""The app: `sagakit run transfers.app:app --embedded` (from the examples directory)."""

from sagakit import App

from .saga import transfer
from .services import fraud, ledger, notifier

app = App("transfers", sagas=[transfer], services=[ledger, fraud, notifier])
