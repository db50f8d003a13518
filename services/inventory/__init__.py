"""Inventory: reserves stock for orders (ReserveStock / ReleaseStock)."""
