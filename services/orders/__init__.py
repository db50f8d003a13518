"""Orders: creates orders PENDING, starts the place-order saga, approves or rejects them."""
