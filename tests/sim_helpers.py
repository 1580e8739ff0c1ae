"""Helpers for the firmware_sim tests: a small Modbus master over real loopback sockets.

The tests observe the simulated piles only through their registers (and the HTTP API), never
through the models' internals.
"""

from __future__ import annotations

import asyncio
import time

from pymodbus.client import AsyncModbusTcpClient

from hw_profiles import registers as rm
from hw_profiles.catalog import default_catalog
from hw_profiles.specs import PileInstance, StationKind, PriceCategory, StationSpec


def station_of(*piles: tuple[str, str], port: int = 0) -> StationSpec:
    """A station of (pile_id, profile) pairs, every pile on a free port (port 0)."""
    cat = default_catalog()
    return StationSpec(
        name="test", kind=StationKind.DISTRIBUTED, site_limit_kw=10_000, price_category=PriceCategory.GENERAL_COMMERCIAL,
        tariff="yunnan-2024", piles=tuple(PileInstance(pid, cat.pile(prof), port=port) for pid, prof in piles),
        catalog=cat,
    )


class Master:
    """A Modbus master on one pile (pymodbus client)."""

    def __init__(self, endpoint: tuple[str, int, int], gun_count: int = 2) -> None:
        self.host, self.port, self.unit = endpoint
        self.gun_count = gun_count
        self.client = AsyncModbusTcpClient(self.host, port=self.port, timeout=0.5, retries=0,
                                           reconnect_delay=0.1, reconnect_delay_max=0.5)

    async def __aenter__(self) -> "Master":
        assert await self.client.connect(), f"cannot connect to {self.host}:{self.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.client.close()

    async def read_words(self, start: int, count: int) -> list[int]:
        rr = await self.client.read_holding_registers(start, count=count, device_id=self.unit)
        assert not rr.isError(), rr
        return rr.registers

    async def read_pile(self) -> tuple[dict, list[dict]]:
        words: list[int] = []
        for start, count in rm.read_plan(self.gun_count):
            words += await self.read_words(start, count)
        return rm.decode_pile(words)

    async def gun(self, gun_no: int) -> dict:
        return (await self.read_pile())[1][gun_no - 1]

    async def header(self) -> dict:
        return (await self.read_pile())[0]

    async def write(self, gun_no: int, name: str, value, *, single: bool = True) -> int | None:
        """Write register ``name`` of a gun; returns the Modbus exception code, or None if accepted."""
        reg = rm.GUN_REGISTER[name]
        words = rm.encode(reg, value)
        return await self.write_raw(rm.gun_address(gun_no, name), words, single=single and len(words) == 1)

    async def write_raw(self, address: int, words: list[int], *, single: bool = False) -> int | None:
        if single:
            rr = await self.client.write_register(address, words[0], device_id=self.unit)
        else:
            rr = await self.client.write_registers(address, words, device_id=self.unit)
        return rr.exception_code if rr.isError() else None

    async def read_error(self, start: int, count: int) -> int | None:
        rr = await self.client.read_holding_registers(start, count=count, device_id=self.unit)
        return rr.exception_code if rr.isError() else None


async def wait_for(check, timeout_s: float = 5.0, interval_s: float = 0.05):
    """Await ``check()`` (an async callable) until it returns a truthy value; returns it."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last: {last!r})")
