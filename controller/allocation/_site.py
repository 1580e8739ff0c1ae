"""One site with string ids: ``allocate_site`` and its scalar path for small sites."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._core import (
    _FIT_TOL_KW,
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


_SMALL_GUNS = 64  # up to this many guns allocate_site runs the scalar path (no numpy call overhead)


def allocate_site(guns: Sequence[GunDemand], nodes: Sequence[LimitNode]) -> dict[str, GunResult]:
    """Allocate one site given as objects with string ids; returns ``{gun id: GunResult}``.

    Same rules as :func:`allocate`. Raises ``ValueError`` on unknown or duplicate ids and on
    every bad value :func:`allocate` refuses (named by gun or node id here).

    Small sites (up to 64 guns, the controller's every-cycle case) run a scalar transcription
    of the same algorithm (:func:`_allocate_small`): a numpy call costs microseconds whatever
    its size, and the batched core makes a few hundred of them. Property tests hold both
    paths to the oracle and to each other."""
    topo = _site_topology(nodes)
    nid, parent = topo.nid, topo.parent
    gid = set()
    gun_node = []
    for i, gd in enumerate(guns):
        if gd.id in gid:
            raise ValueError(f"guns[{i}]: duplicate gun id {gd.id!r}")
        gid.add(gd.id)
        if gd.node_id not in nid:
            raise ValueError(f"guns[{i}]: gun {gd.id!r} has unknown node_id {gd.node_id!r}")
        gun_node.append(nid[gd.node_id])
    names = topo.names
    if len(guns) <= _SMALL_GUNS and topo.valid and _small_ok(guns):
        x, b = _allocate_small(gun_node, guns, topo, nodes)
        return {gd.id: GunResult(xi, _CODE_NAMES.get(bi) or names[bi]) for gd, xi, bi in zip(guns, x, b)}
    p = AllocationProblem(
        gun_node=np.array(gun_node, np.int64),
        upper_kw=np.array([gd.upper_kw for gd in guns], float),
        min_kw=np.array([gd.min_kw for gd in guns], float),
        ask_kw=np.array([gd.ask_kw for gd in guns], float),
        priority=np.array([gd.priority for gd in guns], np.int64),
        weight=np.array([gd.weight for gd in guns], float),
        node_parent=np.array(parent, np.int64),
        node_limit_kw=np.array([n.limit_kw for n in nodes], float),
        node_step_kw=np.array([n.step_kw for n in nodes], float),
    )
    try:
        res = allocate(p)
    except ValueError as e:  # name the object, not the array slot
        raise ValueError(_rename(str(e), guns, nodes)) from None
    return {
        gd.id: GunResult(float(sp), _CODE_NAMES.get(int(b)) or names[int(b)])
        for gd, sp, b in zip(guns, res.setpoint_kw, res.bound_by)
    }


class _SiteTopology:
    """What allocate_site derives from the nodes alone; kept for the last nodes seen (a
    control loop passes the same node objects every cycle)."""

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
        self.nid, self.parent, self.names = nid, parent, [n.id for n in nodes]
        n_n = len(nodes)
        self.valid = all(not (n.limit_kw != n.limit_kw or n.limit_kw < 0 or not math.isfinite(n.step_kw)
                              or n.step_kw < 0) for n in nodes)
        ok = [False] * n_n
        for i in range(n_n):  # every node reaches a root: no cycle
            seen, j = set(), i
            while j >= 0 and not ok[j]:
                if j in seen:
                    self.valid = False
                    return
                seen.add(j)
                j = parent[j]
            for k in seen:
                ok[k] = True
        # Depth-first positions (roots and siblings by index): the admission tie-break.
        kids = [[] for _ in range(n_n)]
        roots = []
        for i, p in enumerate(parent):
            (kids[p] if p >= 0 else roots).append(i)
        pre, stack, k = [0] * n_n, roots[::-1], 0
        order = []
        while stack:
            v = stack.pop()
            pre[v] = k
            k += 1
            order.append(v)
            stack.extend(kids[v][::-1])
        depth = [0] * n_n
        anc = [None] * n_n
        for v in order:  # parents before children
            p = parent[v]
            depth[v] = depth[p] + 1 if p >= 0 else 0
            anc[v] = [v] + (anc[p] if p >= 0 else [])  # deepest first
        self.pre, self.anc = pre, anc
        self.by_depth = sorted(range(n_n), key=lambda v: -depth[v])
        self.limit = [n.limit_kw for n in nodes]
        self.step = [n.step_kw for n in nodes]


_SITE_CACHE: list = []


def _site_topology(nodes) -> _SiteTopology:
    key = tuple(nodes)
    if _SITE_CACHE and _SITE_CACHE[0].key == key:  # same objects: identity makes this cheap
        return _SITE_CACHE[0]
    t = _SiteTopology(nodes)
    _SITE_CACHE[:] = [t]
    return t


def _small_ok(guns) -> bool:
    """Every gun value is one :func:`allocate` accepts. False sends the call to the array
    path, which raises the canonical error."""
    fin = math.isfinite
    for g in guns:
        u, m, a, w = g.upper_kw, g.min_kw, g.ask_kw, g.weight
        if not (fin(u) and fin(m) and fin(a) and fin(w)) or u < 0 or m < 0 or a < 0 or w <= 0 or m > u:
            return False
        if type(g.priority) is not int and not isinstance(g.priority, np.integer):
            return False
    return True


def _allocate_small(gun_node, guns, topo, nodes):
    """Scalar transcription of :func:`allocate` (module docstring rules 1-5, same order of
    operations, same tolerances) for one small, valid site. Returns (setpoints, bound codes
    or node indices)."""
    n_g, n_n = len(guns), len(nodes)
    fl, ce = math.floor, math.ceil
    tol = _FIT_TOL_KW
    pre, by_depth = topo.pre, topo.by_depth
    anc = [topo.anc[v] for v in gun_node]
    wt = [g.weight for g in guns]
    x = [0.0] * n_g
    bound = [BOUND_ASK] * n_g
    cap, mn, st, code = [], [], [], []
    for gi, g in enumerate(guns):
        c = min(g.ask_kw, g.upper_kw)
        m = g.min_kw
        s = topo.step[gun_node[gi]]
        if s > 0:
            c = fl(c / s + 1e-9) * s
            m = ce(m / s - 1e-9) * s
        cap.append(c)
        mn.append(m)
        st.append(s)
        code.append(BOUND_UPPER if g.upper_kw < g.ask_kw else BOUND_ASK)
    room = list(topo.limit)
    classes = {}
    for gi, g in enumerate(guns):
        if cap[gi] <= 0:
            bound[gi] = code[gi]
        elif cap[gi] < mn[gi] - tol:
            bound[gi] = BOUND_SHED
        else:
            classes.setdefault(g.priority, []).append(gi)
    inf = math.inf

    def fill(members, base, inc):
        """Rule 4 over ``members``: amounts above ``base``; marks bound nodes."""
        used = [0.0] * n_n
        under = [None] * n_n
        for gi in members:
            b = base[gi]
            for v in anc[gi]:
                used[v] += b
                u = under[v]
                if u is None:
                    under[v] = [gi]
                else:
                    u.append(gi)
        d = dict(inc)
        for v in by_depth:
            us = under[v]
            if us is None:
                continue
            r = room[v] - used[v]
            if r == inf:
                continue
            tot = 0.0
            for gi in us:
                tot += d[gi]
            if not tot > r:
                continue
            r = max(r, 0.0)
            sat = [d[gi] <= 0.0 for gi in us]
            while True:  # Newton from below, as _levels
                ds = wu = 0.0
                for gi, sa in zip(us, sat):
                    if sa:
                        ds += d[gi]
                    else:
                        wu += wt[gi]
                lam = max((r - ds) / wu, 0.0) if wu > 0 else inf
                new = [sa or d[gi] <= wt[gi] * lam for gi, sa in zip(us, sat)]
                if new == sat:
                    break
                sat = new
            for gi in us:
                lvl = wt[gi] * lam
                if d[gi] >= lvl and d[gi] > tol:  # a gun a deeper node cut to (about) 0 keeps that node
                    bound[gi] = v
                    d[gi] = lvl
        return d

    ordered = sorted(classes)
    for ci, pr in enumerate(ordered):
        G = sorted(classes[pr], key=lambda gi: (-wt[gi], mn[gi], cap[gi], pre[gun_node[gi]]))
        left = list(room)
        adm = []
        for gi in G:  # admission (rule 3), one by one in order
            m = mn[gi]
            if m > 0:
                a = anc[gi]
                for v in a:
                    if m > left[v] + tol:
                        bound[gi] = BOUND_SHED
                        break
                else:
                    for v in a:
                        left[v] -= m
                    adm.append(gi)
                continue
            adm.append(gi)
        for gi in adm:
            bound[gi] = BOUND_ASK
        base = {gi: (mn[gi] if mn[gi] > 0 else 0.0) for gi in adm}
        d = fill(adm, base, {gi: cap[gi] - mn[gi] for gi in adm})
        val = {gi: base[gi] + d[gi] for gi in adm}
        stepped = [gi for gi in adm if st[gi] > 0]
        if stepped:
            for gi in stepped:
                s = st[gi]
                val[gi] = max(fl(val[gi] / s + 1e-9) * s, base[gi])
            slack = list(room)
            for gi in adm:
                for v in anc[gi]:
                    slack[v] -= val[gi]
            todo = [gi for gi in G if gi in val and st[gi] > 0 and val[gi] < cap[gi] - tol]
            while todo:  # rule 5: one step per gun per pass, in admission order
                nxt = []
                for gi in todo:
                    s = st[gi]
                    if all(s <= slack[v] + tol for v in anc[gi]):
                        val[gi] += s
                        for v in anc[gi]:
                            slack[v] -= s
                        if val[gi] < cap[gi] - tol:
                            nxt.append(gi)
                todo = nxt
            sset = set(stepped)
            if len(sset) < len(adm):  # (every gun stepped: the refill has nothing to give)
                for gi in adm:
                    if gi not in sset:
                        bound[gi] = BOUND_ASK
                base2 = {gi: (val[gi] if gi in sset else base[gi]) for gi in adm}
                d2 = fill(adm, base2, {gi: (0.0 if gi in sset else cap[gi] - mn[gi]) for gi in adm})
                val = {gi: base2[gi] + d2[gi] for gi in adm}
            left2 = list(room)
            for gi in adm:
                for v in anc[gi]:
                    left2[v] -= val[gi]
            for gi in stepped:
                if val[gi] < cap[gi] - tol:
                    blocked = [v for v in anc[gi] if left2[v] < st[gi] - tol]  # deepest first
                    bound[gi] = blocked[0] if blocked else BOUND_ASK
        for gi in adm:
            x[gi] = val[gi]
            if ci + 1 < len(ordered):
                for v in anc[gi]:
                    room[v] -= val[gi]
    for gi in range(n_g):
        if bound[gi] != BOUND_SHED and cap[gi] > 0 and x[gi] >= cap[gi] - tol:
            x[gi] = cap[gi]
            bound[gi] = code[gi]
    return x, bound


def _rename(msg: str, guns, nodes) -> str:
    field, _, rest = msg.partition(": ")
    name, _, idx = field.partition("[")
    if not idx:
        return msg
    i = int(idx.rstrip("]"))
    if name in _GUN_FLOAT_FIELDS + _GUN_INT_FIELDS:
        return f"gun {guns[i].id!r} {name}: {rest}"
    return f"node {nodes[i].id!r} {name}: {rest}"
