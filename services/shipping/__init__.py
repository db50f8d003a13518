"""Shipping: schedules shipments; fails for addresses it cannot deliver to."""
