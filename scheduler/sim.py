"""The depot simulation: SimPy drives plug-ins, departures and ticks; the allocation core
turns the policy's asks into setpoints; the vehicle model turns setpoints into energy.

Time is whole minutes (the step). The result is exactly what stepping every minute would give
-- each minute a vehicle takes ``min(setpoint, acceptance)`` as
:func:`hw_profiles.vehicle.charge_step_batch` does, and each minute every setpoint is what
:func:`controller.allocation.allocate` returns for that minute's asks -- but minutes where no
input of the core changes are not visited:

- a tick happens at a plug-in, a departure, a policy window edge, or the minute a vehicle's
  effective cap (its ask, cut by its acceptance and rounded to module steps, as the core sees
  it) changes or it gets full; the closed forms in :mod:`scheduler.curves` give that minute;
- at a tick only the part of the limit tree a change can reach is allocated again. A node
  whose guns' caps sum to no more than its limit does not bind, and then the core gives the
  guns below it the same setpoints whether it allocates the whole tree or each child subtree
  on its own (tests/test_scheduler_sim.py checks this against whole-tree calls). So a change
  re-allocates the subtree under its highest binding ancestor, or just its pile.
- independent lanes (days side by side, see :mod:`scheduler.model`) share one call of the core
  per tick: every component is a separate tree of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from controller.allocation import AllocationProblem, allocate

from .assign import Assignment
from .curves import ceil_step, first_exit, floor_step, kwh_per_pct
from .model import Scenario
from .policies import Plan

LIMIT_TOL_KW = 1e-6


@dataclass
class SimResult:
    """Everything the report needs. Segments are constant setpoints of a session (kW total)."""

    seg_session: np.ndarray
    seg_start: np.ndarray
    seg_end: np.ndarray
    seg_kw: np.ndarray
    seg_taper: np.ndarray  # the setpoint was cut by the battery's acceptance (its taper)
    minute_kwh: np.ndarray  # (lanes, horizon) energy metered per minute
    minute_kw: np.ndarray  # (lanes, horizon) sum of setpoints per minute
    energy_kwh: np.ndarray  # per session
    final_soc: np.ndarray
    first_on: np.ndarray  # first minute with a setpoint > 0, -1 never
    ticks: int
    core_calls: int
    core_guns: int


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[i], hi[i])``."""
    lens = np.maximum(hi - lo, 0)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    starts = np.cumsum(lens) - lens
    return np.repeat(lo - starts, lens) + np.arange(total)


class Engine:
    """The state of every lane's station and every session, advanced tick by tick."""

    def __init__(self, sc: Scenario, asg: Assignment, plan: Plan) -> None:
        st, s = sc.station, sc.sessions
        self.sc, self.asg, self.plan = sc, asg, plan
        L, G, NN = sc.lanes, st.n_guns, st.n_nodes
        self.L, self.G, self.NN = L, G, NN
        n = len(s)
        self.n = n
        # per slot (lane * G + gun)
        self.occ = np.full(L * G, -1, np.int64)
        self.cap = np.zeros(L * G)  # effective cap as the core sees it (0 when it cannot run)
        self.mn = np.zeros(L * G)
        self.prio = np.zeros(L * G, np.int64)
        self.ask = np.zeros(L * G)
        self.upper = np.zeros(L * G)
        self.sp = np.zeros(L * G)
        self.root = np.tile(st.gun_node, L) + np.repeat(np.arange(L) * NN, G)
        self.capsum = np.zeros(L * NN)
        self.limit = np.tile(st.node_limit_kw, L)
        self.slot_local = np.tile(np.arange(G), L)
        self.slot_lane = np.repeat(np.arange(L), G)
        # per session
        self.slot0 = np.where(asg.gun0 >= 0, s.lane * G + asg.gun0, -1)
        self.slot1 = np.where(asg.gun1 >= 0, s.lane * G + asg.gun1, -1)
        self.ng = np.maximum(asg.n_guns, 1)
        g0 = np.maximum(asg.gun0, 0)
        self.step = st.gun_step_kw[g0]
        self.rating = st.gun_rating_kw[g0]
        self.gmin = st.gun_min_kw[g0]
        self.ac = ~st.gun_dc[g0]
        self.kpp = kwh_per_pct(s.batch, s.spec_idx)
        self.soc = s.soc0.astype(float).copy()
        self.last_t = asg.plug.astype(np.int64).copy()
        self.p = np.zeros(n)
        self.seg_t = np.full(n, -1, np.int64)
        self.seg_taper = np.zeros(n, bool)  # the open segment is cut by the battery's acceptance
        self.ptr = plan.first[:-1].copy()
        self.next_ev = np.full(n, np.inf)
        self.active = np.zeros(n, bool)
        self.energy = np.zeros(n)
        self.first_on = np.full(n, -1, np.int64)
        plugged = (asg.gun0 >= 0) & (asg.plug < s.departure)
        self.plug_order = np.flatnonzero(plugged)[np.argsort(asg.plug[plugged], kind="stable")]
        self.dep_order = self.plug_order[np.argsort(s.departure[self.plug_order], kind="stable")]
        self.plug_pos = 0
        self.dep_pos = 0
        self.segs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.partial: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.ticks = self.core_calls = self.core_guns = 0

    # ------------------------------------------------------------------ timetable

    def timetable_times(self) -> np.ndarray:
        s = self.sc.sessions
        return np.unique(np.r_[self.asg.plug[self.plug_order], s.departure[self.plug_order]])

    def depart(self, t: int) -> np.ndarray:
        """Unplug everyone leaving at ``t``; returns the slots that changed."""
        s = self.sc.sessions
        k = self.dep_pos
        while k < self.dep_order.size and s.departure[self.dep_order[k]] <= t:
            k += 1
        who = self.dep_order[self.dep_pos:k]
        self.dep_pos = k
        if who.size == 0:
            return np.zeros(0, np.int64)
        who = who[self.active[who]]
        self._settle(who, t)
        self._set_power(who, np.zeros(who.size), t)
        self.active[who] = False
        self.next_ev[who] = np.inf
        slots = np.r_[self.slot0[who], self.slot1[who]]
        slots = slots[slots >= 0]
        self.occ[slots] = -1
        self.sp[slots] = 0.0
        self._set_slot_inputs(slots, np.zeros(slots.size), np.zeros(slots.size), np.zeros(slots.size, np.int64),
                              np.zeros(slots.size), np.zeros(slots.size))
        return slots

    def plug_in(self, t: int) -> None:
        k = self.plug_pos
        while k < self.plug_order.size and self.asg.plug[self.plug_order[k]] <= t:
            k += 1
        who = self.plug_order[self.plug_pos:k]
        self.plug_pos = k
        if who.size == 0:
            return
        self.active[who] = True
        self.last_t[who] = t
        self.next_ev[who] = t
        self.occ[self.slot0[who]] = who
        two = who[self.slot1[who] >= 0]
        self.occ[self.slot1[two]] = two

    # ------------------------------------------------------------------ physics

    def _settle(self, who: np.ndarray, t: int) -> None:
        """Bring sessions ``who`` to minute ``t`` at their constant setpoint."""
        if who.size == 0:
            return
        dt = t - self.last_t[who]
        p = self.p[who]
        run = (dt > 0) & (p > 0)
        if run.any():
            w = who[run]
            s = self.sc.sessions
            full = dt[run] * p[run] / 60.0
            need = np.maximum(s.target[w] - self.soc[w], 0.0) * self.kpp[w]
            e = np.minimum(full, need)
            self.soc[w] += e / self.kpp[w]
            self.energy[w] += e
            short = e < full - 1e-9
            if short.any():  # the vehicle got full during the last minute of the segment
                ws = w[short]
                self.partial.append((s.lane[ws], np.full(ws.size, t - 1), (e - full)[short]))
        self.last_t[who] = t

    def _set_power(self, who: np.ndarray, p: np.ndarray, t: int) -> None:
        old = self.p[who]
        ch = np.abs(old - p) > 1e-9
        if not ch.any():
            return
        w, o, q = who[ch], old[ch], p[ch]
        close = o > 0
        if close.any():
            self.segs.append((w[close], self.seg_t[w[close]], np.full(int(close.sum()), t), o[close],
                              self.seg_taper[w[close]]))
        self.seg_t[w] = t
        sl = self.slot0[w]
        self.seg_taper[w] = self.upper[sl] < self.ask[sl] - 1e-9
        self.p[w] = q
        on = (q > 0) & (self.first_on[w] < 0)
        self.first_on[w[on]] = t

    def _set_slot_inputs(self, slots, cap, mn, prio, ask, upper) -> np.ndarray:
        """Store the core's inputs of ``slots``; keep node cap sums; return the slots whose
        effective inputs changed."""
        changed = (np.abs(self.cap[slots] - cap) > 1e-9) | (np.abs(self.mn[slots] - mn) > 1e-9) | (self.prio[slots] != prio)
        ch = slots[changed]
        if ch.size:
            delta = cap[changed] - self.cap[ch]
            chain = self.sc.station.gun_chain[self.slot_local[ch]]
            nodes = np.where(chain >= 0, chain + (self.slot_lane[ch] * self.NN)[:, None], -1)
            m = nodes >= 0
            np.add.at(self.capsum, nodes[m], np.broadcast_to(delta[:, None], nodes.shape)[m])
        self.cap[slots], self.mn[slots], self.prio[slots] = cap, mn, prio
        self.ask[slots], self.upper[slots] = ask, upper
        return ch

    # ------------------------------------------------------------------ one tick

    def tick(self, t: int, changed_slots: np.ndarray) -> None:
        self.ticks += 1
        sc, s, st = self.sc, self.sc.sessions, self.sc.station
        due = np.flatnonzero(self.next_ev <= t)
        self._settle(due, t)
        # the policy's window at t
        plan = self.plan
        ptr = self.ptr[due]
        last = plan.first[due + 1]
        while True:
            adv = (ptr < last) & (plan.end[np.minimum(ptr, plan.end.size - 1)] <= t)
            if not adv.any():
                break
            ptr = ptr + adv
        self.ptr[due] = ptr
        valid = ptr < last
        pc = np.minimum(ptr, max(plan.end.size - 1, 0))
        inside = valid & (plan.start[pc] <= t) if plan.end.size else valid
        ask = np.where(inside, plan.kw[pc], 0.0) if plan.end.size else np.zeros(due.size)
        mn_tot = np.where(inside, plan.min_kw[pc], 0.0) if plan.end.size else np.zeros(due.size)
        prio = np.where(inside, plan.priority[pc], 0) if plan.end.size else np.zeros(due.size, np.int64)
        until = np.where(valid, np.where(inside, plan.end[pc], plan.start[pc]), np.inf) if plan.end.size \
            else np.full(due.size, np.inf)
        # what the core will see, per gun of the session
        from .curves import acceptance
        acc = acceptance(s.batch, s.spec_idx[due], self.soc[due], s.target[due])
        acc = np.where(self.ac[due], np.minimum(acc, s.ac_max_kw[due]), acc)
        ng = self.ng[due]
        upper = np.minimum(self.rating[due], acc / ng)
        ask_g = ask / ng
        # the policy's least power (the band's lower edge) never switches off a battery that
        # asks for less by itself (its taper); the gun's own minimum does
        mn_g = np.where(ask > 0, np.maximum(self.gmin[due], np.minimum(mn_tot / ng, upper)), self.gmin[due])
        mn_g = np.minimum(mn_g, self.rating[due])
        capv = floor_step(np.minimum(ask_g, upper), self.step[due])
        mnv = ceil_step(mn_g, self.step[due])
        capv = np.where(capv < mnv - 1e-9, 0.0, capv)
        ch_parts = [changed_slots]
        for sl in (self.slot0, self.slot1):
            has = sl[due] >= 0
            slots = sl[due][has]
            ch_parts.append(self._set_slot_inputs(slots, capv[has], mnv[has], prio[has], ask_g[has], upper[has]))
        changed = np.unique(np.concatenate(ch_parts))
        moved = self._reallocate(changed, t) if changed.size else np.zeros(0, np.int64)
        self._schedule(np.union1d(due, moved), t)

    def _roots(self, slots: np.ndarray) -> np.ndarray:
        """Component root (global node) of every slot: its highest binding ancestor, else its pile."""
        chain = self.sc.station.gun_chain[self.slot_local[slots]]
        off = (self.slot_lane[slots] * self.NN)[:, None]
        nodes = np.where(chain >= 0, chain + off, -1)
        binding = (nodes >= 0) & (self.capsum[np.maximum(nodes, 0)] > self.limit[np.maximum(nodes, 0)] + 1e-9)
        depth = chain.shape[1]
        top = depth - 1 - np.argmax(binding[:, ::-1], axis=1)
        any_b = binding.any(axis=1)
        return np.where(any_b, nodes[np.arange(slots.size), top], nodes[:, 0])

    def _subtree_slots(self, roots: np.ndarray) -> np.ndarray:
        st = self.sc.station
        loc = roots % self.NN
        lane = roots // self.NN
        sl = _ranges(st.node_glo[loc] + lane * self.G, st.node_ghi[loc] + lane * self.G)
        return sl[self.occ[sl] >= 0]

    def _reallocate(self, changed: np.ndarray, t: int) -> np.ndarray:
        st = self.sc.station
        new_r = self._roots(changed)
        dirty = np.unique(np.r_[self.root[changed], new_r])
        affected = self._subtree_slots(dirty)
        if affected.size == 0:
            return np.zeros(0, np.int64)
        roots = np.unique(self._roots(affected))
        slots = self._subtree_slots(roots)
        if slots.size == 0:
            return np.zeros(0, np.int64)
        self.root[slots] = self._roots(slots)
        # one tree per root: its pre-order node range, renumbered
        loc = roots % self.NN
        lane = roots // self.NN
        size = st.node_size[loc]
        node_loc = _ranges(loc, loc + size)
        base = np.repeat(np.cumsum(size) - size, size)  # new index of each tree's root
        rootloc = np.repeat(loc, size)
        par = st.node_parent[node_loc]
        new_parent = np.where(node_loc == rootloc, -1, par - rootloc + base)
        # guns: their pile node inside their root's tree
        tree_of = np.searchsorted(roots, self.root[slots])
        gun_node = st.gun_node[self.slot_local[slots]] - loc[tree_of] + (np.cumsum(size) - size)[tree_of]
        prob = AllocationProblem(
            gun_node=gun_node, upper_kw=np.maximum(self.upper[slots], self.mn[slots]),
            min_kw=self.mn[slots], ask_kw=np.where(self.cap[slots] > 0, self.ask[slots], 0.0),
            priority=self.prio[slots], weight=np.ones(slots.size), node_parent=new_parent,
            node_limit_kw=st.node_limit_kw[node_loc], node_step_kw=st.node_step_kw[node_loc],
        )
        res = allocate(prob, validate=False)
        self.core_calls += 1
        self.core_guns += slots.size
        sp = res.setpoint_kw
        moved_slots = slots[np.abs(sp - self.sp[slots]) > 1e-9]
        self.sp[slots] = sp
        if moved_slots.size == 0:
            return np.zeros(0, np.int64)
        who = np.unique(self.occ[moved_slots])
        self._settle(who, t)
        p = self.sp[self.slot0[who]] + np.where(self.slot1[who] >= 0, self.sp[np.maximum(self.slot1[who], 0)], 0.0)
        self._set_power(who, p, t)
        return who

    def _schedule(self, who: np.ndarray, t: int) -> None:
        """Next tick of each session in ``who``: its window edge, its cap change, or full."""
        if who.size == 0:
            return
        s = self.sc.sessions
        who = who[self.active[who]]
        if who.size == 0:
            return
        plan = self.plan
        ptr = self.ptr[who]
        last = plan.first[who + 1]
        pc = np.minimum(ptr, max(plan.end.size - 1, 0))
        valid = ptr < last
        if plan.end.size:
            edge = np.where(valid, np.where(plan.start[pc] <= t, plan.end[pc], plan.start[pc]), np.inf)
        else:
            edge = np.full(who.size, np.inf)
        nxt = edge.astype(float)
        p = self.p[who]
        run = p > 1e-9
        if run.any():
            w = who[run]
            ng = self.ng[w]
            step = self.step[w]
            sl = self.slot0[w]
            a_const = np.minimum(self.ask[sl], self.rating[w])  # per gun, the part that does not move
            a_const = np.where(self.ac[w], np.minimum(a_const, s.ac_max_kw[w] / ng), a_const)
            c = self.cap[sl]
            stepped = step > 0
            top = floor_step(a_const, step)
            lo = np.where(stepped, c, np.where(self.upper[sl] >= a_const - 1e-9, a_const, np.inf)) * ng
            hi = np.where(stepped & (c + step <= top + 1e-9), (c + step) * ng, np.inf)
            lo = np.where(c <= 0, -np.inf, lo)
            s_x = first_exit(s.batch, s.spec_idx[w], self.soc[w], lo, hi)
            rate = p[run] / 60.0 / self.kpp[w]  # % per minute
            with np.errstate(invalid="ignore", divide="ignore"):
                m_x = np.where(np.isfinite(s_x), np.maximum(1.0, np.floor((s_x - self.soc[w]) / rate)), np.inf)
                need = np.maximum(s.target[w] - self.soc[w], 0.0) * self.kpp[w]
                m_full = np.maximum(1.0, np.ceil(need * 60.0 / p[run] - 1e-9))
            nxt[run] = np.minimum(nxt[run], t + np.minimum(m_x, m_full))
        self.next_ev[who] = nxt

    def next_time(self) -> float:
        s = self.sc.sessions
        cand = [np.inf]
        if self.plug_pos < self.plug_order.size:
            cand.append(self.asg.plug[self.plug_order[self.plug_pos]])
        if self.dep_pos < self.dep_order.size:
            cand.append(s.departure[self.dep_order[self.dep_pos]])
        act = self.next_ev[self.active]
        if act.size:
            cand.append(act.min())
        return float(min(cand))

    def result(self) -> SimResult:
        sc = self.sc
        s = sc.sessions
        if self.segs:
            ss, a, b, k, tp = (np.concatenate(x) for x in zip(*self.segs))
        else:
            ss = a = b = np.zeros(0, np.int64)
            k = np.zeros(0)
            tp = np.zeros(0, bool)
        order = np.lexsort((a, ss))
        ss, a, b, k, tp = ss[order], a[order], b[order], k[order], tp[order]
        H = sc.horizon_min
        diff = np.zeros(sc.lanes * (H + 1))
        lane = s.lane[ss]
        np.add.at(diff, lane * (H + 1) + a, k)
        np.add.at(diff, lane * (H + 1) + b, -k)
        kw = np.cumsum(diff.reshape(sc.lanes, H + 1), axis=1)[:, :H]
        kw[np.abs(kw) < 1e-9] = 0.0
        kwh = kw / 60.0
        if self.partial:
            pl, pm, pe = (np.concatenate(x) for x in zip(*self.partial))
            np.add.at(kwh, (pl, pm), pe)
        return SimResult(ss, a, b, k, tp, kwh, kw, self.energy.copy(), self.soc.copy(), self.first_on.copy(),
                         self.ticks, self.core_calls, self.core_guns)


def simulate(sc: Scenario, asg: Assignment, plan: Plan, progress: Callable[[float], None] | None = None) -> SimResult:
    """Run the depot through SimPy: a timetable process plugs vehicles in and out, a ticker
    process advances the station from one change to the next."""
    import simpy

    eng = Engine(sc, asg, plan)
    env = simpy.Environment()
    pending: list[np.ndarray] = []
    horizon = sc.horizon_min

    def timetable(env):
        for t in eng.timetable_times():
            if t > env.now:
                yield env.timeout(int(t) - env.now)
            pending.append(eng.depart(int(t)))
            eng.plug_in(int(t))

    def ticker(env):
        while True:
            yield env.timeout(0)  # after the timetable's events of this minute
            t = int(env.now)
            changed = np.concatenate(pending) if pending else np.zeros(0, np.int64)
            pending.clear()
            eng.tick(t, changed)
            if progress is not None:
                progress(t / max(horizon, 1))
            nxt = eng.next_time()
            if not np.isfinite(nxt) or nxt > horizon:
                return
            yield env.timeout(max(int(nxt) - t, 1))

    env.process(timetable(env))
    env.process(ticker(env))
    env.run()
    return eng.result()
