"""Sample microservices (orders, payments, inventory, shipping) run by `sagakit demo`."""
