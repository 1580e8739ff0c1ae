"""The batched allocation core: arrays in, arrays out (see the package docstring for the rules)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOUND_ASK = -1
"""``bound_by`` code: the gun got its full effective ask (ask, capped by upper, floored to its step)."""
BOUND_UPPER = -2
"""``bound_by`` code: the gun got its full upper bound, which was below its ask."""
BOUND_SHED = -3
"""``bound_by`` code: the gun is switched off (0 kW) because its minimum could not be met."""

LIMIT_TOL_KW = 1e-6
"""Every node limit holds to this many kW (the guarantee the tests check)."""

# Internal slack for "does it fit" comparisons. Far below LIMIT_TOL_KW so that many fits
# that each round up cannot add up to a visible overshoot, far above float noise of kW sums.
_FIT_TOL_KW = 1e-9

_GUN_FLOAT_FIELDS = ("upper_kw", "min_kw", "ask_kw", "weight")
_GUN_INT_FIELDS = ("gun_node", "priority")


@dataclass(frozen=True)
class AllocationProblem:
    """A batch of independent allocation problems as flat 1-D arrays.

    Per gun (all the same length): ``gun_node`` (int, parent node index), ``upper_kw``
    (least of gun rating, vehicle acceptance, derating, schedule cap; finite),
    ``min_kw`` (lowest power when on; 0 = may run at any level), ``ask_kw`` (what the
    schedule asks; finite), ``priority`` (int, lower = served first), ``weight``
    (> 0, share inside a class).

    Per node: ``node_parent`` (int, -1 for the root of each tree), ``node_limit_kw``
    (>= 0, ``inf`` = unlimited), ``node_step_kw`` (optional, >= 0; a step on a node makes
    the setpoints of the guns directly below it multiples of the step; 0 = none).

    The batch is the forest given by ``node_parent``: one tree per root, in any order;
    nodes and guns of different trees may be interleaved.
    """

    gun_node: np.ndarray
    upper_kw: np.ndarray
    min_kw: np.ndarray
    ask_kw: np.ndarray
    priority: np.ndarray
    weight: np.ndarray
    node_parent: np.ndarray
    node_limit_kw: np.ndarray
    node_step_kw: np.ndarray | None = None


@dataclass(frozen=True)
class Allocation:
    """Result of :func:`allocate`: ``setpoint_kw`` per gun (kW) and ``bound_by`` per gun
    (a node index, or ``BOUND_ASK`` / ``BOUND_UPPER`` / ``BOUND_SHED``)."""

    setpoint_kw: np.ndarray
    bound_by: np.ndarray


# ----------------------------------------------------------------------------- validation


def _arrays(p: AllocationProblem) -> dict[str, np.ndarray]:
    out = {}
    for name in _GUN_INT_FIELDS + _GUN_FLOAT_FIELDS + ("node_parent", "node_limit_kw", "node_step_kw"):
        v = getattr(p, name)
        if v is None:
            out[name] = None
            continue
        a = np.asarray(v)
        if a.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
        out[name] = a
    return out


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _values_ok(a: dict[str, np.ndarray]) -> bool:
    """True when every value check of :func:`_validate` passes, decided with a handful of
    reductions over concatenated fields (a numpy call costs microseconds whatever its size,
    and a small problem would otherwise spend most of its time on a dozen of them). False
    means: run the field-by-field checks, which find and name the first bad value."""
    fl = [a[n] for n in ("upper_kw", "min_kw", "ask_kw", "node_step_kw") if a[n] is not None]
    ints = [a[n] for n in _GUN_INT_FIELDS + ("node_parent",)]
    if any(v.dtype.kind not in "fiu" for v in fl + [a["weight"], a["node_limit_kw"]]):
        return False
    if any(v.size and v.dtype.kind not in "iu" for v in ints):
        return False
    wt = a["weight"]
    v = np.concatenate(fl + [wt])  # all of them >= 0 and finite
    if v.size and not (v.min() >= 0 and v.max() < np.inf):  # NaN fails both comparisons
        return False
    if wt.size and not wt.min() > 0:
        return False
    lim = a["node_limit_kw"]
    if lim.size and not lim.min() >= 0:  # inf allowed; NaN propagates into the min
        return False
    return True


def gn_ok(gn: np.ndarray, n_n: int) -> bool:
    return bool(gn.min() >= 0 and gn.max() < n_n)


def _validate(a: dict[str, np.ndarray]) -> _Tree | None:
    """Raise ``ValueError("field[index]: reason")`` at the first bad value; allocate nothing.
    Returns the cached analysis of this forest when it was validated before (else None)."""
    n_g = a["gun_node"].shape[0]
    n_n = a["node_parent"].shape[0]
    for name in _GUN_INT_FIELDS + _GUN_FLOAT_FIELDS:
        if a[name].shape[0] != n_g:
            raise ValueError(f"{name}: length {a[name].shape[0]}, expected {n_g} (as gun_node)")
    for name in ("node_limit_kw", "node_step_kw"):
        if a[name] is not None and a[name].shape[0] != n_n:
            raise ValueError(f"{name}: length {a[name].shape[0]}, expected {n_n} (as node_parent)")
    fast = _values_ok(a)  # lengths are right: the value checks below can be one pass
    for name in _GUN_INT_FIELDS + ("node_parent",):
        if fast:
            break
        if n_g and name != "node_parent" or name == "node_parent" and n_n:
            if not np.issubdtype(a[name].dtype, np.integer):
                raise ValueError(f"{name}: integer array expected, got dtype {a[name].dtype}")
    for name in _GUN_FLOAT_FIELDS + ("node_limit_kw", "node_step_kw"):
        v = a[name]
        if fast or v is None or v.size == 0:
            continue
        if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
            raise ValueError(f"{name}: numeric array expected, got dtype {v.dtype}")
        v = v.astype(np.float64, copy=False)
        lo, hi = v.min(), v.max()  # NaN propagates into both: two passes decide the usual case
        if (lo > 0 if name == "weight" else lo >= 0) and (hi < np.inf or name == "node_limit_kw"):
            continue
        bad = np.isnan(v) | (v <= 0 if name == "weight" else v < 0)
        if name != "node_limit_kw":  # only a node may be unlimited
            bad |= np.isinf(v)
        i = _first(bad)
        x = float(v[i])
        why = "NaN" if x != x else "infinite" if math.isinf(x) else f"{x!r} must be {'> 0' if name == 'weight' else '>= 0'}"
        raise ValueError(f"{name}[{i}]: {why}")
    if n_g and fast and gn_ok(a["gun_node"], n_n) and (a["min_kw"] <= a["upper_kw"]).all():
        pass  # the usual case, in three reductions
    elif n_g:
        gn = a["gun_node"]
        bad = (gn < 0) | (gn >= n_n)
        if bad.any():
            i = _first(bad)
            raise ValueError(f"gun_node[{i}]: {int(gn[i])} is not a node index (0..{n_n - 1})")
        bad = a["min_kw"] > a["upper_kw"]
        if bad.any():
            i = _first(bad)
            raise ValueError(f"min_kw[{i}]: {float(a['min_kw'][i])!r} is above upper_kw[{i}] = {float(a['upper_kw'][i])!r}")
    hit = _tree_cached(a["node_parent"], validated=True) if n_n else None
    if n_n and hit is None:
        par = a["node_parent"]
        bad = (par < -1) | (par >= n_n) | (par == np.arange(n_n))
        if bad.any():
            i = _first(bad)
            raise ValueError(f"node_parent[{i}]: {int(par[i])} is not -1 or another node's index")
        # Pointer doubling: after k rounds every node points 2**k steps up (roots point to
        # themselves), so after ceil(log2 n)+1 rounds a node not pointing at a root is on,
        # or leads into, a cycle.
        up = np.where(par < 0, np.arange(n_n), par)
        for _ in range(int(n_n).bit_length() + 1):
            up = up[up]
        bad = par[up] >= 0
        if bad.any():
            i = _first(bad)
            raise ValueError(f"node_parent[{i}]: {int(par[i])} makes a cycle (node {i} never reaches a root)")
    return hit


# ----------------------------------------------------------------------------- the tree


def self_max_ok(depth: np.ndarray) -> bool:
    return depth.size == 0 or int(depth.max()) < 32767


class _Tree:
    """Depth, subtree size and pre-order rank of every node.

    Subtrees are contiguous in pre-order, so once guns are sorted by the pre-order rank of
    their node, the guns below any node form one slice: segmented sums are ``reduceat``
    over slices, not scatter-adds.
    """

    def __init__(self, parent: np.ndarray):
        n = parent.shape[0]
        self.n = n
        self.parent = parent
        depth = np.zeros(n, np.int64)
        idx = np.flatnonzero(parent >= 0)
        anc = parent[idx]
        for _ in range(n + 1):  # walk every node up one level per round; rounds = max depth
            if not idx.size:
                break
            depth[idx] += 1
            keep = parent[anc] >= 0
            idx, anc = idx[keep], parent[anc[keep]]
        else:  # only reachable with validate=False: never loop forever on a bad tree
            raise ValueError("node_parent: makes a cycle")
        self.depth = depth
        self.max_depth = int(depth.max()) if n else 0
        # Small ints sort stably by radix in O(n); int64 would take a comparison sort.
        order = np.argsort(depth.astype(np.int16 if self_max_ok(depth) else np.int64), kind="stable")
        bounds = np.searchsorted(depth[order], np.arange(self.max_depth + 2))
        self.by_depth = [order[bounds[d] : bounds[d + 1]] for d in range(self.max_depth + 1)]
        size = np.ones(n, np.int64)
        for d in range(self.max_depth, 0, -1):  # bottom-up subtree sizes
            nd = self.by_depth[d]
            size += np.bincount(parent[nd], weights=size[nd], minlength=n).astype(np.int64)
        self.size = size
        self.pre = self._preorder()
        if self.pre is not self._identity:
            # Nodes of one depth in pre-order: their gun slices then come in ascending order.
            self.by_depth = [nd[np.argsort(self.pre[nd])] for nd in self.by_depth]
        self.pre_lo = [self.pre[nd] for nd in self.by_depth]  # subtree = pre-order range
        self.pre_hi = [p + self.size[nd] for p, nd in zip(self.pre_lo, self.by_depth)]

    def _preorder(self) -> np.ndarray:
        n, parent, size = self.n, self.parent, self.size
        ar = np.arange(n)
        nr = parent >= 0
        # Fast path: the numbering already is a pre-order (every subtree is the index range
        # [i, i + size[i])), as when a site is built depth-first. Nesting of each child's range
        # in its parent's range is enough: the ranges then fill up exactly.
        p = parent[nr]
        c = ar[nr]
        self._identity = ar
        if np.all((p < c) & (c + size[nr] <= p + size[p])):
            return ar
        pre = np.zeros(n, np.int64)
        roots = self.by_depth[0]  # ascending index (stable sort)
        pre[roots] = np.cumsum(size[roots]) - size[roots]
        for d in range(1, self.max_depth + 1):
            nd = self.by_depth[d]  # ascending index
            nd = nd[np.argsort(parent[nd], kind="stable")]  # siblings together, by index
            pd = parent[nd]
            cs = np.cumsum(size[nd])
            first = np.r_[True, pd[1:] != pd[:-1]]
            grp_start = np.maximum.accumulate(np.where(first, np.arange(nd.size), 0))
            before = cs - size[nd] - (cs[grp_start] - size[nd[grp_start]])
            pre[nd] = pre[pd] + 1 + before
        return pre


_TREE_CACHE: list = []  # [(node_parent copy, _Tree, validated)]: the last forest seen


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal`` for two 1-D int arrays of one shape, without its fixed cost."""
    return bool((a == b).all())


def _tree_cached(node_parent: np.ndarray, validated: bool = False) -> _Tree | None:
    cached = _TREE_CACHE[0] if _TREE_CACHE else None
    if (cached is not None and (cached[2] or not validated) and cached[0].shape == node_parent.shape
            and _same(cached[0], node_parent)):
        return cached[1]
    return None


def _tree_of(node_parent: np.ndarray, validated: bool) -> _Tree:
    """The forest's _Tree, reused when ``node_parent`` equals the last call's (a control loop
    or a simulation calls with one topology over and over; checking costs one compare pass,
    building ~5 passes per depth, validating the parents a few more). A pure cache: same
    input, same result, nothing else kept."""
    tree = _tree_cached(node_parent)
    if tree is not None:
        if validated:
            _TREE_CACHE[0] = (_TREE_CACHE[0][0], tree, True)
        return tree
    tree = _Tree(node_parent.astype(np.int64, copy=True))
    for arr in [tree.parent, tree.depth, tree.size, tree.pre, *tree.by_depth, *tree.pre_lo, *tree.pre_hi]:
        arr.flags.writeable = False  # shared between calls: nobody may write into it
    _TREE_CACHE[:] = [(tree.parent, tree, validated)]
    return tree


class _Block:
    """The guns of one class, sorted by the pre-order rank of their node, with per-depth
    slices: ``lo[d], hi[d]`` are the slice ends of the nodes ``nodes[d]`` at depth d that
    have at least one gun of the block below them.

    The block works in a *compact node space*: those nodes, depth by depth, concatenated
    (``cnodes``; depth d at ``off[d]:off[d+1]``), plus one dummy at the end whose room is
    infinite. Per-node arrays of a class are that long, not as long as the whole forest.
    """

    def __init__(self, tree: _Tree, gun_pre: np.ndarray):
        self.tree = tree
        self.n = gun_pre.size
        self._chain = None
        cnt = np.bincount(gun_pre, minlength=tree.n)
        cs = np.zeros(tree.n + 1, np.int64)
        np.cumsum(cnt, out=cs[1:])
        self.nodes, self.lo, self.hi = [], [], []
        for nd, p0, p1 in zip(tree.by_depth, tree.pre_lo, tree.pre_hi):
            lo, hi = cs[p0], cs[p1]
            keep = hi > lo
            self.nodes.append(nd[keep])
            self.lo.append(lo[keep])
            self.hi.append(hi[keep])
        self.tiles = [lo.size > 0 and lo[0] == 0 and hi[-1] == self.n and bool(np.all(lo[1:] == hi[:-1]))
                      for lo, hi in zip(self.lo, self.hi)]
        self.off = np.zeros(len(self.nodes) + 1, np.int64)
        np.cumsum([nd.size for nd in self.nodes], out=self.off[1:])
        self.cnodes = np.concatenate(self.nodes)
        self._seg_idx = [None] * len(self.nodes)
        self.nc = self.cnodes.size  # index of the dummy

    def chain(self) -> np.ndarray:
        """Compact ids of every gun's ancestors, shape (depths, guns): row d = the ancestor at
        depth d (so a node only ever sits in one row), the dummy where a gun's node is above
        depth d. Built from the slices with one ``repeat`` per depth; cached. (One row per
        depth, not one column: gathers and reductions then run over contiguous rows, several
        times faster than over a short axis 1.)"""
        if self._chain is None:
            dummy = self.nc
            ch = np.empty((len(self.nodes), self.n), np.int64)
            for d in range(len(self.nodes)):
                lo, hi = self.lo[d], self.hi[d]
                ids = np.arange(self.off[d], self.off[d + 1])
                if self.tiles[d]:
                    ch[d] = np.repeat(ids, hi - lo)
                    continue
                if ids.size == 0:
                    ch[d] = dummy
                    continue
                # Slices with the gaps between them (guns whose node is above depth d).
                vals = np.empty(2 * ids.size + 1, np.int64)
                lens = np.empty(2 * ids.size + 1, np.int64)
                vals[0::2], vals[1::2] = dummy, ids
                lens[0] = lo[0]
                lens[1::2] = hi - lo
                lens[2:-1:2] = lo[1:] - hi[:-1]
                lens[-1] = self.n - hi[-1]
                ch[d] = np.repeat(vals, lens)
            ch.flags.writeable = False  # blocks are cached across calls: nobody may write into it
            self._chain = ch
        return self._chain

    def seg_sum(self, v: np.ndarray, d: int) -> np.ndarray:
        """Sum of ``v`` (block order) over each slice at depth d; exact per slice (no global
        cumsum, whose rounding would grow with the batch)."""
        lo, hi = self.lo[d], self.hi[d]
        if lo.size == 0:
            return np.zeros(0)
        if self.tiles[d]:  # slices cover the block end to end: one index per slice
            return np.add.reduceat(v, lo)
        idx = self._seg_idx[d]
        if idx is None:  # built once per block (blocks are kept across calls)
            idx = np.empty(2 * lo.size, np.int64)
            idx[0::2], idx[1::2] = lo, hi
            if hi[-1] == v.size:  # reduceat wants indices < len; the last slice runs to the end anyway
                idx = idx[:-1]
            idx.flags.writeable = False
            self._seg_idx[d] = idx
        return np.add.reduceat(v, idx)[0::2]

    def subtree_sums(self, v: np.ndarray) -> np.ndarray:
        """Per compact node (+ dummy 0): sum of ``v`` over the block's guns below it."""
        out = np.empty(self.nc + 1)
        for d in range(len(self.nodes)):
            out[self.off[d] : self.off[d + 1]] = self.seg_sum(v, d)
        out[-1] = 0.0
        return out


# ----------------------------------------------------------------------------- water-fill


def _water_fill(blk: _Block, room: np.ndarray, d: np.ndarray, w: np.ndarray, bound: np.ndarray,
                own: bool = False) -> np.ndarray:
    """Weighted max-min fill, exact, bottom-up over depths.

    ``d``: what each gun may still take (kW, block order), ``w``: weights, ``room``: kW each
    node may still give (compact node space of the block). Returns the gun amounts; writes the node that
    last lowered a gun into ``bound`` (block order).

    Per binding node, the level L solves sum_i min(d_i, w_i L) = room. The function is
    concave piecewise linear, so Newton's step from below,
    L <- (room - sum_{saturated} d) / sum_{unsaturated} w, never overshoots and stops exactly
    when the saturated set stops growing (at most one round per distinct breakpoint, in
    practice 2-4). The guns' d are then clipped to w L, so a node higher up sees its children
    already limited; a child's limit keeps holding because its sum is monotone in L.
    """
    if not own:  # (own: the caller hands ``d`` over, it may be written into)
        d = d.copy()
    for depth in range(len(blk.nodes) - 1, -1, -1):
        nodes = blk.nodes[depth]
        if nodes.size == 0:
            continue
        r = room[blk.off[depth] : blk.off[depth + 1]]
        tot = blk.seg_sum(d, depth)
        bind = tot > r  # not binding: nothing to do at this node
        if not bind.any():
            continue
        if _FAST_PATHS and blk.tiles[depth] and 2 * int(np.count_nonzero(bind)) > bind.size:
            # Most nodes of this depth bind and their slices cover the block end to end: work
            # on the whole block instead of gathering the binding slices. A node that does
            # not bind gets room inf and its guns start saturated, so its level is inf (its
            # guns keep what they have, none is marked); the binding ones see exactly the
            # arrays the gathers would give them.
            lens = blk.hi[depth] - blk.lo[depth]
            if bind.all():
                lam = _levels(d, w, np.maximum(r, 0.0), lens, blk.lo[depth])
            else:
                sat0 = np.repeat(~bind, lens)
                sat0 |= d <= 0.0
                lam = _levels(d, w, np.where(bind, np.maximum(r, 0.0), np.inf), lens, blk.lo[depth], sat0)
            lvl = w * np.repeat(lam, lens)
            hit = (d >= lvl) & (d > _FIT_TOL_KW)  # a gun a deeper node already cut to (about) 0 keeps that node
            bound[hit] = np.repeat(nodes, lens)[hit]
            np.minimum(d, lvl, out=d)
            continue
        nodes, r = nodes[bind], np.maximum(r[bind], 0.0)
        lo, hi = blk.lo[depth][bind], blk.hi[depth][bind]
        lens = hi - lo
        starts = np.zeros(lens.size, np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        idx = np.repeat(lo - starts, lens) + np.arange(int(lens.sum()))
        dd, ww = d[idx], w[idx]
        lam = _levels(dd, ww, r, lens, starts)
        lg = np.repeat(lam, lens)
        lvl = ww * lg
        hit = (dd >= lvl) & (dd > _FIT_TOL_KW)  # a gun a deeper node already cut to (about) 0 keeps that node
        bound[idx[hit]] = np.repeat(nodes, lens)[hit]
        d[idx] = np.minimum(dd, lvl)
    return d


def _levels(dd, ww, r, lens, starts, sat=None):
    """Water level per segment: L with sum(min(dd, ww L)) = r over each segment of guns
    (segments non-empty and binding: sum(dd) > r >= 0). Newton from below on the concave
    sum; only the segments whose saturated set still changes are iterated again.
    ``sat``: guns saturated from the start (default ``dd <= 0``; a segment whose guns all
    start saturated and whose room is inf gets level inf in one round)."""
    if sat is None:
        sat = dd <= 0.0
    lam = np.zeros(lens.size)
    act = None  # None: every segment, on the full arrays (the first round, no gathers)
    gi = None  # positions of the active segments' guns, from the second round on
    a_lens, a_starts, a_r = lens, starts, r
    while True:
        if act is None:
            sd, da, wa = sat, dd, ww
        else:
            sd, da, wa = sat[gi], dd[gi], ww[gi]
        dsat = np.add.reduceat(np.where(sd, da, 0.0), a_starts)
        wun = np.add.reduceat(np.where(sd, 0.0, wa), a_starts)
        pos_w = wun > 0
        la = (a_r - dsat) / np.where(pos_w, wun, 1.0)  # (no errstate: its context costs more)
        if not pos_w.all():
            la[~pos_w] = np.inf
        np.maximum(la, 0.0, out=la)
        new = da <= wa * np.repeat(la, a_lens)
        new |= sd
        grew = np.add.reduceat(new != sd, a_starts) > 0
        if act is None:
            lam[:] = la
            sat = new
            act = np.flatnonzero(grew)
        else:
            lam[act] = la
            sat[gi] = new
            act = act[grew]
        if act.size == 0:
            return lam
        a_lens, a_r = lens[act], r[act]
        a_starts = np.zeros(act.size, np.int64)
        np.cumsum(a_lens[:-1], out=a_starts[1:])
        gi = np.repeat(starts[act] - a_starts, a_lens) + np.arange(int(a_lens.sum()))


# ----------------------------------------------------------------------------- greedy packing


def _chain_min(v: np.ndarray, ch: np.ndarray) -> np.ndarray:
    """Per item: the least of ``v`` over its ancestors (``ch``: rows of ancestor ids)."""
    out = v[ch[0]]
    for j in range(1, ch.shape[0]):
        np.minimum(out, v[ch[j]], out=out)
    return out


def _greedy(site, ch, unit, max_units, slack):
    """Greedy packing; items come in greedy order (sites may interleave, each site's items
    are served in the order they appear). Item i takes
    ``t = min(max_units, floor((least slack over its ancestors + tol) / unit))`` units and its
    ancestors' slack shrinks by ``t * unit``. ``ch`` is the depth-aligned ancestor chain
    of the items (:meth:`_Block.chain`, one row per depth); ``slack`` (per node + dummy) is
    updated in place.

    Done in rounds that each settle a whole run per site instead of one item: with every
    undecided item tentatively taking all it wants, the items before the first one that
    does not fit (grouped prefix sums per ancestor level) get exactly what the one-by-one
    greedy would give them; the first misfit takes what is left; items that cannot take even
    one unit of what is now left never will (slack only shrinks) and take 0. So the number of
    rounds is about the number of partial fits per site, not the number of items.
    """
    k = site.size
    taken = np.zeros(k)
    if k == 0:
        return taken
    full = max_units * unit
    sid = site  # root node ids: index a per-node array instead of compacting with a sort
    ns = slack.size
    pos = np.arange(k)
    levels = []
    for j in range(ch.shape[0]):
        col = ch[j]
        tot = np.bincount(col, weights=full, minlength=slack.size)[col]
        if not np.any(tot > slack[col] + _FIT_TOL_KW):  # (the dummy's slack is inf)
            continue  # no node at this depth can run out: it never decides anything
        pj = _group_order(col, slack.size - 1, k, pos)  # grouped by ancestor, greedy order inside
        cs = col[pj]
        g0 = np.maximum.accumulate(np.where(np.r_[True, cs[1:] != cs[:-1]], pos, 0))
        levels.append((j, pj, g0))
    und = np.ones(k, bool)
    ix = None  # original positions of the items still worked on (None: all of them)
    tw = taken  # what each worked-on item takes
    while True:
        vals = np.where(und, full, 0.0)
        avail = np.full(k, np.inf)
        for j, pj, g0 in levels:
            v = vals[pj]
            excl = np.cumsum(v) - v
            pre = np.empty(k)
            pre[pj] = excl - excl[g0]
            np.minimum(avail, slack[ch[j]] - pre, out=avail)
        fail = np.flatnonzero(und & (full > avail + _FIT_TOL_KW))
        ff = np.full(ns, k)
        np.minimum.at(ff, sid[fail], fail)  # first misfit of each site
        f = fail[ff[sid[fail]] == fail]
        dec = und & (pos < ff[sid])
        tw[dec] = max_units[dec]
        tw[f] = np.clip(np.floor((avail[f] + _FIT_TOL_KW) / unit[f]), 0.0, max_units[f])
        dec[f] = True
        und &= ~dec
        di = np.flatnonzero(dec)
        amt = tw[di] * unit[di]
        for j in range(ch.shape[0]):
            np.subtract.at(slack, ch[j][di], amt)
        slack[-1] = np.inf
        ui = np.flatnonzero(und)
        if ui.size == 0:
            break
        cols = [j for j, _, _ in levels]  # only these depths can run out
        hopeless = unit[ui] > _chain_min(slack, ch[cols][:, ui]) + _FIT_TOL_KW if cols else np.zeros(ui.size, bool)
        und[ui[hopeless]] = False  # takes 0
        n_und = ui.size - int(np.count_nonzero(hopeless))
        if n_und == 0:
            break
        if 4 * n_und < k and _FAST_PATHS:
            # Most items are decided (typically after the first round): go on with the
            # undecided ones only, in the same order. Decided items only ever added zeros
            # to the prefix sums, so dropping them changes no sum and no decision.
            if ix is not None:
                taken[ix] = tw
            keep = und
            ix = np.flatnonzero(keep) if ix is None else ix[keep]
            newpos = np.cumsum(keep) - 1
            sid, ch, unit, max_units, full = sid[keep], ch[:, keep], unit[keep], max_units[keep], full[keep]
            k = n_und
            pos = np.arange(k)
            lv = []
            for j, pj, _ in levels:
                pj = newpos[pj[keep[pj]]]
                cs = ch[j][pj]
                lv.append((j, pj, np.maximum.accumulate(np.where(np.r_[True, cs[1:] != cs[:-1]], pos, 0))))
            levels = lv
            und = np.ones(k, bool)
            tw = np.zeros(k)
    if ix is not None:
        taken[ix] = tw
    return taken


def _group_order(col: np.ndarray, dummy: int, k: int, pos: np.ndarray) -> np.ndarray:
    """Stable order of ``col`` (items grouped by value, their order kept inside a group).
    When the values of one depth span fewer than 65535 ids (sites, feeders), a stable sort
    of uint16 keys is a radix sort, O(n); otherwise a sort of ``col * k + position``."""
    real = col != dummy
    if real.any():
        lo, hi = int(col[real].min()), int(col[real].max())
        if hi - lo < 65535:
            key = np.where(real, col - lo, hi - lo + 1).astype(np.uint16)
            return np.argsort(key, kind="stable")
    return np.argsort(col * k + pos)


def _greedy_order(m: np.ndarray, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Admission order of items given in block order: weight descending, then minimum
    ascending, then cap ascending, then block order (node pre-order)."""
    return np.lexsort((c, m, -w))


# ----------------------------------------------------------------------------- allocate


_FAST_PATHS = True
"""False sends every call through the general path, without the caches of partitions: the
property tests compare both ways bit for bit."""

_PART_CACHE: list = []  # [(tree, gun_node copy, class per gun copy, ncls, order, bounds, blocks)]


def _partition(tree: _Tree, gun_node: np.ndarray, cls: np.ndarray, ncls: int):
    """Guns sorted by (class, pre-order of node) -- ``order``, with class c at
    ``order[bounds[c]:bounds[c+1]]`` -- and a slot per class for its :class:`_Block`.

    Kept for the last call: when the forest, ``gun_node`` and the class of every gun (with
    the inactive ones as class ``ncls``) are what they were, the sort and the blocks are
    too (a control loop whose set of running guns and classes did not change; checking
    costs two compare passes). A pure cache: same input, same result."""
    if _FAST_PATHS and _PART_CACHE:
        t, gn, cl, nc, order, bounds, blocks = _PART_CACHE[0]
        if (t is tree and nc == ncls and gn.shape == gun_node.shape and _same(gn, gun_node)
                and _same(cl, cls)):
            return order, bounds, blocks
    gpre = tree.pre[gun_node]
    if np.all(gpre[1:] >= gpre[:-1]):
        # Guns already in node order (as the controller and scheduler build them): a stable
        # radix sort by class keeps it, in O(n).
        order = np.argsort(cls.astype(np.int16) if ncls < 32767 else cls, kind="stable")
    else:
        order = np.argsort(cls.astype(np.int64) * (tree.n + 1) + gpre, kind="stable")  # ties: lowest input index first
    key = cls[order]
    bounds = np.searchsorted(key, np.arange(ncls + 1))
    order.flags.writeable = False
    blocks = [None] * ncls  # filled as the classes are allocated
    _PART_CACHE[:] = [(tree, gun_node.copy(), cls.copy(), ncls, order, bounds, blocks)]
    return order, bounds, blocks


def allocate_numpy(problem: AllocationProblem, *, validate: bool = True) -> Allocation:
    """The numpy backend of :func:`allocate` (vectorised over the whole batch, no compiled
    code): the fallback where numba is not installed, and a second, independent
    implementation the tests hold the compiled one to. Same arguments and result."""
    a = _arrays(problem)
    tree = _validate(a) if validate else None
    n_g = a["gun_node"].shape[0]
    setpoint = np.zeros(n_g)
    bound_by = np.full(n_g, BOUND_ASK, np.int64)
    if n_g == 0:
        return Allocation(setpoint, bound_by)

    gun_node = a["gun_node"].astype(np.int64, copy=False)
    upper = a["upper_kw"].astype(np.float64, copy=False)
    ask = a["ask_kw"].astype(np.float64, copy=False)
    mn = a["min_kw"].astype(np.float64, copy=False)
    w = a["weight"].astype(np.float64, copy=False)
    prio = a["priority"]
    if tree is None:
        tree = _tree_of(a["node_parent"], validate)

    cap = np.minimum(ask, upper)
    cap_code = np.where(upper < ask, np.int8(BOUND_UPPER), np.int8(BOUND_ASK))  # (int8: less to move)
    step = None
    if a["node_step_kw"] is not None:
        st = a["node_step_kw"].astype(np.float64, copy=False)[gun_node]
        has = st > 0
        if has.any():
            step = st
            sd = np.where(has, st, 1.0)
            # Tolerance: 359.99999999 kW asked on a 30 kW step is 12 steps, not 11.
            # (In place, the same operations in the same order: the same bits.)
            q = np.divide(cap, sd)
            q += 1e-9
            np.floor(q, out=q)
            q *= sd
            np.copyto(cap, q, where=has)  # cap is ours (np.minimum made it)
            np.divide(mn, sd, out=q)
            q -= 1e-9
            np.ceil(q, out=q)
            q *= sd
            np.copyto(q, mn, where=~has)  # mn may be the caller's array: no writing into it
            mn = q
    if (_FAST_PATHS and step is None and not mn.any() and prio.min() == prio.max()
            and (gun_node[1:] >= gun_node[:-1]).all() and (tree.parent[gun_node] < 0).all()):
        return _allocate_flat(gun_node, cap, cap_code, w, a["node_limit_kw"], setpoint, bound_by)
    # A gun that cannot run within its own cap: 0 kW. Shed if it asked for something.
    # (copyto with a mask: a boolean fancy-index store is several times slower.)
    cannot = cap < mn - _FIT_TOL_KW
    off = cap <= 0
    bound_by = np.where(off, cap_code, bound_by)  # (np.where beats a masked copyto with a cast)
    active = ~off
    np.copyto(bound_by, BOUND_SHED, where=cannot & active)
    active &= ~cannot

    room = np.append(a["node_limit_kw"].astype(np.float64), np.inf)  # + dummy node

    # Guns sorted by (class, pre-order of node): every class is a block and inside it every
    # subtree a slice. Order among guns of one node does not matter to any rule.
    lo_p, hi_p = int(prio.min()), int(prio.max())
    if lo_p == hi_p:  # one class (the common small case): no table, no sort key
        classes, cls = [lo_p], np.zeros(n_g, np.int64)
    elif hi_p - lo_p < 4 * n_g + 1024:  # small class numbers: a table instead of a sort
        present = np.bincount(prio - lo_p) > 0
        classes = np.flatnonzero(present) + lo_p
        cls = (np.cumsum(present) - 1)[prio - lo_p]
    else:
        classes, cls = np.unique(prio, return_inverse=True)
    # The order of guns inside one node is free: no rule looks at it (admission sorts its
    # candidates by weight, minimum and cap itself, then by this block order, which is node
    # pre-order; what is left are guns equal in every field that matters, interchangeable).
    ncls = len(classes)
    cls = np.where(active, cls, ncls)  # inactive guns last, skipped
    order, bounds, blocks = _partition(tree, gun_node, cls, ncls)
    # Each class returns its guns' setpoints and bounds in block order; one scatter at the
    # end puts them in place (cheaper than a masked store per class).
    xs, bs = [], []
    for c in range(ncls):
        g = order[bounds[c] : bounds[c + 1]]
        if g.size:
            last = c == ncls - 1  # nobody after it needs the room that is left
            if blocks[c] is None:
                blocks[c] = _Block(tree, tree.pre[gun_node[g]])
            x, b = _allocate_class(blocks[c], room, g, cap, mn, w, step, last)
            xs.append(x)
            bs.append(b)
    n_act = int(bounds[ncls])
    if n_act:
        g = order[:n_act]
        setpoint[g] = np.concatenate(xs) if len(xs) > 1 else xs[0]
        bound_by[g] = np.concatenate(bs) if len(bs) > 1 else bs[0]
    full = active & (setpoint >= cap - _FIT_TOL_KW) & (bound_by != BOUND_SHED)
    bound_by = np.where(full, cap_code, bound_by)
    setpoint = np.where(full, cap, setpoint)
    return Allocation(setpoint, bound_by)


def _allocate_flat(gun_node, cap, cap_code, w, limit, setpoint, bound_by) -> Allocation:
    """The general path for its simplest case, with a fraction of its numpy calls (for small
    problems the calls are the cost): one class, no minimums, no module steps, every gun
    directly under a root (one aggregate limit per site, as in ACN-Sim), guns sorted by node.

    Same arithmetic as the general path on the same arrays in the same order (the guns with
    ``cap > 0``, by node), so the same bits: a property test holds the two paths equal."""
    off = cap <= 0
    act = None
    if off.any():  # the general path leaves them out of every sum: so must this one
        act = np.flatnonzero(~off)
        gun_node, cap_a, w = gun_node[act], cap[act], w[act]
    else:
        cap_a = cap
    n_g = gun_node.size
    d = cap_a
    if n_g:
        if gun_node[0] == gun_node[-1]:  # one node (sorted): one segment
            starts = np.zeros(1, np.int64)
            lens = np.full(1, n_g)
        else:  # (np.r_ and np.diff cost more than these for small arrays)
            chg = np.empty(n_g, bool)
            chg[0] = True
            np.not_equal(gun_node[1:], gun_node[:-1], out=chg[1:])
            starts = np.flatnonzero(chg)
            lens = np.empty_like(starts)
            lens[:-1] = starts[1:] - starts[:-1]
            lens[-1] = n_g - starts[-1]
        lens_all = lens
        nodes = gun_node[starts]
        r = limit[nodes].astype(np.float64, copy=False)
        bind = np.add.reduceat(cap_a, starts) > r
        if bind.any():
            bnd = np.full(n_g, BOUND_ASK, np.int64)
            if not bind.all():
                starts, nodes, lens, r = starts[bind], nodes[bind], lens[bind], r[bind]
                idx = np.flatnonzero(np.repeat(bind, lens_all))
                s2 = np.zeros(lens.size, np.int64)
                np.cumsum(lens[:-1], out=s2[1:])
                dd, ww = cap_a[idx], w[idx]
            else:
                idx, s2, dd, ww = None, starts, cap_a, w
            lam = _levels(dd, ww, np.maximum(r, 0.0), lens, s2)
            lvl = ww * np.repeat(lam, lens)
            hit = dd >= lvl
            dd = np.minimum(dd, lvl)
            if idx is None:
                d = dd
                bnd = np.where(hit, np.repeat(nodes, lens), BOUND_ASK)
            else:
                d = cap_a.copy()
                d[idx] = dd
                bnd[idx[hit]] = np.repeat(nodes, lens)[hit]
            if act is None:
                bound_by = bnd
            else:
                bound_by[act] = bnd
    if act is None:
        setpoint = d.copy() if d is cap else d
    else:
        setpoint[act] = d
    full = ~off & (setpoint >= cap - _FIT_TOL_KW)
    np.copyto(bound_by, cap_code, where=off | full)
    np.copyto(setpoint, cap, where=full)
    return Allocation(setpoint, bound_by)


def _allocate_class(blk, room, g, cap, mn, w, step, last=False):
    """One priority class: admission of minimums, water-fill, module steps; then take what
    the class used off ``room`` (in place) for the classes after it.

    ``g``: the class's guns in block order, ``blk`` their :class:`_Block`. Works in the block's compact node space.
    Returns (setpoint, bound) of those guns in block order (shed guns: 0 kW, BOUND_SHED)."""
    m, c, ww = mn[g], cap[g], w[g]
    room_c = np.append(room[blk.cnodes], np.inf)  # + dummy

    # --- admission of minimums
    want = np.where(m > 0, m, 0.0)
    admitted = np.ones(g.size, bool)
    if want.any():
        want_c = blk.subtree_sums(want)
        over = want_c > room_c + _FIT_TOL_KW
        if over.any():
            # A gun is contested only if some ancestor cannot hold every minimum below it;
            # guns with no such ancestor are admitted whatever the others do.
            ch = blk.chain()
            cand = np.flatnonzero(want > 0)
            cch = ch[:, cand]
            contested = over[cch[0]]
            for j in range(1, cch.shape[0]):
                contested |= over[cch[j]]
            cand = cand[contested]
            sure = want.copy()
            sure[cand] = 0.0
            slack = room_c - blk.subtree_sums(sure)
            slack[-1] = np.inf
            # Before ordering anything: a candidate whose minimum exceeds what some ancestor
            # has even now is shed whatever the order (room only shrinks as others get in).
            # (In an overloaded site that is most of a low class: the greedy never sees them.)
            hopeless = m[cand] > _chain_min(slack, ch[:, cand]) + _FIT_TOL_KW
            shed = cand[hopeless]
            cand = cand[~hopeless]
            if cand.size:
                cand = cand[_greedy_order(m[cand], ww[cand], c[cand])]
                cch = ch[:, cand]
                t = _greedy(cch[0], cch, m[cand], np.ones(cand.size), slack)
                shed = np.concatenate([shed, cand[t < 1]])
            admitted[shed] = False
            fixed = np.where(admitted, m, 0.0)
            fixed_c = blk.subtree_sums(fixed)
        else:
            fixed, fixed_c = want, want_c
    else:
        fixed, fixed_c = want, np.zeros(blk.nc + 1)
    inc = np.where(admitted, c - m, 0.0)
    bnd = np.full(g.size, BOUND_ASK, np.int64)

    # --- water-fill above the minimums
    x = fixed + _water_fill(blk, room_c - fixed_c, inc, ww, bnd)

    # --- module steps
    s = None if step is None else step[g]
    stepped = None if s is None else (s > 0) & admitted
    if stepped is not None and stepped.any():
        ch = blk.chain()
        sd = np.where(stepped, s, 1.0)
        x = np.where(stepped, np.maximum(np.floor(x / sd + 1e-9) * sd, fixed), x)
        # Top-up: whole steps into what rounding freed (and headroom nobody took), with the
        # unstepped guns still at their water-fill share, so the stepped guns only get back
        # what rounding took from them, not their neighbours' share. One step per gun per
        # pass, in admission order, until a pass gives no step.
        slack = room_c - blk.subtree_sums(x)
        slack[-1] = np.inf
        cand = np.flatnonzero(stepped & (x < c - _FIT_TOL_KW))
        cand = cand[_greedy_order(m[cand], ww[cand], c[cand])]
        cch = ch[:, cand]
        while cand.size:
            fits = s[cand] <= _chain_min(slack, cch) + _FIT_TOL_KW
            cand, cch = cand[fits], cch[:, fits]
            if not cand.size:
                break
            t = _greedy(cch[0], cch, s[cand], np.ones(cand.size), slack)
            x[cand] += t * s[cand]
            more = (t > 0) & (x[cand] < c[cand] - _FIT_TOL_KW)
            cand, cch = cand[more], cch[:, more]
        # Refill the unstepped guns around the now fixed stepped ones. (If every admitted gun
        # is stepped the refill gives nothing and the bounds it would mark are all redone
        # below or at the end, so it is skipped: a property test checks.)
        if not _FAST_PATHS or (admitted & ~stepped).any():
            fixed2 = np.where(stepped, x, fixed)
            inc2 = np.where(stepped, 0.0, inc)
            bnd[~stepped] = BOUND_ASK
            x = fixed2 + _water_fill(blk, room_c - blk.subtree_sums(fixed2), inc2, ww, bnd, own=True)
        # Stepped guns below their cap: bound by the deepest ancestor left with less than one
        # step of headroom (it is what stops one more step).
        used_c = blk.subtree_sums(x)
        left = room_c - used_c
        below = np.flatnonzero(stepped & (x < c - _FIT_TOL_KW))
        if below.size:
            need = s[below] - _FIT_TOL_KW
            cid = np.full(below.size, blk.nc)  # the dummy: no node blocks it
            for j in range(ch.shape[0]):  # top down: the deepest blocked ancestor wins
                bj = ch[j][below]
                np.copyto(cid, bj, where=left[bj] < need)
            bnd[below] = np.append(blk.cnodes, BOUND_ASK)[cid]
    elif not last:
        used_c = blk.subtree_sums(x)
    if not last:
        room[blk.cnodes] -= used_c[:-1]
    if not admitted.all():
        x[~admitted] = 0.0
        bnd[~admitted] = BOUND_SHED
    return x, bnd


# ----------------------------------------------------------------------------- the entry point

try:  # the compiled backend; without numba the numpy backend gives the same results, slower
    from . import _kernel
except ImportError:  # pragma: no cover - numba is a dependency; this is for broken installs
    _kernel = None

BACKENDS: tuple[str, ...] = ("numba", "numpy") if _kernel is not None else ("numpy",)
"""The backends this installation has, fastest first."""

DEFAULT_BACKEND: str = BACKENDS[0]
"""What :func:`allocate` uses when not told: ``"numba"`` (compiled per tree, all cores for
big batches) when numba imports, else ``"numpy"``."""


def warm_up() -> None:
    """Compile (or load from numba's cache) the numba backend now rather than in the first
    call: after an install the first compile takes ~10 s, later processes load it in ~0.4 s.
    A no-op on the numpy backend."""
    if _kernel is not None:
        _kernel.warm_up()


def _shapes_and_types_ok(a: dict[str, np.ndarray]) -> bool:
    """Lengths and dtypes right (no pass over the values). False: :func:`_validate` says what."""
    n_g = a["gun_node"].shape[0]
    n_n = a["node_parent"].shape[0]
    for name in _GUN_INT_FIELDS + _GUN_FLOAT_FIELDS:
        if a[name].shape[0] != n_g:
            return False
    for name in ("node_limit_kw", "node_step_kw"):
        if a[name] is not None and a[name].shape[0] != n_n:
            return False
    for name in _GUN_INT_FIELDS + ("node_parent",):
        if a[name].size and a[name].dtype.kind not in "iu":
            return False
    for name in _GUN_FLOAT_FIELDS + ("node_limit_kw", "node_step_kw"):
        if a[name] is not None and a[name].size and a[name].dtype.kind not in "fiu":
            return False
    return True


def allocate(problem: AllocationProblem, *, validate: bool = True, backend: str | None = None) -> Allocation:
    """Allocate a batch (see the module docstring for the rules). Pure: arrays in, arrays out.

    ``backend``: ``"numba"`` or ``"numpy"`` (default :data:`DEFAULT_BACKEND`); both give the
    same setpoints (to float rounding, far below ``LIMIT_TOL_KW``) and the same ``bound_by``.
    With ``validate=False`` the caller promises valid input (see :func:`_validate`); the
    result for invalid input is then undefined, though a cycle or an index out of range
    still raises rather than hanging or reading out of bounds.
    """
    backend = backend or DEFAULT_BACKEND
    if backend == "numpy":
        return allocate_numpy(problem, validate=validate)
    if backend != "numba":
        raise ValueError(f"backend: {backend!r} is not one of ('numba', 'numpy')")
    if _kernel is None:
        raise ValueError("backend: 'numba' is not available here (numba does not import); use 'numpy'")
    a = _arrays(problem)
    if validate and not _shapes_and_types_ok(a):
        _validate(a)  # raises, naming the field
    # Contiguous, native int64 / float64 and writeable (copies only when an array is not so
    # already): numba compiles one kernel per array type, and a read-only or strided array
    # would cost a second ~10 s compile. The kernel never writes into its inputs.
    i64 = lambda v: np.require(v, np.int64, "CW")  # noqa: E731
    f64 = lambda v: np.require(v, np.float64, "CW")  # noqa: E731
    gun_node, prio, parent = i64(a["gun_node"]), i64(a["priority"]), i64(a["node_parent"])
    upper, mn, ask, w = f64(a["upper_kw"]), f64(a["min_kw"]), f64(a["ask_kw"]), f64(a["weight"])
    limit = f64(a["node_limit_kw"])
    step = None if a["node_step_kw"] is None else f64(a["node_step_kw"])
    try:
        setpoint, bound_by = _kernel.solve(gun_node, upper, mn, ask, w, prio, parent, limit, step, validate)
    except _kernel.BadInput:
        if not validate:
            raise ValueError("gun_node or node_parent: an index out of range (validate=True names it)") from None
        _validate(a)  # raises, naming the field and the first bad index
        return allocate_numpy(problem)  # (unreachable unless the two checks disagree: be safe)
    return Allocation(setpoint, bound_by)
