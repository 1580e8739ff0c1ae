"""Plain-Python reference allocator: the rules of controller/allocation/, written for
reading, not speed, and computed a different way.

Where the core fills bottom-up with one exact water level per node (Newton on each node's
concave sum), this oracle does textbook *progressive filling*: raise one common level t for
all unfrozen guns (gun i holds min(room_i, w_i * t)); find the first t at which some node
fills up; freeze every gun below that node; repeat. For laminar limits both give the unique
weighted max-min fair allocation, so agreement is a real check.

Admission and module steps are greedy by definition, so here they are literal loops over
the guns in the documented order, over every ancestor, one gun at a time.
"""

from __future__ import annotations

import math

FIT_TOL_KW = 1e-9  # same "does it fit" slack as the core (documented there)


def _ancestors(parent, n):
    out = []
    while n >= 0:
        out.append(n)
        n = parent[n]
    return out


def _level_at(base, items, room):
    """Smallest t with base + sum(min(d, w t)) = room over items (d, w); inf if never."""
    if base + sum(d for d, _ in items) <= room:
        return math.inf
    need = room - base
    if need <= 0:
        return 0.0
    pts = sorted(items, key=lambda it: it[0] / it[1])
    used, wsum = 0.0, sum(w for _, w in pts)
    for d, w in pts:
        t = d / w
        if used + wsum * t >= need:  # crosses before this gun saturates
            return (need - used) / wsum
        used += d
        wsum -= w
    return math.inf  # unreachable: the sum of all d exceeds need


def _progressive_fill(parent, room, guns, anc, base, inc, w):
    """Weighted max-min fill of ``inc`` (dict gun -> kW it may take) over node ``room``
    with ``base`` (dict gun -> kW already fixed). Returns (amount dict, bound dict)."""
    got = {i: 0.0 for i in guns}
    bound = {}
    frozen = {i for i in guns if inc[i] <= 0}
    fixed_use = {}
    for i in guns:
        for a in anc[i]:
            fixed_use[a] = fixed_use.get(a, 0.0) + base[i]
    while len(frozen) < len(guns):
        live = [i for i in guns if i not in frozen]
        best, best_nodes = math.inf, []
        for n in fixed_use:
            if math.isinf(room[n]):
                continue
            under = [i for i in guns if n in anc[i]]
            items = [(inc[i], w[i]) for i in under if i not in frozen]
            if not items:
                continue
            b = fixed_use[n] + sum(got[i] for i in under if i in frozen)
            t = _level_at(b, items, room[n])
            if t < best - 1e-12:
                best, best_nodes = t, [n]
            elif abs(t - best) <= 1e-12:
                best_nodes.append(n)
        if math.isinf(best):
            for i in live:
                got[i] = inc[i]
                frozen.add(i)
            break
        # Guns that reach their own room at or before t freeze at it; guns below a node
        # that fills at t freeze at the level.
        for i in live:
            if inc[i] <= w[i] * best:
                got[i] = inc[i]
                frozen.add(i)
        for n in best_nodes:
            for i in live:
                if n in anc[i] and i not in frozen:
                    got[i] = w[i] * best
                    bound[i] = n
                    frozen.add(i)
    return got, bound


def _preorder(parent):
    """Depth-first position of every node: roots by index, children by index."""
    kids = {}
    for n, p in enumerate(parent):
        kids.setdefault(p, []).append(n)
    pos, stack = {}, list(reversed(kids.get(-1, [])))
    while stack:
        n = stack.pop()
        pos[n] = len(pos)
        stack.extend(reversed(kids.get(n, [])))
    return pos


def oracle_allocate(gun_node, upper_kw, min_kw, ask_kw, priority, weight,
                    node_parent, node_limit_kw, node_step_kw=None):
    """Return (setpoint list, shed list of bool) for plain sequences (any batch)."""
    n_g = len(gun_node)
    parent = [int(p) for p in node_parent]
    room = [float(x) for x in node_limit_kw]
    steps = [0.0] * len(parent) if node_step_kw is None else [float(s) for s in node_step_kw]
    anc = [_ancestors(parent, int(gun_node[i])) for i in range(n_g)]
    pre = _preorder(parent)
    step, cap, mn = [], [], []
    for i in range(n_g):
        s = steps[int(gun_node[i])]
        c = min(float(ask_kw[i]), float(upper_kw[i]))
        m = float(min_kw[i])
        if s > 0:
            c = math.floor(c / s + 1e-9) * s
            m = math.ceil(m / s - 1e-9) * s
        step.append(s)
        cap.append(c)
        mn.append(m)
    x = [0.0] * n_g
    shed = [False] * n_g
    for cls in sorted(set(int(p) for p in priority)):
        guns = []
        for i in range(n_g):
            if int(priority[i]) != cls or cap[i] <= 0:
                continue
            if cap[i] < mn[i] - FIT_TOL_KW:
                shed[i] = True
                continue
            guns.append(i)
        w = {i: float(weight[i]) for i in guns}
        # Admission, one gun at a time in the documented order.
        adm_key = lambda i: (-w[i], mn[i], cap[i], pre[int(gun_node[i])], i)
        left = list(room)
        admitted = []
        for i in sorted(guns, key=adm_key):
            if mn[i] > 0:
                if all(mn[i] <= left[a] + FIT_TOL_KW for a in anc[i]):
                    for a in anc[i]:
                        left[a] -= mn[i]
                else:
                    shed[i] = True
                    continue
            admitted.append(i)
        base = {i: mn[i] for i in admitted}
        inc = {i: cap[i] - mn[i] for i in admitted}
        got, _ = _progressive_fill(parent, room, admitted, anc, base, inc, w)
        val = {i: base[i] + got[i] for i in admitted}
        stepped = [i for i in admitted if step[i] > 0]
        if stepped:
            for i in stepped:
                val[i] = max(mn[i], math.floor(val[i] / step[i] + 1e-9) * step[i])
            slack = list(room)
            for i in admitted:
                for a in anc[i]:
                    slack[a] -= val[i]
            # Passes in admission order, one step per gun per pass, until a pass gives none.
            while True:
                gave = False
                for i in sorted(stepped, key=adm_key):
                    if val[i] + step[i] > cap[i] + FIT_TOL_KW:
                        continue
                    if all(step[i] <= slack[a] + FIT_TOL_KW for a in anc[i]):
                        val[i] += step[i]
                        for a in anc[i]:
                            slack[a] -= step[i]
                        gave = True
                if not gave:
                    break
            base2 = {i: (val[i] if step[i] > 0 else mn[i]) for i in admitted}
            inc2 = {i: (0.0 if step[i] > 0 else cap[i] - mn[i]) for i in admitted}
            got2, _ = _progressive_fill(parent, room, admitted, anc, base2, inc2, w)
            val = {i: base2[i] + got2[i] for i in admitted}
        for i in admitted:
            x[i] = val[i]
            for a in anc[i]:
                room[a] -= val[i]
    return x, shed
