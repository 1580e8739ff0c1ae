"""Power allocation core: split the power a site may draw across its guns.

Every setpoint evstack writes, live or simulated, comes out of :func:`allocate`. It is pure:
arrays in, arrays out; no I/O, no asyncio, no clock. All power values are in kW.

Two backends compute the same rules: ``"numba"`` (the default: per tree in compiled loops,
a big batch on every core; ``_kernel.py``) and ``"numpy"`` (vectorised over the whole batch;
``_core.py``; the fallback where numba does not import, and the second implementation the
tests hold the first to: same ``bound_by``, setpoints equal to float rounding).

A problem is a *batch*: many independent limit trees (sites, or time steps of one site)
concatenated into flat arrays. Every root (``node_parent == -1``) starts one independent
tree; guns hang below nodes via ``gun_node``; no offsets are needed and trees may be
interleaved. See :class:`AllocationProblem`.

Semantics (docs/allocation.md says the same at more length; tests/allocation_oracle.py is
an independent plain-Python implementation of exactly these rules):

1. Per gun: step ``s`` = ``node_step_kw`` of its parent node (0 = none). Effective cap
   ``cap = min(ask_kw, upper_kw)``, rounded *down* to a multiple of ``s``; effective minimum
   ``mn = min_kw`` rounded *up* to a multiple of ``s``. A gun with ``cap <= 0`` gets 0
   (bound ``BOUND_ASK`` or ``BOUND_UPPER``); a gun with ``0 < cap < mn`` can never run within
   its ask and is switched off (``BOUND_SHED``).
2. Strict priority: classes are served one after the other, lowest ``priority`` number first.
   A class only sees the headroom the classes before it left at every node
   (``limit - used``), so a lower class never reduces what a higher class gets.
3. Inside a class, minimums first (admission): guns with ``mn > 0`` are taken in admission
   order -- weight descending, then ``mn`` ascending, then ``cap`` ascending, then the
   pre-order position of their node (the node index when nodes are numbered depth-first; in
   general a depth-first walk, roots and siblings by index); guns still tied are equal in
   every field that matters and interchangeable -- and each one is admitted if ``mn`` fits
   in the remaining headroom of every ancestor node, which it then reserves; otherwise it is
   shed (0 kW, ``BOUND_SHED``) and reserves nothing, so what it would have taken goes to the
   others. (Guns under no over-subscribed node are admitted without looking at the order:
   nothing can stop them.)
4. Then weighted max-min water-filling of the power *above the minimums*: admitted gun i gets
   ``mn_i + min(cap_i - mn_i, w_i * L_i)`` where ``L_i`` is the lowest water level of the
   nodes above it; each node's level is the one at which its subtree exactly uses its
   remaining headroom (or infinite when it is not binding). Levels are computed bottom-up
   and exactly (no bisection), see :func:`_water_fill`.
5. Module steps (only where a node has ``node_step_kw > 0``): stepped guns are rounded down
   to a multiple of their step (never below their minimum). Then, with the unstepped guns
   still at their rule-4 share, passes in admission order give each stepped gun below its
   cap one more step if it fits under every ancestor, until a pass gives none. Then the
   unstepped guns of the class are water-filled again (rule 4) over what is left, with the
   stepped guns fixed.

Guarantees (checked by property tests against the oracle): every node's limit holds to
``LIMIT_TOL_KW``; ``0 <= setpoint <= cap``; a gun that runs is at or above its minimum; no gun
below its cap could get more without breaking some limit -- for a stepped gun: without
breaking some limit by a whole step; no shed gun could run at its minimum in what is left
(Pareto); a class's setpoints do not change when lower classes are added or removed; the
result does not depend on the order of guns in the input.

``bound_by`` per gun: ``BOUND_ASK`` (-1) got its full effective ask; ``BOUND_UPPER`` (-2) got
its full upper bound (the upper bound was below the ask); ``BOUND_SHED`` (-3) switched off
because its minimum could not be met; otherwise the index of the node whose limit stopped it.
"""

from ._core import (
    BACKENDS,
    DEFAULT_BACKEND,
    BOUND_ASK,
    BOUND_SHED,
    BOUND_UPPER,
    LIMIT_TOL_KW,
    Allocation,
    AllocationProblem,
    allocate,
    allocate_numpy,
    warm_up,
)
from ._site import GunDemand, GunResult, LimitNode, allocate_site

__all__ = [
    "BOUND_ASK",
    "BOUND_UPPER",
    "BOUND_SHED",
    "LIMIT_TOL_KW",
    "AllocationProblem",
    "Allocation",
    "allocate",
    "allocate_numpy",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "warm_up",
    "GunDemand",
    "LimitNode",
    "GunResult",
    "allocate_site",
]
