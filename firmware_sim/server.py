"""Modbus TCP servers for simulated piles: the ONLY module of evstack that imports pymodbus.

One :class:`ModbusPileServer` listens on one (host, port) and answers for one or more unit ids,
each backed by a :class:`UnitHandler` (in practice a pile of :mod:`firmware_sim.station`).
The pymodbus ``SimDevice`` action hook does all the work:

* a read fills the register block from ``handler.read_words()`` (the pile's whole register
  image, encoded by :mod:`hw_profiles.registers`) before pymodbus slices the reply out of it;
* a write (FC6 / FC16) goes to ``handler.write(address, words)``; a returned exception code
  (2 or 3) is sent to the master and nothing is applied;
* while ``handler.silent()`` (an injected communication drop) requests are not applied and
  no reply leaves the server: the packet tracer swallows it, as a pulled cable would.

Only function codes 3, 4 (reads), 6 and 16 (writes) are served; others get exception 01.
Addresses beyond the pile's register span get exception 02 from pymodbus itself; an unknown
unit id gets exception 0B (gateway target failed to respond).
"""

from __future__ import annotations

import functools
import logging
from typing import Protocol

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

_READ_FC = frozenset({3, 4})
_WRITE_FC = frozenset({6, 16})

log = logging.getLogger(__name__)


class UnitHandler(Protocol):
    """What a server needs of the device behind a unit id."""

    span_words: int  # registers from address 0 that exist

    def read_words(self) -> list[int]: ...

    def write(self, address: int, words: list[int]) -> int | None: ...

    def silent(self) -> bool: ...


async def _action(handler: UnitHandler, fc: int, start: int, address: int, count: int,
                  regs: list[int], set_values) -> ExcCodes | None:
    # never raise from here: pymodbus would log a traceback and answer 04
    try:
        if handler.silent():
            return ExcCodes.DEVICE_BUSY  # not sent: _Tracer drops every reply of a silent unit
        if set_values is not None:
            if fc not in _WRITE_FC:
                return ExcCodes.ILLEGAL_FUNCTION
            code = handler.write(address, [int(v) for v in set_values])
            return ExcCodes(code) if code else None
        if fc not in _READ_FC and fc not in _WRITE_FC:  # FC6 reads back after the write
            return ExcCodes.ILLEGAL_FUNCTION
        words = handler.read_words()
        regs[0 - start: len(words) - start] = words
        return None
    except Exception:  # pragma: no cover - a bug; keep serving, say so once per request
        log.exception("simulated pile failed to handle fc=%s address=%s count=%s", fc, address, count)
        return ExcCodes.DEVICE_FAILURE


async def _no_such_unit(fc, start, address, count, regs, set_values):
    return ExcCodes.GATEWAY_NO_RESPONSE


class _Tracer:
    """Drops replies of silent units (communication drop), identified by the MBAP unit id."""

    def __init__(self, units: dict[int, UnitHandler]) -> None:
        self.units = units

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if sending and len(data) > 6:
            h = self.units.get(data[6])
            if h is not None and h.silent():
                return b""
        return data


class ModbusPileServer:
    """A Modbus TCP server on (host, port) for the given unit ids."""

    def __init__(self, host: str, port: int, units: dict[int, UnitHandler]) -> None:
        self.host = host
        self.requested_port = port
        self.port = port
        self.units = units
        self._server: ModbusTcpServer | None = None

    async def start(self) -> int:
        """Listen; returns the port (the chosen one when asked for port 0). Raises OSError if taken."""
        devices = [
            SimDevice(id=uid, simdata=[SimData(0, count=h.span_words, values=0, datatype=DataType.REGISTERS)],
                      action=functools.partial(_action, h))
            for uid, h in sorted(self.units.items())
        ]
        devices.append(SimDevice(id=0, simdata=[SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
                                 action=_no_such_unit))
        server = ModbusTcpServer(devices, address=(self.host, self.requested_port), trace_packet=_Tracer(self.units))
        try:
            await server.serve_forever(background=True)
        except RuntimeError:
            raise OSError(f"cannot listen on {self.host}:{self.requested_port} (address in use or not local)") from None
        self._server = server
        sockets = getattr(server.transport, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
