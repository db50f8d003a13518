"""Money transfers between accounts: a small sagakit app (three services, one saga)."""
