"""The vehicle (battery / BMS) model: pure functions, scalar and batched over numpy arrays.

Conventions: state of charge in percent (0..100), power in kW, energy in kWh, time in seconds.
Energy is metered at the gun; the battery gets ``charge_efficiency`` of it.
The same functions drive firmware_sim's simulated vehicles and the scheduler's simulation,
so what the scheduler predicts is what a simulated pile delivers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .registers import BmsMode
from .specs import VehicleSpec


def acceptance_kw(spec: VehicleSpec, soc_pct: float, target_soc_pct: float = 100.0) -> float:
    """Most power (kW, metered at the gun) the battery accepts at ``soc_pct``; 0 at/above target."""
    if soc_pct >= target_soc_pct or soc_pct >= 100.0:
        return 0.0
    xs, ys = zip(*spec.curve)
    return float(np.interp(soc_pct, xs, ys)) / spec.charge_efficiency


def energy_to_target_kwh(spec: VehicleSpec, soc_pct: float, target_soc_pct: float) -> float:
    """Metered energy (kWh) that brings the battery from ``soc_pct`` to ``target_soc_pct``."""
    return max(0.0, target_soc_pct - soc_pct) / 100.0 * spec.battery_kwh / spec.charge_efficiency


def charge_step(spec: VehicleSpec, soc_pct: float, power_kw: float, dt_s: float,
                target_soc_pct: float = 100.0) -> tuple[float, float]:
    """Charge for ``dt_s`` seconds at up to ``power_kw``. Returns (new_soc_pct, metered_kwh).

    Power is capped by the acceptance at the start of the step, and energy by what reaches the
    target, so the SoC never overshoots the target.
    """
    p = min(max(power_kw, 0.0), acceptance_kw(spec, soc_pct, target_soc_pct))
    e = min(p * dt_s / 3600.0, energy_to_target_kwh(spec, soc_pct, target_soc_pct))
    return soc_pct + e * spec.charge_efficiency / spec.battery_kwh * 100.0, e


def pack_voltage_v(spec: VehicleSpec, soc_pct: float) -> float:
    """Pack voltage (V), linear between min (0 %) and max (100 %)."""
    f = min(max(soc_pct, 0.0), 100.0) / 100.0
    return spec.pack_voltage_min_v + f * (spec.pack_voltage_max_v - spec.pack_voltage_min_v)


@dataclass(frozen=True)
class BmsDemand:
    """What the BMS asks for (GB/T 27930 BCL/BCS)."""

    voltage_v: float
    current_a: float
    mode: BmsMode
    remaining_min: int

    @property
    def power_kw(self) -> float:
        return self.voltage_v * self.current_a / 1000.0


def bms_demand(spec: VehicleSpec, soc_pct: float, target_soc_pct: float = 100.0) -> BmsDemand:
    """The BMS demand at ``soc_pct``: current for the acceptance at the present pack voltage."""
    accept_kw = acceptance_kw(spec, soc_pct, target_soc_pct)
    if accept_kw <= 0:
        return BmsDemand(spec.pack_voltage_max_v, 0.0, BmsMode.NONE, 0)
    v = pack_voltage_v(spec, soc_pct)
    mode = BmsMode.CONSTANT_VOLTAGE if soc_pct >= spec.cv_start_soc_pct else BmsMode.CONSTANT_CURRENT
    remaining_h = energy_to_target_kwh(spec, soc_pct, target_soc_pct) / max(accept_kw, 1e-9)
    return BmsDemand(spec.pack_voltage_max_v, accept_kw * 1000.0 / v, mode, int(np.ceil(remaining_h * 60)))


# ---------------------------------------------------------------------------- batched

@dataclass(frozen=True)
class VehicleBatch:
    """Curves of many vehicles as arrays, for stepping a whole fleet at once.

    ``curve_soc``/``curve_kw`` are (V, K): every vehicle's curve resampled on K points
    (shorter curves repeat their last point).
    """

    curve_soc: np.ndarray
    curve_kw: np.ndarray
    battery_kwh: np.ndarray
    efficiency: np.ndarray

    @classmethod
    def of(cls, specs: list[VehicleSpec]) -> "VehicleBatch":
        k = max(len(s.curve) for s in specs) if specs else 2
        soc = np.empty((len(specs), k))
        kw = np.empty((len(specs), k))
        for i, s in enumerate(specs):
            pts = list(s.curve) + [s.curve[-1]] * (k - len(s.curve))
            # repeated points get a tiny soc offset so segments stay well defined
            soc[i] = [p[0] + 1e-9 * j if j >= len(s.curve) else p[0] for j, p in enumerate(pts)]
            kw[i] = [p[1] for p in pts]
        return cls(soc, kw, np.array([s.battery_kwh for s in specs], float),
                   np.array([s.charge_efficiency for s in specs], float))


def acceptance_kw_batch(batch: VehicleBatch, soc_pct: np.ndarray, target_soc_pct: np.ndarray) -> np.ndarray:
    """:func:`acceptance_kw` for every vehicle of ``batch`` at once (kW, metered)."""
    soc = np.asarray(soc_pct, float)
    xs, ys = batch.curve_soc, batch.curve_kw
    out = np.zeros_like(soc)
    for j in range(xs.shape[1] - 1):
        x0, x1, y0, y1 = xs[:, j], xs[:, j + 1], ys[:, j], ys[:, j + 1]
        inside = (soc >= x0) & (soc <= x1)
        span = np.where(x1 > x0, x1 - x0, 1.0)
        out = np.where(inside, y0 + (y1 - y0) * (soc - x0) / span, out)
    out = out / batch.efficiency
    return np.where((soc >= target_soc_pct) | (soc >= 100.0), 0.0, out)


def charge_step_batch(batch: VehicleBatch, soc_pct: np.ndarray, power_kw: np.ndarray, dt_s: float,
                      target_soc_pct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`charge_step` for every vehicle at once. Returns (new_soc_pct, metered_kwh)."""
    accept = acceptance_kw_batch(batch, soc_pct, target_soc_pct)
    p = np.minimum(np.maximum(power_kw, 0.0), accept)
    need = np.maximum(target_soc_pct - soc_pct, 0.0) / 100.0 * batch.battery_kwh / batch.efficiency
    e = np.minimum(p * dt_s / 3600.0, need)
    return soc_pct + e * batch.efficiency / batch.battery_kwh * 100.0, e
