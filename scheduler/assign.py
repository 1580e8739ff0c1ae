"""Gun assignment: who plugs into which gun, and when. Pure; called by the simulation.

Rules: one vehicle, one gun (both guns of a combinable pile when the policy wants a vehicle on
two guns and a pile has both free); DC guns take every vehicle, AC guns only vehicles with an
on-board charger. A vehicle that finds no free gun waits (first come, first served) and plugs in
when one frees before it leaves. Among free guns it takes the one on the least occupied pile,
then under the least occupied feeder, so load spreads over piles and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import Scenario


@dataclass
class Assignment:
    gun0: np.ndarray  # slot, -1 = never plugged
    gun1: np.ndarray  # second slot of a two-gun session, -1 if none
    plug: np.ndarray  # engine minute of plug-in; == departure when never plugged
    waited_min: np.ndarray

    @property
    def n_guns(self) -> np.ndarray:
        return (self.gun0 >= 0).astype(np.int64) + (self.gun1 >= 0)


def assign_guns(sc: Scenario, wants_two: np.ndarray | None = None) -> Assignment:
    """Assign guns to every session of ``sc`` (see the module docstring)."""
    st, s = sc.station, sc.sessions
    n = len(s)
    wants_two = np.zeros(n, bool) if wants_two is None else wants_two
    gun0 = np.full(n, -1, np.int64)
    gun1 = np.full(n, -1, np.int64)
    plug = s.departure.copy()
    g = st.n_guns
    top = st.gun_chain[np.arange(g), np.maximum((st.gun_chain >= 0).sum(axis=1) - 2, 0)]  # child of the site
    order_key = np.arange(g)
    big = 1 << 20
    for lane in np.unique(s.lane):
        idx = np.flatnonzero(s.lane == lane)
        # events: (time, kind, order) with departures (0) before arrivals (1) at the same minute
        ev = sorted([(int(s.departure[i]), 0, int(i)) for i in idx] + [(int(s.arrival[i]), 1, int(i)) for i in idx])
        free = np.ones(g, bool)
        pile_occ = np.zeros(len(st.pile_guns), np.int64)
        top_occ = np.zeros(st.n_nodes, np.int64)
        queue: list[int] = []
        plugged = np.zeros(n, bool)

        def take(i: int, t: int) -> bool:
            if t >= s.departure[i]:
                return False
            ok = free & (st.gun_dc | (s.ac_max_kw[i] > 0))
            if not ok.any():
                return False
            if wants_two[i]:
                pairs = [p for p, gs in enumerate(st.pile_guns)
                         if st.pile_combinable[p] and len(gs) >= 2 and ok[gs[0]] and ok[gs[1]]]
                if pairs:
                    p = min(pairs, key=lambda p: (top_occ[top[st.pile_guns[p][0]]], p))
                    a, b = st.pile_guns[p][:2]
                    gun0[i], gun1[i] = a, b
                    free[[a, b]] = False
                    pile_occ[p] += 2
                    top_occ[top[a]] += 2
                    plug[i], plugged[i] = t, True
                    return True
            score = pile_occ[st.gun_pile] * big * big + top_occ[top] * big + order_key
            # buses prefer bus guns, other vehicles other guns
            pref = st.gun_bus == bool(s.is_bus[i])
            score = np.where(pref, score, score + big * big * big)
            a = int(np.argmin(np.where(ok, score, np.iinfo(np.int64).max)))
            gun0[i] = a
            free[a] = False
            pile_occ[st.gun_pile[a]] += 1
            top_occ[top[a]] += 1
            plug[i], plugged[i] = t, True
            return True

        for t, kind, i in ev:
            if kind == 0:
                if i in queue:
                    queue.remove(i)
                if plugged[i]:
                    for a in (gun0[i], gun1[i]):
                        if a >= 0:
                            free[a] = True
                            pile_occ[st.gun_pile[a]] -= 1
                            top_occ[top[a]] -= 1
                    queue[:] = [q for q in queue if s.departure[q] > t]
                    while queue and take(queue[0], t):
                        queue.pop(0)
            else:
                if queue or not take(i, t):
                    queue.append(i)
        for i in queue:  # never got a gun
            plug[i] = s.departure[i]
    return Assignment(gun0, gun1, plug, plug - s.arrival)
