"""One site with string ids: ``allocate_site``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._core import (
    _GUN_FLOAT_FIELDS,
    _GUN_INT_FIELDS,
    BOUND_ASK,
    BOUND_SHED,
    BOUND_UPPER,
    AllocationProblem,
    allocate,
)

@dataclass(frozen=True)
class LimitNode:
    """A limit above guns: pile module pool, feeder, transformer, site. ``parent_id`` None
    for the site root. ``limit_kw`` inf = unlimited; ``step_kw`` > 0 makes the setpoints of
    the guns directly below this node multiples of it (module size)."""

    id: str
    parent_id: str | None
    limit_kw: float = float("inf")
    step_kw: float = 0.0


@dataclass(frozen=True)
class GunDemand:
    """One gun's demand: its parent node, what it asks (kW), its upper bound (kW: rating,
    vehicle acceptance, derating), its minimum when on (kW, 0 = any level), priority class
    (lower first) and weight (> 0)."""

    id: str
    node_id: str
    ask_kw: float
    upper_kw: float
    min_kw: float = 0.0
    priority: int = 0
    weight: float = 1.0


@dataclass(frozen=True)
class GunResult:
    """A gun's setpoint (kW) and why it got no more: a node id, or "ask", "upper", "shed"."""

    setpoint_kw: float
    bound_by: str


_CODE_NAMES = {BOUND_ASK: "ask", BOUND_UPPER: "upper", BOUND_SHED: "shed"}


def allocate_site(guns: Sequence[GunDemand], nodes: Sequence[LimitNode]) -> dict[str, GunResult]:
    """Allocate one site given as objects with string ids; returns ``{gun id: GunResult}``.

    Same rules as :func:`allocate` (it is one call of it). Raises ``ValueError`` on unknown or
    duplicate ids and on every bad value :func:`allocate` refuses (named by gun or node id
    here). The node analysis is kept for the last ``nodes`` seen (a control loop passes the
    same nodes every cycle)."""
    topo = _site_topology(nodes)
    nid = topo.nid
    gid = set()
    gun_node = []
    for i, gd in enumerate(guns):
        if gd.id in gid:
            raise ValueError(f"guns[{i}]: duplicate gun id {gd.id!r}")
        gid.add(gd.id)
        j = nid.get(gd.node_id)
        if j is None:
            raise ValueError(f"guns[{i}]: gun {gd.id!r} has unknown node_id {gd.node_id!r}")
        gun_node.append(j)
    n_g = len(guns)
    p = AllocationProblem(
        gun_node=np.array(gun_node, np.int64),
        upper_kw=np.fromiter([gd.upper_kw for gd in guns], float, n_g),
        min_kw=np.fromiter([gd.min_kw for gd in guns], float, n_g),
        ask_kw=np.fromiter([gd.ask_kw for gd in guns], float, n_g),
        # (dtype inferred: a priority that is not an integer must be refused, not truncated)
        priority=np.array([gd.priority for gd in guns]) if n_g else np.zeros(0, np.int64),
        weight=np.fromiter([gd.weight for gd in guns], float, n_g),
        node_parent=topo.parent,
        node_limit_kw=topo.limit,
        node_step_kw=topo.step,
    )
    try:
        res = allocate(p)
    except ValueError as e:  # name the object, not the array slot
        raise ValueError(_rename(str(e), guns, nodes)) from None
    names = topo.names
    return {
        gd.id: GunResult(sp, _CODE_NAMES.get(b) or names[b])
        for gd, sp, b in zip(guns, res.setpoint_kw.tolist(), res.bound_by.tolist())
    }


class _SiteTopology:
    """What allocate_site derives from the nodes alone; kept for the last nodes seen."""

    def __init__(self, nodes):
        self.key = tuple(nodes)
        nid = {}
        for i, n in enumerate(nodes):
            if n.id in nid:
                raise ValueError(f"nodes[{i}]: duplicate node id {n.id!r}")
            nid[n.id] = i
        parent = []
        for i, n in enumerate(nodes):
            if n.parent_id is None:
                parent.append(-1)
            elif n.parent_id in nid:
                parent.append(nid[n.parent_id])
            else:
                raise ValueError(f"nodes[{i}]: node {n.id!r} has unknown parent_id {n.parent_id!r}")
        self.nid, self.names = nid, [n.id for n in nodes]
        self.parent = np.array(parent, np.int64)
        self.limit = np.array([n.limit_kw for n in nodes], float)
        self.step = np.array([n.step_kw for n in nodes], float)
        # (shared by every call with these nodes; allocate never writes into its inputs. Not
        # marked read-only: numba compiles a second kernel for read-only arrays.)


_SITE_CACHE: list = []


def _site_topology(nodes) -> _SiteTopology:
    key = tuple(nodes)
    if _SITE_CACHE and _SITE_CACHE[0].key == key:  # same objects: identity makes this cheap
        return _SITE_CACHE[0]
    t = _SiteTopology(nodes)
    _SITE_CACHE[:] = [t]
    return t


def _rename(msg: str, guns, nodes) -> str:
    field, _, rest = msg.partition(": ")
    name, _, idx = field.partition("[")
    if not idx:
        return msg
    i = int(idx.rstrip("]"))
    if name in _GUN_FLOAT_FIELDS + _GUN_INT_FIELDS:
        return f"gun {guns[i].id!r} {name}: {rest}"
    return f"node {nodes[i].id!r} {name}: {rest}"
