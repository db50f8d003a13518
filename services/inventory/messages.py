"""The inventory service's contract."""

from sagakit import Command, Reply


class StockReserved(Reply, type="inventory.StockReserved"):
    order_id: str


class OutOfStock(Reply, type="inventory.OutOfStock"):
    order_id: str
    product_id: str
    requested: int
    available: int

    @property
    def reason(self) -> str:
        return (
            f"out of stock: {self.requested} of {self.product_id} requested, {self.available} left"
        )


class StockReleased(Reply, type="inventory.StockReleased"):
    order_id: str


class ReserveStock(Command, type="inventory.ReserveStock", replies=(StockReserved, OutOfStock)):
    order_id: str
    product_id: str
    quantity: int


class ReleaseStock(Command, type="inventory.ReleaseStock", replies=(StockReleased,)):
    order_id: str
    product_id: str
