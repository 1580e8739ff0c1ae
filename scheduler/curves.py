"""Closed forms over the vehicle model's acceptance curves, vectorised over sessions.

The simulation steps in whole minutes exactly as :func:`hw_profiles.vehicle.charge_step_batch`
does, but it does not visit minutes where nothing can change: these helpers say *when* a
vehicle's effective cap (what the allocation core sees after module-step rounding) will next
change, and how long a vehicle needs to get full at a given power level.

Units: SoC in percent, power in kW (metered at the gun), energy in kWh, time in minutes.
"""

from __future__ import annotations

import numpy as np

from hw_profiles.vehicle import VehicleBatch, acceptance_kw_batch

STEP_TOL = 1e-9
"""The allocation core's tolerance when rounding to module steps (``floor(x / s + 1e-9)``)."""


def kwh_per_pct(batch: VehicleBatch, idx: np.ndarray) -> np.ndarray:
    """Metered kWh that raise the SoC of each vehicle by one percent."""
    return batch.battery_kwh[idx] / 100.0 / batch.efficiency[idx]


def acceptance(batch: VehicleBatch, idx: np.ndarray, soc: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Acceptance (kW metered) of vehicles ``idx`` of ``batch`` at ``soc``; 0 at/above target."""
    sub = VehicleBatch(batch.curve_soc[idx], batch.curve_kw[idx], batch.battery_kwh[idx], batch.efficiency[idx])
    return acceptance_kw_batch(sub, soc, target)


def floor_step(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``x`` rounded down to a multiple of ``step`` (0 = no step), as the allocation core does."""
    has = step > 0
    sd = np.where(has, step, 1.0)
    return np.where(has, np.floor(x / sd + STEP_TOL) * sd, x)


def ceil_step(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    has = step > 0
    sd = np.where(has, step, 1.0)
    return np.where(has, np.ceil(x / sd - STEP_TOL) * sd, x)


def first_exit(batch: VehicleBatch, idx: np.ndarray, s0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Lowest SoC ``s >= s0`` (up to 100) where the acceptance curve (kW metered, not cut at a
    target) leaves ``[lo, hi)``; ``inf`` if it never does below 100 %.

    Exact on the piecewise-linear curve. A result equal to ``s0`` means "already outside".
    """
    xs = batch.curve_soc[idx]
    ys = batch.curve_kw[idx] / batch.efficiency[idx][:, None]
    out = np.full(s0.shape, np.inf)
    for j in range(xs.shape[1] - 1):
        x0, x1, y0, y1 = xs[:, j], xs[:, j + 1], ys[:, j], ys[:, j + 1]
        live = np.isinf(out) & (x1 > s0)
        if not live.any():
            continue
        a = np.maximum(x0, s0)
        span = np.where(x1 > x0, x1 - x0, 1.0)
        slope = (y1 - y0) / span
        ya = y0 + slope * (a - x0)
        outside = (ya < lo) | (ya >= hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            s_lo = np.where(slope < 0, a + (lo - ya) / slope, np.inf)  # y reaches lo, then below
            s_hi = np.where(slope > 0, a + (hi - ya) / slope, np.inf)  # y reaches hi
        cross = np.minimum(s_lo, s_hi)
        cross = np.where(cross <= x1, cross, np.inf)
        hit = np.where(outside, a, cross)
        out = np.where(live & np.isfinite(hit), hit, out)
    return out


def full_soc(batch: VehicleBatch, idx: np.ndarray, target: np.ndarray, min_deliverable_kw: np.ndarray) -> np.ndarray:
    """The SoC a vehicle ends at when charged as far as it goes: its target, or lower where its
    acceptance falls below the least power its gun(s) can deliver (one module step, or the
    gun's minimum). The last part of the CV taper that no gun in the model can serve."""
    stop = first_exit(batch, idx, np.zeros_like(target), min_deliverable_kw, np.full(target.shape, np.inf))
    # acceptance may start low and rise: only a stop above the point where it first becomes
    # deliverable counts; curves in the catalog are flat then falling, so this is the taper.
    return np.minimum(target, np.minimum(stop, 100.0))


def minutes_to_full(batch: VehicleBatch, idx: np.ndarray, s0: np.ndarray, s_full: np.ndarray,
                    level_kw: np.ndarray, step_kw: np.ndarray, n_guns: np.ndarray) -> np.ndarray:
    """Charging minutes from ``s0`` to ``s_full`` when asking ``level_kw`` (session total).

    Stepped guns: the setpoint drops a module step (times the number of guns) each time the
    acceptance falls below it. Unstepped guns follow the acceptance in the taper (integrated
    numerically). Plus one minute per level for whole-minute rounding.
    """
    kpp = kwh_per_pct(batch, idx)
    total = np.zeros(s0.shape)
    inf = np.full(s0.shape, np.inf)
    unit = np.where(step_kw > 0, step_kw * n_guns, 0.0)
    level = level_kw.copy()
    start = s0.copy()
    for _ in range(16):  # levels: L, L - unit, ... (at most a few in practice)
        live = (level > 1e-9) & (start < s_full - 1e-12)
        if not live.any():
            break
        end = np.minimum(first_exit(batch, idx, start, level, inf), s_full)
        end = np.maximum(end, start)
        with np.errstate(divide="ignore", invalid="ignore"):
            dt = np.where(live, (end - start) * kpp / level * 60.0 + 1.0, 0.0)
        total += dt
        start = np.where(live, end, start)
        stepped = unit > 0
        nxt = np.where(stepped, level - unit, 0.0)
        # unstepped: the taper follows the acceptance; integrate it below
        tail = live & ~stepped & (start < s_full - 1e-12)
        if tail.any():
            k = 16
            ti = np.flatnonzero(tail)
            grid = start[ti, None] + (s_full[ti, None] - start[ti, None]) * (np.arange(k) + 0.5)[None, :] / k
            acc = acceptance(batch, np.repeat(idx[ti], k), grid.ravel(), np.full(grid.size, 100.0)).reshape(grid.shape)
            acc = np.minimum(acc, level[ti, None])
            width = (s_full[ti] - start[ti]) / k
            with np.errstate(divide="ignore"):
                total[ti] += np.sum(np.where(acc > 1e-9, width[:, None] * kpp[ti, None] / acc * 60.0, 1e6), axis=1) + 1.0
            start[ti] = s_full[ti]
        level = np.where(live, nxt, 0.0)
    return np.where(start < s_full - 1e-9, np.inf, total)
