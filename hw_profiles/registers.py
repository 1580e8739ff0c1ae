"""The one Modbus register map of evstack piles, used by firmware_sim and controller alike.

Layout (holding registers, 0-based addresses, function codes 3 / 6 / 16):

* the pile header at ``PILE_BASE`` (``PILE_HEADER_WORDS`` registers);
* one block per gun at ``gun_base(n) = GUN_BASE + (n - 1) * GUN_STRIDE`` (guns count from 1).

A two-gun pile is ``PILE_HEADER_WORDS + 2 * GUN_STRIDE`` = 116 registers from address 0, so one
FC3 request (at most 125 registers) reads the whole pile. Bytes within a register are
big-endian (Modbus); the order of words in 32/64-bit values is configurable per pile
(``WordOrder``), most significant word first by default. Multi-register values are written
with one FC16 request.

A value is ``raw * scale`` in ``unit``. Writes out of range are refused with Modbus exception 03
(illegal data value) and not applied; addresses outside the map, read-only registers written
and registers that do not exist on the gun's kind (AC vs DC) give exception 02.
``docs/register-map.md`` is generated from this table (``evstack registers --markdown``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag
from typing import Iterable, Mapping, Sequence

from .specs import GunKind, WordOrder

MAP_VERSION = 1
"""Bumped whenever an address, type or scale changes; the controller refuses other versions."""

PILE_BASE = 0
PILE_HEADER_WORDS = 16
GUN_BASE = 16
GUN_STRIDE = 50
MAX_READ_WORDS = 125  # Modbus FC3 limit per request


class GunState(IntEnum):
    """Gun state as the pile reports it (register ``state``)."""

    AVAILABLE = 0  # nothing plugged in
    PREPARING = 1  # plugged: handshake, insulation test, pre-charge
    CHARGING = 2
    SUSPENDED_EV = 3  # the vehicle asks for nothing (full, or its BMS paused)
    SUSPENDED_PILE = 4  # the pile gives nothing (setpoint 0, fail-safe 0, derated to 0)
    FINISHING = 5  # session ended, vehicle still plugged
    FAULTED = 6
    UNAVAILABLE = 7  # taken out of service (or the second gun of a combined pair)


class FaultBits(IntFlag):
    """Bits of register ``fault_code`` (gun) and ``pile_fault_code`` (pile)."""

    NONE = 0
    OVER_TEMPERATURE = 1 << 0  # tripped above trip temperature
    INSULATION = 1 << 1  # insulation monitoring fault (DC)
    EMERGENCY_STOP = 1 << 2
    METER_FAILURE = 1 << 3  # meter registers frozen; do not bill from them
    MODULE_LOSS = 1 << 4  # some power modules offline; pool reduced (warning)
    DERATING = 1 << 5  # temperature derating active (warning)
    FAILSAFE = 1 << 6  # no valid setpoint within validity time: fail-safe power applied


class Command(IntEnum):
    """Values accepted by register ``command``; anything else is refused (exception 03)."""

    NONE = 0
    START = 1  # (re)start charging on a plugged vehicle
    STOP = 2  # end the session; the gun goes to FINISHING
    RESET = 3  # clear faults that are no longer present


class BmsMode(IntEnum):
    """GB/T 27930 BCL charging mode."""

    NONE = 0
    CONSTANT_VOLTAGE = 1
    CONSTANT_CURRENT = 2


class RegType(str, Enum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    U64 = "u64"
    STRING = "string"  # ASCII, two characters per register, high byte first, NUL padded


_WORDS = {RegType.U16: 1, RegType.I16: 1, RegType.U32: 2, RegType.U64: 4}


@dataclass(frozen=True)
class Register:
    """One entry of the map. ``offset`` is relative to its block (pile header or gun block)."""

    name: str
    offset: int
    type: RegType
    scale: float
    unit: str
    access: str  # "R", "RW" or "W"
    meaning: str
    words: int = 0  # STRING only: its length in registers
    kinds: frozenset[GunKind] = frozenset({GunKind.DC, GunKind.AC})
    write_min: float | None = None  # engineering units; pile-specific limits (rating) come on top
    write_max: float | None = None

    def __post_init__(self) -> None:
        if self.type is not RegType.STRING:
            object.__setattr__(self, "words", _WORDS[self.type])

    @property
    def writable(self) -> bool:
        return "W" in self.access


_DC = frozenset({GunKind.DC})
_AC = frozenset({GunKind.AC})
U16, I16, U32, U64, STR = RegType.U16, RegType.I16, RegType.U32, RegType.U64, RegType.STRING

PILE_HEADER: tuple[Register, ...] = (
    Register("map_version", 0, U16, 1, "", "R", f"Register map version; this table is version {MAP_VERSION}"),
    Register("gun_count", 1, U16, 1, "", "R", "Number of gun blocks that follow"),
    Register("pile_class", 2, U16, 1, "", "R", "Hardware class: 1 bus DC, 2 logistics DC, 3 distributed DC, 4 AC three-phase, 5 AC single-phase"),
    Register("modules_total", 3, U16, 1, "", "R", "Power modules installed (0 on AC piles)"),
    Register("modules_online", 4, U16, 1, "", "R", "Power modules working; the pool is modules_online x module_kw"),
    Register("module_kw", 5, U16, 0.1, "kW", "R", "Power of one module: DC setpoints are granted in these steps"),
    Register("pile_fault_code", 6, U16, 1, "", "R", "Pile-wide fault bits (FaultBits)"),
    Register("pile_max_kw", 7, U16, 0.1, "kW", "R", "What the pile can deliver now over all guns (pool after module loss and derating)"),
    Register("uptime_s", 8, U32, 1, "s", "R", "Seconds since the firmware started (pile clock)"),
)

GUN_BLOCK: tuple[Register, ...] = (
    Register("state", 0, U16, 1, "", "R", "GunState: 0 available, 1 preparing, 2 charging, 3 suspended by EV, 4 suspended by pile, 5 finishing, 6 faulted, 7 unavailable"),
    Register("fault_code", 1, U16, 1, "", "R", "FaultBits of this gun"),
    Register("setpoint_kw", 2, U16, 0.1, "kW", "RW", "DC power setpoint; writing it also feeds the watchdog. Above the gun's rating: exception 03", kinds=_DC, write_min=0.0),
    Register("setpoint_a", 3, U16, 0.1, "A", "RW", "AC current setpoint per phase; 0 or between the gun's min and max current, else exception 03. Feeds the watchdog", kinds=_AC, write_min=0.0),
    Register("applied_limit_kw", 4, U16, 0.1, "kW", "R", "The limit the pile applies now: least of setpoint (or fail-safe), rating, module share, derating"),
    Register("failsafe_kw", 5, U16, 0.1, "kW", "RW", "DC power used when no setpoint/heartbeat arrived within validity_s (default 0)", kinds=_DC, write_min=0.0),
    Register("failsafe_a", 6, U16, 0.1, "A", "RW", "AC current per phase used in fail-safe (default 0)", kinds=_AC, write_min=0.0),
    Register("validity_s", 7, U16, 1, "s", "RW", "Setpoint validity time: the watchdog period (default 10 s)", write_min=1, write_max=3600),
    Register("remaining_s", 8, U16, 0.1, "s", "R", "Time left before the fail-safe applies"),
    Register("setpoint_accepted", 9, U16, 1, "", "R", "1 while a valid setpoint is in force, 0 in fail-safe"),
    Register("heartbeat", 10, U16, 1, "", "RW", "Write any value to renew the current setpoint's validity"),
    Register("command", 11, U16, 1, "", "RW", "Command: 1 start, 2 stop, 3 reset faults; other values exception 03", write_min=0, write_max=3),
    Register("voltage_v", 12, U16, 0.1, "V", "R", "Measured output voltage (AC: phase voltage)"),
    Register("current_a", 13, U16, 0.1, "A", "R", "Measured output current (AC: per phase)"),
    Register("power_kw", 14, U16, 0.1, "kW", "R", "Measured output power"),
    Register("energy_wh", 15, U64, 1, "Wh", "R", "Energy meter: monotonic, survives restarts; frozen while METER_FAILURE"),
    Register("session_energy_wh", 19, U32, 1, "Wh", "R", "Energy of the current (or last) session"),
    Register("soc_pct", 21, U16, 0.1, "%", "R", "Vehicle state of charge (GB/T 27930 BCS carries 1 %; 0.1 % here)"),
    Register("bms_demand_voltage_v", 22, U16, 0.1, "V", "R", "BMS voltage demand (GB/T 27930 BCL, 0.1 V/bit)"),
    Register("bms_demand_current_a", 23, U16, 0.1, "A", "R", "BMS current demand (GB/T 27930 BCL, 0.1 A/bit, offset removed)"),
    Register("bms_mode", 24, U16, 1, "", "R", "BMS mode (GB/T 27930 BCL): 1 constant voltage, 2 constant current"),
    Register("bms_remaining_min", 25, U16, 1, "min", "R", "Estimated minutes to full (GB/T 27930 BCS)"),
    Register("vin", 26, STR, 1, "", "R", "Vehicle VIN (GB/T 27930 BRM), 17 ASCII characters", words=9),
    Register("temperature_c", 35, I16, 0.1, "°C", "R", "Gun/module temperature driving derating"),
    Register("max_available_kw", 36, U16, 0.1, "kW", "R", "What this gun could deliver now ignoring the setpoint: rating, module share, derating, BMS demand"),
    Register("paired_gun", 37, U16, 1, "", "R", "0, or the number of the other gun when two guns serve one vehicle (setpoint goes to the lower-numbered gun)"),
    Register("id_token", 38, STR, 1, "", "R", "Card id or QR token presented at plug-in (authorization), up to 20 ASCII characters", words=10),
    Register("min_kw", 48, U16, 0.1, "kW", "R", "Least power the gun delivers when on (AC: min current x phases x 220 V)"),
    Register("rated_kw", 49, U16, 0.1, "kW", "R", "Gun rating; with paired_gun set, the pair's combined rating"),
)

assert max(r.offset + r.words for r in GUN_BLOCK) <= GUN_STRIDE
assert max(r.offset + r.words for r in PILE_HEADER) <= PILE_HEADER_WORDS

PILE_CLASS_CODES = {"bus_dc": 1, "logistics_dc": 2, "distributed_dc": 3, "ac_three_phase": 4, "ac_single_phase": 5}

PILE_REGISTER = {r.name: r for r in PILE_HEADER}
GUN_REGISTER = {r.name: r for r in GUN_BLOCK}


def gun_base(gun_no: int) -> int:
    """First address of gun ``gun_no``'s block (guns count from 1)."""
    if gun_no < 1:
        raise ValueError(f"gun numbers start at 1, got {gun_no}")
    return GUN_BASE + (gun_no - 1) * GUN_STRIDE


def gun_address(gun_no: int, name: str) -> int:
    """Absolute address of register ``name`` in gun ``gun_no``'s block."""
    return gun_base(gun_no) + GUN_REGISTER[name].offset


def pile_span(gun_count: int) -> tuple[int, int]:
    """(start, count) of the smallest read covering the header and all gun blocks."""
    return PILE_BASE, GUN_BASE + gun_count * GUN_STRIDE


def read_plan(gun_count: int) -> list[tuple[int, int]]:
    """The fewest FC3 requests (start, count) that read a whole pile."""
    start, count = pile_span(gun_count)
    out = []
    while count > 0:
        n = min(count, MAX_READ_WORDS)
        out.append((start, n))
        start += n
        count -= n
    return out


def locate(address: int, gun_count: int) -> tuple[int, Register] | None:
    """(gun_no, register) covering ``address``; gun_no 0 for the header; None if unmapped."""
    if address < GUN_BASE:
        for r in PILE_HEADER:
            if r.offset <= address - PILE_BASE < r.offset + r.words:
                return 0, r
        return None
    gun_no, offset = divmod(address - GUN_BASE, GUN_STRIDE)
    gun_no += 1
    if gun_no > gun_count:
        return None
    for r in GUN_BLOCK:
        if r.offset <= offset < r.offset + r.words:
            return gun_no, r
    return None


# ----------------------------------------------------------------------------- codec

def _order(words: list[int], word_order: WordOrder) -> list[int]:
    return words if word_order is WordOrder.BIG else words[::-1]


def encode(reg: Register, value, word_order: WordOrder = WordOrder.BIG) -> list[int]:
    """Engineering value -> register words. Raises ValueError if it does not fit the type."""
    if reg.type is RegType.STRING:
        data = str(value or "").encode("ascii", errors="replace")[: reg.words * 2]
        data = data.ljust(reg.words * 2, b"\0")
        return [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]
    if reg.scale == 1 and isinstance(value, int):
        raw = int(value)  # exact: a float would round a 64-bit meter above 2**53 Wh
    else:
        raw = int(round(float(value) / reg.scale))
    bits = 16 * reg.words
    if reg.type is RegType.I16:
        if not -(1 << 15) <= raw < (1 << 15):
            raise ValueError(f"{reg.name}: {value} does not fit {reg.type.value}")
        raw &= 0xFFFF
    elif not 0 <= raw < (1 << bits):
        raise ValueError(f"{reg.name}: {value} does not fit {reg.type.value}")
    words = [(raw >> (16 * (reg.words - 1 - i))) & 0xFFFF for i in range(reg.words)]
    return _order(words, word_order)


def decode(reg: Register, words: Sequence[int], word_order: WordOrder = WordOrder.BIG):
    """Register words -> engineering value (float for scaled numbers, int when scale is 1, str)."""
    words = list(words[: reg.words])
    if reg.type is RegType.STRING:
        data = b"".join(bytes(((w >> 8) & 0xFF, w & 0xFF)) for w in words)
        return data.rstrip(b"\0").decode("ascii", errors="replace")
    raw = 0
    for w in _order(words, word_order):
        raw = (raw << 16) | (w & 0xFFFF)
    if reg.type is RegType.I16 and raw >= 1 << 15:
        raw -= 1 << 16
    if reg.scale == 1:
        return raw
    return raw * reg.scale


def decode_block(words: Sequence[int], block: Iterable[Register], word_order: WordOrder = WordOrder.BIG) -> dict:
    """Decode a whole block (``words[0]`` is the block's first register)."""
    return {r.name: decode(r, words[r.offset: r.offset + r.words], word_order) for r in block}


def decode_pile(words: Sequence[int], word_order: WordOrder = WordOrder.BIG) -> tuple[dict, list[dict]]:
    """Decode a whole-pile read starting at address 0 into (header, [gun 1 block, gun 2 block, ...])."""
    header = decode_block(words[PILE_BASE: PILE_BASE + PILE_HEADER_WORDS], PILE_HEADER, word_order)
    guns = []
    for n in range(1, int(header["gun_count"]) + 1):
        base = gun_base(n)
        guns.append(decode_block(words[base: base + GUN_STRIDE], GUN_BLOCK, word_order))
    return header, guns


def encode_block(values: Mapping[str, object], block: Iterable[Register], size: int,
                 word_order: WordOrder = WordOrder.BIG) -> list[int]:
    """Encode ``values`` (missing names read as 0) into a ``size``-word block."""
    out = [0] * size
    for r in block:
        if r.name in values:
            out[r.offset: r.offset + r.words] = encode(r, values[r.name], word_order)
    return out


# ----------------------------------------------------------------------------- docs

def as_rows() -> list[dict]:
    """The map as plain rows (for ``evstack registers --json`` and the docs)."""
    rows = []
    for block, base, registers in (("pile", PILE_BASE, PILE_HEADER), ("gun", GUN_BASE, GUN_BLOCK)):
        for r in registers:
            rows.append({
                "block": block,
                "offset": r.offset,
                "address": base + r.offset if block == "pile" else None,
                "address_gun_1": base + r.offset if block == "gun" else None,
                "name": r.name,
                "type": r.type.value,
                "words": r.words,
                "scale": r.scale,
                "unit": r.unit,
                "access": r.access,
                "guns": "/".join(sorted(k.value for k in r.kinds)) if block == "gun" else "",
                "meaning": r.meaning,
            })
    return rows


def render_markdown() -> str:
    """``docs/register-map.md``, generated from the table above."""
    lines = [
        "# evstack register map",
        "",
        f"Map version {MAP_VERSION}. Generated from `hw_profiles/registers.py` by "
        "`evstack registers --markdown`; a test fails if this file and the table differ.",
        "",
        "Holding registers, 0-based addresses, read with FC3, written with FC6 or FC16 (multi-register "
        "values in one FC16). Bytes in a register are big-endian; the order of words in 32/64-bit "
        "values is set per pile (`word_order = \"big\"`, most significant word first, by default).",
        "",
        f"- Pile header: addresses {PILE_BASE}..{PILE_BASE + PILE_HEADER_WORDS - 1}.",
        f"- Gun n: block at `{GUN_BASE} + (n - 1) x {GUN_STRIDE}`; a two-gun pile is "
        f"{GUN_BASE + 2 * GUN_STRIDE} registers and is read in one request.",
        "- Value = raw x scale, in the unit given. A write out of range is refused with exception 03 "
        "and not applied; an address outside the map, a write to a read-only register or to a "
        "register of the other gun kind (AC/DC) with exception 02.",
        "- Fail-safe: every gun has a watchdog of `validity_s` seconds, fed by any accepted write of "
        "`setpoint_kw`/`setpoint_a` or `heartbeat`. When it runs out the gun applies `failsafe_kw`/`failsafe_a`, "
        "sets `setpoint_accepted` to 0 and fault bit FAILSAFE, within one second; the next valid write "
        "resumes normal control.",
        "",
        "## Pile header",
        "",
        "| address | name | type | scale | unit | access | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in PILE_HEADER:
        lines.append(f"| {PILE_BASE + r.offset} | `{r.name}` | {r.type.value}{_w(r)} | {r.scale:g} | {r.unit} | {r.access} | {r.meaning} |")
    lines += [
        "",
        "## Gun block",
        "",
        "| offset | gun 1 | gun 2 | name | type | scale | unit | access | guns | meaning |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in GUN_BLOCK:
        kinds = "/".join(sorted(k.value for k in r.kinds))
        lines.append(
            f"| {r.offset} | {gun_base(1) + r.offset} | {gun_base(2) + r.offset} | `{r.name}` | {r.type.value}{_w(r)} | "
            f"{r.scale:g} | {r.unit} | {r.access} | {kinds} | {r.meaning} |"
        )
    lines += ["", "## Enumerations", ""]
    for enum in (GunState, FaultBits, Command, BmsMode):
        members = ", ".join(f"{m.value} `{m.name}`" for m in enum if not (enum is FaultBits and m.value == 0))
        lines.append(f"- `{enum.__name__}`: {members}")
    lines.append("")
    return "\n".join(lines)


def _w(r: Register) -> str:
    return f" x{r.words}" if r.type is RegType.STRING else ""
