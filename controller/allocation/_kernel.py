"""The allocation rules compiled per tree (numba): the fast backend of :func:`allocate`.

Same rules, same order of operations and same tolerances as the numpy backend in
``_core.py`` (the module docstring of the package states them); property tests hold the two
backends to each other and both to the plain-Python oracle.

Why compiled: the rules are a per-site greedy (admission, module steps) and per-node exact
water levels. Vectorised over a whole batch they cost some 300 passes over the gun arrays
(~500 ns per gun, 25x the cost of reading the inputs once); run per tree in compiled loops,
every site's working set (about a hundred guns) stays in L1 cache and each gun is touched a
few dozen times (~85 ns per gun on one core of the bench machine, ~45 on two). Trees are
independent, so a big batch runs on all cores.

Layout: nodes are renumbered in depth-first pre-order (roots and siblings by index), so the
nodes of a tree and the subtree of any node are contiguous ranges; guns are sorted (stably)
by the pre-order position of their node, so the guns of a tree, and the guns of one class
below any node, are contiguous too. Each chunk of trees (one per worker in a parallel run)
allocates its scratch once, sized for its largest tree, and solves its trees one after the
other in it: chunks share nothing but the read-only inputs and disjoint slots of the output.
The per-tree functions allocate nothing and are compiled without reference counting
(``_nrt=False``): numba otherwise increments and decrements a count for every array
argument of every call, ~15 % of the time here. Values are kW.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_TOL = 1e-9  # = _core._FIT_TOL_KW: slack of every "does it fit" comparison
_ASK = -1  # = BOUND_ASK
_UPPER = -2  # = BOUND_UPPER
_SHED = -3  # = BOUND_SHED


@njit(cache=True)
def forest(parent):
    """Pre-order of a forest given by parent indices (-1 = root).

    Returns ``(at, pre_of, par_p, size_p, tree_start, n_trees, reached)``: ``at[k]`` the node
    at pre-order position k, ``pre_of[v]`` the position of node v, ``par_p`` / ``size_p``
    parent position and subtree size per position, ``tree_start[t]`` the first position of
    tree t (``tree_start[n_trees]`` = nodes reached). ``reached < n`` means some node never
    reaches a root (a cycle); ``pre_of`` is -1 there.
    """
    n = parent.shape[0]
    off = np.zeros(n + 1, np.int64)
    for i in range(n):
        p = parent[i]
        if p >= 0:
            off[p + 1] += 1
    for i in range(n):
        off[i + 1] += off[i]
    kids = np.empty(off[n], np.int64)
    fill = off[:n].copy()
    for i in range(n):  # children in index order
        p = parent[i]
        if p >= 0:
            kids[fill[p]] = i
            fill[p] += 1
    pre_of = np.full(n, -1, np.int64)
    at = np.empty(n, np.int64)
    tree_start = np.empty(n + 1, np.int64)
    stack = np.empty(n, np.int64)
    k = 0
    nt = 0
    for r in range(n):
        if parent[r] >= 0:
            continue
        tree_start[nt] = k
        nt += 1
        stack[0] = r
        sp = 1
        while sp > 0:
            sp -= 1
            v = stack[sp]
            pre_of[v] = k
            at[k] = v
            k += 1
            for j in range(off[v + 1] - 1, off[v] - 1, -1):  # pushed in reverse: smallest first out
                stack[sp] = kids[j]
                sp += 1
    tree_start[nt] = k
    par_p = np.full(k, -1, np.int64)
    size_p = np.ones(k, np.int64)
    for q in range(k):
        p = parent[at[q]]
        if p >= 0:
            par_p[q] = pre_of[p]
    for q in range(k - 1, -1, -1):  # children come after their parent
        p = par_p[q]
        if p >= 0:
            size_p[p] += size_p[q]
    return at, pre_of, par_p, size_p, tree_start, nt, k


@njit(cache=True)
def indices_ok(gun_node, parent):
    """Every gun's node and every node's parent is an index the kernel may follow."""
    n = parent.shape[0]
    for i in range(gun_node.shape[0]):
        g = gun_node[i]
        if g < 0 or g >= n:
            return False
    for i in range(n):
        p = parent[i]
        if p < -1 or p >= n or p == i:
            return False
    return True


@njit(cache=True, inline="always")
def _before(wi, mi, ci, i, wj, mj, cj, j):
    """Admission order: weight descending, minimum ascending, cap ascending, then position
    (= node pre-order, then input index). Scalars only: passing arrays to a helper called in
    a loop costs a reference count update per array per call."""
    if wi != wj:
        return wi > wj
    if mi != mj:
        return mi < mj
    if ci != cj:
        return ci < cj
    return i < j


@njit(cache=True, _nrt=False)
def _sort_admission(a, lo, hi, tmp, w, mn, cap):
    """Sort the positions ``a[lo:hi]`` into admission order (a total order: any sort gives
    the same result). Insertion sort for short runs, merged bottom-up."""
    run = 16
    for s in range(lo, hi, run):
        e = min(s + run, hi)
        for p in range(s + 1, e):
            x = a[p]
            q = p - 1
            while q >= s and _before(w[x], mn[x], cap[x], x, w[a[q]], mn[a[q]], cap[a[q]], a[q]):
                a[q + 1] = a[q]
                q -= 1
            a[q + 1] = x
    width = run
    while width < hi - lo:
        for s in range(lo, hi, 2 * width):
            mid = min(s + width, hi)
            e = min(s + 2 * width, hi)
            if mid >= e:
                continue
            p, q, o = s, mid, s
            while p < mid and q < e:
                aq = a[q]
                ap = a[p]
                if _before(w[aq], mn[aq], cap[aq], aq, w[ap], mn[ap], cap[ap], ap):
                    tmp[o] = a[q]
                    q += 1
                else:
                    tmp[o] = a[p]
                    p += 1
                o += 1
            while p < mid:
                tmp[o] = a[p]
                p += 1
                o += 1
            while q < e:
                tmp[o] = a[q]
                q += 1
                o += 1
            for o in range(s, e):
                a[o] = tmp[o]
        width *= 2


# ----------------------------------------------------------------------------- one tree
# Inside a tree everything is local: guns 0..ng-1 in position order (node pre-order, then
# input index), nodes 0..nn-1 in pre-order (0 = the root). A class works on a list of its
# guns (``lst[:nc]``, position order) and on its *relevant nodes* ``rel[:nr]``: the nodes
# above at least one of its guns, in pre-order, so a class of five guns on a site of fifty
# piles touches some ten nodes, not fifty-six. The guns below relevant node k are the slice
# ``lst[lo[k] : lo[k] + cnt[k]]``.


@njit(cache=True, _nrt=False)
def _relevant(lst, nc, gk, par, mark, rel, walk):
    """Fill ``rel`` with the nodes above the guns ``lst[:nc]`` in pre-order; returns their
    count. (Walking up from each gun in position order until a marked node, the new nodes
    of each walk, top-down, come after every node found before them in pre-order.)"""
    nr = 0
    for p in range(nc):
        v = gk[lst[p]]
        nw = 0
        while v >= 0 and not mark[v]:
            mark[v] = True
            walk[nw] = v
            nw += 1
            v = par[v]
        for q in range(nw - 1, -1, -1):
            rel[nr] = walk[q]
            nr += 1
    for r in range(nr):
        mark[rel[r]] = False
    return nr


@njit(cache=True, _nrt=False)
def _slices(lst, nc, gk, rel, nr, par, lo, cnt):
    """``lo[k]``, ``cnt[k]`` for every relevant node k over the guns ``lst[:nc]``."""
    # Every gun's node is relevant, so the guns before node k are those of the relevant
    # nodes before it: a count per node, then a running sum in pre-order.
    for r in range(nr):
        cnt[rel[r]] = 0
    for p in range(nc):
        cnt[gk[lst[p]]] += 1
    run = 0
    for r in range(nr):
        k = rel[r]
        lo[k] = run
        run += cnt[k]
    for r in range(nr - 1, 0, -1):  # rel[0] is the root; children after parents
        k = rel[r]
        cnt[par[k]] += cnt[k]


@njit(cache=True, _nrt=False)
def _sums(lst, nc, val, gk, rel, nr, par, acc):
    """acc[k] = sum of val over the guns ``lst[:nc]`` below relevant node k."""
    for r in range(nr):
        acc[rel[r]] = 0.0
    for p in range(nc):
        i = lst[p]
        acc[gk[i]] += val[i]
    for r in range(nr - 1, 0, -1):
        k = rel[r]
        acc[par[k]] += acc[k]


@njit(cache=True, _nrt=False)
def _fill(lst, nc, base, d, w, gk, rel, nr, par, lo, cnt, room, acc, sat, bound, have_acc):
    """Rule 4 over the guns ``lst[:nc]``: weighted max-min share of the headroom above
    ``base``; ``d`` (what each may take above its base) is cut to its share in place, and a
    gun cut by a node gets that node in ``bound``. Bottom-up, one exact level per binding
    node (as ``_core._levels``)."""
    if not have_acc:  # (the caller may have these sums already: acc = sums of base)
        _sums(lst, nc, base, gk, rel, nr, par, acc)
    _levels(lst, nc, d, w, rel, nr, lo, cnt, room, acc, sat, bound)


@njit(cache=True, _nrt=False)
def _levels(lst, nc, d, w, rel, nr, lo, cnt, room, acc, sat, bound):
    """The water levels of :func:`_fill`, given what each node has used (``acc``)."""
    for r in range(nr - 1, -1, -1):  # deepest first along every path
        k = rel[r]
        rk = room[k] - acc[k]
        if rk == np.inf:
            continue
        s0 = lo[k]
        s1 = s0 + cnt[k]
        if s0 == s1:
            continue
        tot = 0.0
        for p in range(s0, s1):
            tot += d[lst[p]]
        if not tot > rk:
            continue
        if rk < 0.0:
            rk = 0.0
        # Newton from below: lam = (rk - sum of saturated d) / (sum of unsaturated w) never
        # overshoots; stop when no gun joins the saturated set. One pass per round: the pass
        # that grows the set also sums it (in slice order, the same arithmetic as _core).
        # (The loops are branch-free: which guns saturate is data, a branch on it would be
        # mispredicted half the time; a multiply by 0 or 1 adds exactly 0 or the value.)
        ds = 0.0
        wu = 0.0
        for p in range(s0, s1):
            i = lst[p]
            di = d[i]
            sa = di <= 0.0
            sat[i] = sa
            ds += di * sa
            wu += w[i] * (not sa)
        while True:
            lam = max((rk - ds) / wu, 0.0) if wu > 0 else np.inf
            changed = False
            ds = 0.0
            wu = 0.0
            for p in range(s0, s1):
                i = lst[p]
                di = d[i]
                wi = w[i]
                was = sat[i]
                sa = was | (di <= wi * lam)
                changed |= sa != was
                sat[i] = sa
                ds += di * sa
                wu += wi * (not sa)
            if not changed:
                break
        for p in range(s0, s1):
            i = lst[p]
            di = d[i]
            lvl = w[i] * lam
            cut = (di >= lvl) & (di > _TOL)  # a gun a deeper node cut to (about) 0 keeps that node
            bound[i] = k if cut else bound[i]
            d[i] = lvl if cut else di


@njit(cache=True, _nrt=False)
def _solve_tree(nn, ng, par, room, gk, cap, mn, st, w, pr, code, x, bound, gorder, permuted, ccount,
                cand, lst, adm, todo, scr, base, d, sat, rel, walk, mark, lo, cnt, acc, slack, need):
    """Rules 1-5 for one tree; results in ``x`` and ``bound`` (local node index or code).
    Guns are taken in node order: ``gorder`` when ``permuted``, else by index."""
    # Rule 1: what cannot run within its own cap; the rest are candidates, in node order.
    m = 0
    for qq in range(ng):
        i = gorder[qq] if permuted else qq
        x[i] = 0.0
        off = cap[i] <= 0.0
        cannot = cap[i] < mn[i] - _TOL
        bound[i] = code[i] if off else (_SHED if cannot else _ASK)
        cand[m] = i  # branch-free filter: written always, kept when it counts
        m += not (off or cannot)
    # Classes, lowest priority number first. Class numbers within a small range (the normal
    # case): one counting sort (stable: node order kept inside a class).
    pmin = 0
    pmax = -1
    for p in range(m):
        q = pr[cand[p]]
        pmin = q if (p == 0 or q < pmin) else pmin
        pmax = q if (p == 0 or q > pmax) else pmax
    # (pmax - pmin could overflow int64 for class numbers near both ends of its range: the
    # difference is taken in floats first, exact enough to tell "small" from "far apart")
    span = pmax - pmin + 1 if float(pmax) - float(pmin) < 1e15 else 65
    if m > 0 and span <= 64:
        for c in range(span + 1):
            ccount[c] = 0
        for p in range(m):
            ccount[pr[cand[p]] - pmin + 1] += 1
        for c in range(span):
            ccount[c + 1] += ccount[c]
        for p in range(m):
            i = cand[p]
            c = pr[i] - pmin
            lst[ccount[c]] = i
            ccount[c] += 1
        start = 0
        for c in range(span):  # (ccount[c] is now the end of class c)
            nc = ccount[c] - start
            if nc > 0:
                _solve_class(nc, ccount[c] == m, par, room, gk, cap, mn, st, w, x, bound, lst[start:],
                             adm, todo, scr, base, d, sat, rel, walk, mark, lo, cnt, acc, slack, need)
            start = ccount[c]
        m = 0  # done
    # Otherwise a scan per class.
    done = 0
    have_prev = False
    prev = 0
    while done < m:
        cur = 0
        found = False
        for p in range(m):  # the least class number above the previous one
            q = pr[cand[p]]
            ok = (not have_prev or q > prev) and (not found or q < cur)
            cur = q if ok else cur
            found |= ok
        prev = cur
        have_prev = True
        nc = 0
        for p in range(m):
            i = cand[p]
            lst[nc] = i
            nc += pr[i] == cur
        done += nc
        _solve_class(nc, done == m, par, room, gk, cap, mn, st, w, x, bound,
                     lst, adm, todo, scr, base, d, sat, rel, walk, mark, lo, cnt, acc, slack, need)
    for i in range(ng):
        full = (bound[i] != _SHED) & (cap[i] > 0.0) & (x[i] >= cap[i] - _TOL)
        x[i] = cap[i] if full else x[i]
        bound[i] = code[i] if full else bound[i]


@njit(cache=True, _nrt=False)
def _solve_class(nc, last, par, room, gk, cap, mn, st, w, x, bound,
                 lst, adm, todo, scr, base, d, sat, rel, walk, mark, lo, cnt, acc, slack, need):
    """One class, its guns ``lst[:nc]`` in position order. On return ``room`` is what the
    next class may use (unless ``last``)."""
    nr = _relevant(lst, nc, gk, par, mark, rel, walk)
    # Rule 3, admission. When every minimum fits everywhere at once nobody is shed, whatever
    # the order, and no order is needed (the common case).
    any_min = False
    for p in range(nc):
        if mn[lst[p]] > 0.0:
            any_min = True
            break
    sorted_ = False
    have_acc = True  # acc holds the sums of mn over lst (what the fill uses as base)
    if not any_min:
        for r in range(nr):
            acc[rel[r]] = 0.0
    else:
        _sums(lst, nc, mn, gk, rel, nr, par, acc)
        fits = True
        for r in range(nr):
            k = rel[r]
            if acc[k] > room[k]:
                fits = False
                break
        if not fits:
            # A minimum above what is left *now* at some node above it is shed whatever the
            # order (what is left there only shrinks): shed those first; often the others
            # then fit at once and need no order either.
            k2 = 0
            for p in range(nc):
                i = lst[p]
                mi = mn[i]
                out = False
                v = gk[i]
                while v >= 0 and mi > 0.0:  # (the walks up are written out: see _before)
                    out |= mi > room[v] + _TOL
                    v = par[v]
                bound[i] = _SHED if out else bound[i]
                lst[k2] = i
                k2 += not out
            nc = k2
            _sums(lst, nc, mn, gk, rel, nr, par, acc)
            fits = True
            for r in range(nr):
                k = rel[r]
                if acc[k] > room[k]:
                    fits = False
                    break
        if not fits:
            have_acc = False
            for p in range(nc):
                adm[p] = lst[p]
            _sort_admission(adm, 0, nc, scr, w, mn, cap)
            sorted_ = True
            for r in range(nr):  # acc: what is left at each node
                k = rel[r]
                acc[k] = room[k]
            for p in range(nc):
                i = adm[p]
                mi = mn[i]
                if mi > 0.0:
                    fit = True
                    v = gk[i]
                    while v >= 0:
                        fit &= not (mi > acc[v] + _TOL)
                        v = par[v]
                    if fit:
                        v = gk[i]
                        while v >= 0:
                            acc[v] -= mi
                            v = par[v]
                    else:
                        bound[i] = _SHED
            # The admitted stay in both lists: lst in position order, adm in admission order.
            a1 = 0
            b1 = 0
            for p in range(nc):
                i = lst[p]
                lst[a1] = i
                a1 += bound[i] != _SHED
                j = adm[p]
                adm[b1] = j
                b1 += bound[j] != _SHED
            nc = a1
    _slices(lst, nc, gk, rel, nr, par, lo, cnt)
    # Rule 4 above the minimums.
    any_step = False
    for p in range(nc):
        i = lst[p]
        base[i] = mn[i]
        d[i] = cap[i] - mn[i]
        if st[i] > 0.0:
            any_step = True
    _fill(lst, nc, base, d, w, gk, rel, nr, par, lo, cnt, room, acc, sat, bound, have_acc)
    for p in range(nc):
        i = lst[p]
        x[i] = base[i] + d[i]
    if any_step:  # (leaves the sums of x in acc)
        _steps(nc, sorted_, par, room, gk, cap, mn, st, w, x, bound,
               lst, adm, todo, scr, base, d, sat, rel, nr, lo, cnt, acc, slack, need)
    if not last:
        if not any_step:
            _sums(lst, nc, x, gk, rel, nr, par, acc)
        for r in range(nr):
            k = rel[r]
            room[k] -= acc[k]


@njit(cache=True, _nrt=False)
def _steps(nc, sorted_, par, room, gk, cap, mn, st, w, x, bound,
           lst, adm, todo, scr, base, d, sat, rel, nr, lo, cnt, acc, slack, need):
    """Rule 5 for the admitted guns ``lst[:nc]`` of one class, whose rule-4 shares are in
    ``x``; ``adm[:nc]`` holds them in admission order when ``sorted_``."""
    for p in range(nc):  # round down, never below the minimum
        i = lst[p]
        s = st[i]
        has = s > 0.0
        sd = s if has else 1.0
        v = np.floor(x[i] / sd + 1e-9) * sd
        v = v if v > base[i] else base[i]
        x[i] = v if has else x[i]
    _sums(lst, nc, x, gk, rel, nr, par, acc)
    for r in range(nr):
        k = rel[r]
        slack[k] = room[k] - acc[k]
    nt = 0
    for p in range(nc):
        i = adm[p] if sorted_ else lst[p]
        todo[nt] = i
        nt += (st[i] > 0.0) & (x[i] < cap[i] - _TOL)
    ordered = sorted_
    while nt > 0:  # passes: one more step per gun per pass, in admission order
        if not ordered:
            # When every step of this pass fits everywhere at once, the order is moot.
            _sums(todo, nt, st, gk, rel, nr, par, need)
            fits = True
            for r in range(nr):
                k = rel[r]
                if need[k] > slack[k]:
                    fits = False
                    break
            if not fits:
                _sort_admission(todo, 0, nt, scr, w, mn, cap)
                ordered = True
            else:
                for r in range(nr):
                    k = rel[r]
                    slack[k] -= need[k]
        keep = 0
        for p in range(nt):
            i = todo[p]
            s = st[i]
            if ordered:
                fit = True
                v = gk[i]
                while v >= 0:
                    fit &= not (s > slack[v] + _TOL)
                    v = par[v]
                if not fit:
                    continue
                v = gk[i]
                while v >= 0:
                    slack[v] -= s
                    v = par[v]
            x[i] += s
            if x[i] < cap[i] - _TOL:
                todo[keep] = i
                keep += 1
        nt = keep  # a gun whose step did not fit is done: the slack only shrinks
    # Refill the unstepped guns over what the stepped ones left.
    unstepped = False
    for p in range(nc):
        if st[lst[p]] == 0.0:
            unstepped = True
            break
    if unstepped:
        # Water-fill the unstepped guns again with the stepped ones fixed. Only the unstepped
        # guns enter the levels (a fixed gun has nothing to take: it would add 0 to every
        # sum), but every gun's base counts in what each node has used.
        nu = 0
        for p in range(nc):
            i = lst[p]
            un = st[i] == 0.0
            bound[i] = _ASK if un else bound[i]
            base[i] = mn[i] if un else x[i]
            d[i] = cap[i] - mn[i]  # (read for the unstepped guns only)
            todo[nu] = i
            nu += un
        _sums(lst, nc, base, gk, rel, nr, par, acc)
        _slices(todo, nu, gk, rel, nr, par, lo, cnt)
        _levels(todo, nu, d, w, rel, nr, lo, cnt, room, acc, sat, bound)
        for p in range(nu):
            i = todo[p]
            x[i] = base[i] + d[i]
    _sums(lst, nc, x, gk, rel, nr, par, acc)
    for r in range(nr):
        k = rel[r]
        slack[k] = room[k] - acc[k]
    for p in range(nc):  # a stepped gun below its cap: the deepest node without a step left
        i = lst[p]
        s = st[i]
        if s > 0.0 and x[i] < cap[i] - _TOL:
            b = _ASK
            v = gk[i]
            while v >= 0:
                if slack[v] < s - _TOL:
                    b = v
                    break
                v = par[v]
            bound[i] = b


@njit(cache=True)
def gun_order(gun_node, pre_of, n_pos):
    """Guns sorted (stably) by the pre-order position of their node: ``order`` (None-like
    empty when the guns already come in that order) and ``gstart[k]`` = number of guns at
    positions before k, so tree t's guns are [gstart[tree_start[t]], gstart[tree_start[t+1]])."""
    n_g = gun_node.shape[0]
    gstart = np.zeros(n_pos + 1, np.int64)
    in_order = True
    prev = -1
    for j in range(n_g):
        k = pre_of[gun_node[j]]
        gstart[k + 1] += 1
        if k < prev:
            in_order = False
        prev = k
    for k in range(n_pos):
        gstart[k + 1] += gstart[k]
    if in_order:
        return np.empty(0, np.int64), gstart
    fill = gstart[:n_pos].copy()
    order = np.empty(n_g, np.int64)
    for j in range(n_g):
        k = pre_of[gun_node[j]]
        order[fill[k]] = j
        fill[k] += 1
    return order, gstart


@njit(cache=True)
def _largest(tree_start, gstart, t0, t1):
    mg = 1
    mn = 1
    for t in range(t0, t1):
        n0 = tree_start[t]
        n1 = tree_start[t + 1]
        mg = max(mg, gstart[n1] - gstart[n0])
        mn = max(mn, n1 - n0)
    return mg, mn


@njit(cache=True, _nrt=False)
def _contract(nn, ng, par, room, gk, cap, capsum, newid, orig, ncount, gorder):
    """Take out of the tree every node (but the root) whose limit is at or above the caps of
    all the guns below it: it can never bind, shed a minimum or block a step (whatever the
    classes before, what is left there covers every cap still to come), so no rule looks at
    it. Its guns and child nodes hang from its nearest kept ancestor. In a depot most pile
    pools are like that (a 360 kW pool under two 180 kW guns), and the per-class passes
    over nodes shrink from ~56 nodes a site to ~6.

    Rewrites ``par``, ``room`` (first ``nk`` entries) and ``gk`` to the kept nodes, numbered
    in pre-order; ``orig[new] = old``. Returns ``(nk, permuted)``: when guns of a removed node
    now come after guns of a later kept node, ``gorder`` holds the guns in node order."""
    for k in range(nn):
        capsum[k] = 0.0
    for q in range(ng):
        capsum[gk[q]] += cap[q]
    for k in range(nn - 1, 0, -1):
        capsum[par[k]] += capsum[k]
    nk = 0
    for k in range(nn):  # in pre-order: a parent's new id is known before its children's
        p = par[k]
        keep = k == 0 or not (room[k] >= capsum[k])
        if keep:
            newid[k] = nk
            orig[nk] = k
            par[nk] = newid[p] if p >= 0 else -1  # (nk <= k: par[k], room[k] already read)
            room[nk] = room[k]
            nk += 1
        else:
            newid[k] = newid[p]
    if nk == nn:
        return nk, False
    prev = 0
    permuted = False
    for q in range(ng):
        g = newid[gk[q]]
        gk[q] = g
        permuted |= g < prev
        prev = g
    if permuted:  # a stable counting sort of the guns by their new node
        for k in range(nk + 1):
            ncount[k] = 0
        for q in range(ng):
            ncount[gk[q] + 1] += 1
        for k in range(nk):
            ncount[k + 1] += ncount[k]
        for q in range(ng):
            g = gk[q]
            gorder[ncount[g]] = q
            ncount[g] += 1
    return nk, permuted


@njit(cache=True)
def _solve_range(t0, t1, tree_start, gstart, order, at, pre_of, par_p, size_p, gun_node, upper,
                 mn_in, ask, weight, prio, limit, step, has_step, check, setpoint, bound_by):
    """Trees t0..t1-1, one after the other, in scratch arrays sized for the largest of them
    (so a site's working set stays in cache). Writes ``setpoint`` and ``bound_by``.

    With ``check``, also checks every value it reads (the validation of :func:`allocate`,
    at no extra pass) and returns how many trees hold a bad one; their result is garbage
    and the caller raises (naming the first bad value) instead of returning it."""
    n_bad = 0
    max_g, max_n = _largest(tree_start, gstart, t0, t1)
    # Per gun (local index): inputs as the rules use them, results, work lists.
    cap = np.empty(max_g)
    mn = np.empty(max_g)
    st = np.empty(max_g)
    w = np.empty(max_g)
    pr = np.empty(max_g, np.int64)
    code = np.empty(max_g, np.int64)
    gk = np.empty(max_g, np.int64)
    x = np.empty(max_g)
    bound = np.empty(max_g, np.int64)
    base = np.empty(max_g)
    d = np.empty(max_g)
    sat = np.empty(max_g, np.bool_)
    cand = np.empty(max_g, np.int64)
    lst = np.empty(max_g, np.int64)
    adm = np.empty(max_g, np.int64)
    todo = np.empty(max_g, np.int64)
    scr = np.empty(max_g, np.int64)
    # Per node (local pre-order index).
    par = np.empty(max_n, np.int64)
    room = np.empty(max_n)
    rel = np.empty(max_n, np.int64)
    walk = np.empty(max_n, np.int64)
    mark = np.zeros(max_n, np.bool_)
    lo = np.empty(max_n, np.int64)
    cnt = np.empty(max_n, np.int64)
    acc = np.empty(max_n)
    slack = np.empty(max_n)
    need = np.empty(max_n)
    capsum = np.empty(max_n)
    newid = np.empty(max_n, np.int64)
    orig = np.empty(max_n, np.int64)
    ncount = np.empty(max_n + 1, np.int64)
    gorder = np.empty(max_g, np.int64)
    ccount = np.empty(66, np.int64)  # class counting sort (a span of up to 64 class numbers)
    ident = order.shape[0] == 0
    for t in range(t0, t1):
        n0 = tree_start[t]
        nn = tree_start[t + 1] - n0
        g0 = gstart[n0]
        ng = gstart[n0 + nn] - g0
        ok = True
        for k in range(nn):
            p = par_p[n0 + k]
            par[k] = p - n0 if p >= 0 else -1
            lim = limit[at[n0 + k]]
            room[k] = lim
            if check:
                ok &= lim >= 0.0  # (false for NaN; inf allowed)
                if has_step:
                    sk = step[at[n0 + k]]
                    ok &= (sk >= 0.0) & (sk < np.inf)
        for q in range(ng):
            j = g0 + q if ident else order[g0 + q]
            v = gun_node[j]
            gk[q] = pre_of[v] - n0
            u = upper[j]
            a = ask[j]
            c = a if a < u else u
            code[q] = _UPPER if u < a else _ASK
            m = mn_in[j]
            s = step[v] if has_step else 0.0
            has = s > 0.0
            sd = s if has else 1.0
            # 359.99999999 kW asked on a 30 kW step is 12 steps, not 11.
            cs = np.floor(c / sd + 1e-9) * sd
            ms = np.ceil(m / sd - 1e-9) * sd
            c = cs if has else c
            m = ms if has else m
            st[q] = s
            cap[q] = c
            mn[q] = m
            wj = weight[j]
            w[q] = wj
            pr[q] = prio[j]
            if check:
                # ">= 0" and "< inf" are false for NaN; the minimum must not exceed the upper bound
                ok &= ((u >= 0.0) & (u < np.inf) & (a >= 0.0) & (a < np.inf) & (mn_in[j] >= 0.0)
                       & (mn_in[j] <= u) & (wj > 0.0) & (wj < np.inf))
        if not ok:
            n_bad += 1
            continue
        nk, permuted = _contract(nn, ng, par, room, gk, cap, capsum, newid, orig, ncount, gorder)
        _solve_tree(nk, ng, par, room, gk, cap, mn, st, w, pr, code, x, bound, gorder, permuted, ccount,
                    cand, lst, adm, todo, scr, base, d, sat, rel, walk, mark, lo, cnt, acc, slack, need)
        for q in range(ng):
            j = g0 + q if ident else order[g0 + q]
            setpoint[j] = x[q]
            b = bound[q]
            bound_by[j] = at[n0 + orig[b]] if b >= 0 else b
    return n_bad


@njit(cache=True, parallel=True)
def _solve_chunks(n_chunks, n_trees, tree_start, gstart, order, at, pre_of, par_p, size_p, gun_node,
                  upper, mn_in, ask, weight, prio, limit, step, has_step, check, setpoint, bound_by):
    bad = np.zeros(n_chunks, np.int64)
    for c in prange(n_chunks):
        bad[c] = _solve_range(c * n_trees // n_chunks, (c + 1) * n_trees // n_chunks, tree_start, gstart,
                              order, at, pre_of, par_p, size_p, gun_node, upper, mn_in, ask, weight, prio,
                              limit, step, has_step, check, setpoint, bound_by)
    return bad.sum()


PARALLEL_MIN_GUNS = 20_000
"""Batches with at least this many guns (and more than one tree) use every core: below it,
waking the worker threads costs more than it saves."""


class BadInput(Exception):
    """An index or value the rules cannot take: the caller finds and names the first one
    (``_core._validate``); nothing is allocated."""


class _Layout:
    """The pre-order of a forest and the order of its guns, kept for the last arrays seen:
    a control loop or a scheduler calls again and again with the same tree and guns, and
    this analysis (~8 ms and 40 MB of fresh memory for a million guns) is then a compare.
    Built only for indices in range (checked here, so a kept layout needs no new check)."""

    def __init__(self, parent, gun_node):
        if not indices_ok(gun_node, parent):
            raise BadInput("index out of range")
        (self.at, self.pre_of, self.par_p, self.size_p, self.tree_start, self.n_trees,
         self.reached) = forest(parent)
        if self.reached < parent.shape[0]:
            i = int(np.flatnonzero(self.pre_of < 0)[0])
            self.cycle = f"node_parent[{i}]: {int(parent[i])} makes a cycle (node {i} never reaches a root)"
            return
        self.cycle = ""
        self.order, self.gstart = gun_order(gun_node, self.pre_of, parent.shape[0])
        self.parent = parent.copy()  # copies: the caller may change its arrays in place
        self.gun_node = gun_node.copy()

    def same(self, parent, gun_node) -> bool:
        return (self.parent.shape == parent.shape and self.gun_node.shape == gun_node.shape
                and np.array_equal(self.parent, parent) and np.array_equal(self.gun_node, gun_node))


_LAYOUT: list[_Layout] = []


def solve(gun_node, upper, mn, ask, weight, prio, parent, limit, step, check):
    """Allocate a batch given as contiguous int64 / float64 arrays (``step`` may be None).
    Returns ``(setpoint_kw, bound_by)``. Raises :class:`BadInput` for an index out of range
    and, with ``check``, for any value :func:`allocate` refuses or a cycle; without
    ``check`` a cycle raises ValueError (the values are then the caller's promise)."""
    lay = _LAYOUT[0] if _LAYOUT and _LAYOUT[0].same(parent, gun_node) else None
    if lay is None:
        lay = _Layout(parent, gun_node)
        if lay.cycle:
            if check:
                raise BadInput(lay.cycle)
            raise ValueError(lay.cycle)
        _LAYOUT[:] = [lay]
    n_g = gun_node.shape[0]
    has_step = step is not None
    stp = step if has_step else limit  # (never read when has_step is False)
    setpoint = np.empty(n_g)
    bound_by = np.empty(n_g, np.int64)
    common = (lay.tree_start, lay.gstart, lay.order, lay.at, lay.pre_of, lay.par_p, lay.size_p, gun_node,
              upper, mn, ask, weight, prio, limit, stp, has_step, check, setpoint, bound_by)
    if n_g >= PARALLEL_MIN_GUNS and lay.n_trees > 1:
        n_bad = _solve_chunks(min(lay.n_trees, 8 * numba.get_num_threads()), lay.n_trees, *common)
    else:
        n_bad = _solve_range(0, lay.n_trees, *common)
    if n_bad:
        raise BadInput("a bad value")
    return setpoint, bound_by


def warm_up() -> None:
    """Compile, or load from numba's cache, every entry point on a two-tree toy problem.
    A long-running caller (the controller) calls this at start-up so that the first compile
    after an install (~10 s) does not fall into its first control cycle."""
    parent = np.array([-1, 0, -1], np.int64)
    gun_node = np.array([1, 1, 2], np.int64)
    ones = np.ones(3)
    lay = _Layout(parent, gun_node)
    common = (lay.tree_start, lay.gstart, lay.order, lay.at, lay.pre_of, lay.par_p, lay.size_p, gun_node,
              ones, np.zeros(3), ones, ones, np.zeros(3, np.int64), ones, ones, True, True, np.empty(3),
              np.empty(3, np.int64))
    _solve_range(0, lay.n_trees, *common)
    _solve_chunks(2, lay.n_trees, *common)
