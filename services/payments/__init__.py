"""Payments: holds customer credit for orders (ReserveCredit / ReleaseCredit)."""
