"""A small order service on FastAPI: reserve stock, charge the card, ship; a failed order is undone.

Run it with ``uvicorn examples.fastapi_service:app`` (from the repository root) or
``python examples/fastapi_service.py``; the runs are kept in ``sqlite:///orders.db`` unless
``ORDERS_STORE`` names another store (``postgresql://...`` with the ``postgres`` extra).

- ``POST /orders`` runs the order flow inline and answers with the run's view: 201 when the order went
  through, 402 when it was undone (the card was declined: the charge failed and the stock was released), 409
  for an order id already placed. If the client hangs up first, the order is cancelled, which undoes it.
- ``/ckflow/...`` is ckflow's router: ``GET /ckflow/runs``, ``GET /ckflow/runs/{id}``, ``POST /ckflow/runs``
  ``{"flow": "order", "inputs": {...}}`` (answers at once), suspend, resume, cancel, ...
- The engine recovers on start: after a crash or a restart, the orders that were going resume where they were,
  without running again what had succeeded.

Try: ``curl -s localhost:8000/orders -H 'content-type: application/json'
-d '{"order_id": "o-1", "sku": "mug", "quantity": 2, "amount_cents": 1800, "card": "4242424242424242"}'``
(cards: ``4000000000000002`` is declined, ``4000000000000119`` fails once in the payment gateway and is retried).
"""

from __future__ import annotations

import os

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

import ckflow
import ckflow.fastapi
from ckflow import Checkpoint, Linear, Retry, task

DECLINED = "4000000000000002"
#: the payment gateway times out on the first try with this card
FLAKY = "4000000000000119"

#: stand-ins for the warehouse and the payment provider this service would call
stock: dict[str, int] = {"mug": 10, "lamp": 3}
payments: dict[str, int] = {}


class Order(BaseModel):
    order_id: str = Field(min_length=1, max_length=64)
    sku: str
    quantity: int = Field(gt=0)
    amount_cents: int = Field(gt=0)
    card: str = Field(pattern=r"^[0-9]{12,19}$")


class CardDeclined(Exception):
    """The payment provider refused the card: no retry will change that."""


@task(provides="reservation")
async def reserve_stock(order_id: str, sku: str, quantity: int) -> str:
    if stock.get(sku, 0) < quantity:
        raise LookupError(f"only {stock.get(sku, 0)} of {sku!r} left, order {order_id} wants {quantity}")
    stock[sku] -= quantity
    return f"rsv-{order_id}"


@reserve_stock.revert
async def release_stock(sku: str, quantity: int, result: object) -> None:
    stock[sku] += quantity


@task(provides="payment")
async def charge(order_id: str, amount_cents: int, card: str) -> str:
    if card == DECLINED:
        raise CardDeclined(f"card ending {card[-4:]} declined for order {order_id}")
    if card == FLAKY and ckflow.current().attempt == 1:
        raise ConnectionError("payment gateway timed out")
    payments[order_id] = amount_cents
    return f"pay-{order_id}"


@charge.revert
async def refund(order_id: str, result: object) -> None:
    payments.pop(order_id, None)


@task(provides="tracking")
async def ship(order_id: str, reservation: str, payment: str) -> str:
    return f"trk-{order_id}"


order_flow = Linear(
    "order",
    reserve_stock,
    # a gateway time-out is retried (charge reverted and run again); a declined card reverts the whole order
    Checkpoint("payment", retry=Retry(attempts=3, delay=0.05, retry_on=ConnectionError)),
    charge,
    ship,
)
# registered, so that an engine that recovers an order after a restart can rebuild its flow, and for /ckflow/runs
ckflow.register_flow("order", order_flow)

app = FastAPI(title="orders", lifespan=ckflow.fastapi.lifespan(os.environ.get("ORDERS_STORE", "sqlite:///orders.db")))
app.include_router(ckflow.fastapi.router(), prefix="/ckflow")


@app.post("/orders", status_code=201)
async def place_order(body: Order, request: Request) -> ckflow.RunView:
    """Place the order; answers once it has gone through (201) or been undone (402); the same order again is 409."""
    # A run that cannot start is already an HTTP error (here: the order's run id taken, 409), as POST /runs's are.
    view = await ckflow.fastapi.run(request, order_flow, inputs=body.model_dump(), run_id=f"order-{body.order_id}")
    if view.state is not ckflow.FlowState.SUCCESS:
        raise HTTPException(402, detail=view.model_dump(mode="json"))
    return view


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
