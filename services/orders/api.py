"""The orders service's HTTP contract (what the load generator and people call)."""

#: POST one order (a JSON object) or several (``{"orders": [...]}``): 202 with their ids.
ORDERS_PATH = "/orders"
