"""Child process for the crash test: commit one change with its event, announce the event id,
then wait to be SIGKILLed before anything is published."""

from __future__ import annotations

import sys

import anyio

from shared.aws import AwsClients
from shared.outbox import ItemRef, UnitOfWork

from ._outbox_support import OrderChanged


async def main(table: str) -> None:
    async with AwsClients() as aws:
        uow = UnitOfWork(aws)
        order = await uow.load(ItemRef(table=table, key={"pk": "o-1"}))
        uow.save(order, {"status": "placed"}, events=[OrderChanged(step=1)])
        (envelope,) = await uow.commit()
        print(f"committed {envelope.id}", flush=True)
        await anyio.sleep(60)  # "before publish": the parent kills us here


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
