"""The report of a run, from the simulated output itself: energy and cost by tariff period,
peak, the rules per vehicle, the plan (plan.csv) and the picture (load.png).

Rules checked per session (DOMAIN.md, night valley charging; they apply to a stay that
overlaps a valley window, whatever the policy):

- ``gun``: it got a gun before leaving;
- ``start_within_30min``: first setpoint > 0 no later than 30 min after the later of valley
  start and arrival (waiting for a gun counts against it);
- ``power_band``: every setpoint of a night stay within the band (30-60 kW per bus,
  15-30 kW otherwise; the gun's own range when it cannot reach the band); the battery's taper
  at the end of a charge is exempt (it is the vehicle asking for less);
- ``full_by_valley_end``: full (see :func:`scheduler.curves.full_soc`) by the end of the last
  valley window of the stay (by departure when it leaves earlier);
- ``full_by_departure``: full when it leaves; ``unmet_kwh`` is what is missing.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import numpy as np

from hw_profiles.tariff import PERIODS

from .feasibility import Finding
from .policies import bands, gun_caps
from .runner import Run

RULES = ("gun", "start_within_30min", "power_band", "full_by_valley_end", "full_by_departure")
FULL_TOL_PCT = 1e-6
PLAN_COLUMNS = ("vehicle_id", "gun_id", "start", "end", "kw")


def _iso(dt64) -> list[str]:
    return [str(x)[:16] for x in np.datetime_as_string(dt64, unit="m")]


def gun_labels(run: Run) -> list[str]:
    st, a = run.scenario.station, run.assignment
    out = []
    for g0, g1 in zip(a.gun0.tolist(), a.gun1.tolist()):
        if g0 < 0:
            out.append("")
        elif g1 < 0:
            out.append(st.gun_id[g0])
        else:
            out.append(f"{st.gun_id[g0]}+{st.gun_no[g1]}")
    return out


def evaluate_rules(run: Run) -> dict:
    """Per session: applies/met per rule, the kWh missed, and the simulated key times."""
    sc, a, ctx, res = run.scenario, run.assignment, run.context, run.result
    s = sc.sessions
    n = len(s)
    vw = sc.valley_windows()[s.lane]
    in_valley = np.minimum(vw[..., 1], s.departure[:, None]) > np.maximum(vw[..., 0], s.arrival[:, None])
    night = in_valley.any(axis=1)
    ref_start = np.where(in_valley, np.maximum(vw[..., 0], s.arrival[:, None]), np.inf).min(axis=1)
    ref_end = np.where(in_valley, np.minimum(vw[..., 1], s.departure[:, None]), -np.inf).max(axis=1)
    kpp = ctx.need_kwh / np.maximum(ctx.full_soc - s.soc0, 1e-12)
    from .curves import kwh_per_pct
    kpp = kwh_per_pct(s.batch, s.spec_idx)
    needs = ctx.need_kwh > 1e-9
    unmet = np.maximum(ctx.full_soc - res.final_soc, 0.0) * kpp
    unmet = np.where(a.gun0 >= 0, unmet, np.maximum(s.target - s.soc0, 0.0) * kpp)
    unmet[unmet < 1e-6] = 0.0
    full = unmet <= 0.0
    # energy after the valley end, from the segments
    ss, t0, t1, kw = res.seg_session, res.seg_start, res.seg_end, res.seg_kw
    after = np.clip(t1 - np.maximum(t0, ref_end[ss]), 0, None) * kw / 60.0
    after_kwh = np.bincount(ss, weights=np.where(np.isfinite(after), after, 0.0), minlength=n)
    # the last segment may be a partial minute: what was delivered after the valley end is at
    # most the energy of the session
    after_kwh = np.minimum(after_kwh, res.energy_kwh)
    # power band during valley minutes
    lo, hi = bands(sc)
    _, rating, _ = gun_caps(sc, ctx)
    lo_eff = np.minimum(lo, rating)
    # the band holds for the whole night stay (the valley and the other hours it may use)
    in_v = night[ss] if ss.size else np.zeros(0, bool)
    out_band = in_v & ((kw > hi[ss] + 1e-6) | ((kw < lo_eff[ss] - 1e-6) & ~res.seg_taper))
    band_bad = np.bincount(ss, weights=out_band, minlength=n) > 0

    applies = {
        "gun": np.ones(n, bool) & needs,
        "start_within_30min": night & needs,
        "power_band": night & needs & (a.gun0 >= 0),
        "full_by_valley_end": night & needs,
        "full_by_departure": needs,
    }
    rw = sc.rules.start_within_min
    met = {
        "gun": a.gun0 >= 0,
        "start_within_30min": (res.first_on >= 0) & (res.first_on <= ref_start + rw),
        "power_band": ~band_bad,
        "full_by_valley_end": full & (after_kwh <= 0.01),
        "full_by_departure": full,
    }
    missed_kwh = {
        "gun": np.where(a.gun0 >= 0, 0.0, unmet),
        "start_within_30min": np.zeros(n),
        "power_band": np.zeros(n),
        "full_by_valley_end": unmet + np.where(full, after_kwh, 0.0),
        "full_by_departure": unmet,
    }
    last_end = np.full(n, -1, np.int64)
    if ss.size:
        np.maximum.at(last_end, ss, t1)
    return dict(applies=applies, met=met, missed_kwh=missed_kwh, unmet=unmet, night=night, ref_start=ref_start,
                ref_end=ref_end, last_end=last_end, after_kwh=after_kwh)


def build_report(run: Run, findings: list[Finding], *, station_path: str = "", fleet_path: str = "",
                 vehicles_limit: int | None = None) -> dict:
    sc, a, ctx, res = run.scenario, run.assignment, run.context, run.result
    s, st = sc.sessions, sc.station
    ev = evaluate_rules(run)
    kwh = res.minute_kwh
    by_period = np.bincount(sc.period.ravel(), weights=kwh.ravel(), minlength=len(PERIODS))
    used = sc.tariff.used_periods
    energy = float(kwh.sum())
    electricity = float((kwh * sc.price).sum())
    service = energy * sc.service_fee
    total = electricity + service
    ids = [f.vehicle_id for f in sc.fleet]
    labels = gun_labels(run)
    rules = {}
    for r in RULES:
        ap = ev["applies"][r]
        rules[r] = {"applies": int(ap.sum()), "met": int((ap & ev["met"][r]).sum())}
    started = rules["start_within_30min"]
    fullv = rules["full_by_valley_end"]
    share = lambda d: round(d["met"] / d["applies"], 4) if d["applies"] else 1.0  # noqa: E731
    reasons = {
        "gun": "no free gun before departure",
        "start_within_30min": "did not start within 30 min of the later of valley start and arrival",
        "power_band": "a setpoint outside the power band at night",
        "full_by_valley_end": "not full by the end of the valley",
        "full_by_departure": "not full at departure",
    }
    vehicles = []
    n = len(s)
    starts = sc.to_datetime(s.lane, np.maximum(res.first_on, 0))
    plugs = sc.to_datetime(s.lane, a.plug)
    ends = sc.to_datetime(s.lane, np.maximum(ev["last_end"], 0))
    arrivals = sc.to_datetime(s.lane, s.arrival)
    deps = sc.to_datetime(s.lane, s.departure)
    iso = lambda x: str(x)[:16]  # noqa: E731
    limit = n if vehicles_limit is None else min(n, vehicles_limit)
    for i in range(limit):
        missed = []
        for r in RULES:
            if ev["applies"][r][i] and not ev["met"][r][i]:
                missed.append({"rule": r, "kwh": round(float(ev["missed_kwh"][r][i]), 2), "reason": reasons[r]})
        vehicles.append({
            "vehicle_id": ids[s.vehicle[i]], "day": int(s.day[i]), "vin": sc.fleet[s.vehicle[i]].vin,
            "gun": labels[i] or None, "arrival": iso(arrivals[i]), "plug_in": iso(plugs[i]) if a.gun0[i] >= 0 else None,
            "start": iso(starts[i]) if res.first_on[i] >= 0 else None,
            "end": iso(ends[i]) if ev["last_end"][i] >= 0 else None, "departure": iso(deps[i]),
            "energy_kwh": round(float(res.energy_kwh[i]), 2), "arrival_soc_pct": round(float(s.soc0[i]), 2),
            "final_soc_pct": round(float(res.final_soc[i]), 2), "full_soc_pct": round(float(ctx.full_soc[i]), 2),
            "missed": missed,
        })
    tariff = {"name": sc.tariff.name, "note": sc.tariff.note}
    last_day = sc.day0 + dt.timedelta(days=sc.days - 1)
    if sc.tariff.effective_to and sc.day0 > sc.tariff.effective_to:
        tariff["warning"] = f"in force until {sc.tariff.effective_to}, the run starts {sc.day0}"
    elif sc.tariff.effective_from and last_day < sc.tariff.effective_from:
        tariff["warning"] = f"in force from {sc.tariff.effective_from}, the run ends {last_day}"
    doc = {
        "station": st.spec.name, "station_file": station_path, "fleet_file": fleet_path,
        "policy": run.policy, "tariff": tariff,
        "price_category": sc.price_category, "date": sc.day0.isoformat(), "days": sc.days, "seed": sc.seed,
        "energy_kwh": round(energy, 2),
        "energy_kwh_by_period": {p: round(float(by_period[PERIODS.index(p)]), 2) for p in PERIODS
                                 if p in used or by_period[PERIODS.index(p)] > 0},
        "cost_cny": {"electricity": round(electricity, 2), "service": round(service, 2), "total": round(total, 2)},
        "avg_cny_per_kwh": round(total / energy, 4) if energy > 0 else 0.0,
        "peak_site_kw": round(float(res.minute_kw.max()) if res.minute_kw.size else 0.0, 2),
        "site_limit_kw": st.spec.site_limit_kw,
        "started_within_30min_share": share(started),
        "full_by_valley_end_share": share(fullv),
        "unmet_kwh": round(float(ev["unmet"].sum()), 2),
        "rules": rules,
        "rules_met_share": round(sum(v["met"] for v in rules.values()) / max(sum(v["applies"] for v in rules.values()), 1), 4),
        "feasibility": [f.as_dict() for f in findings],
        "vehicles": vehicles,
        "simulation": {"lanes": sc.lanes, "ticks": res.ticks, "allocation_calls": res.core_calls,
                       "sessions": n, "step_min": 1},
    }
    if run.plan.lp is not None:
        doc["lp"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in run.plan.lp.items()}
    return doc


def plan_rows(run: Run) -> list[tuple[str, str, str, str, str]]:
    """plan.csv rows: constant setpoint segments, sorted by start then vehicle."""
    sc, res = run.scenario, run.result
    s = sc.sessions
    ss = res.seg_session
    if ss.size == 0:
        return []
    labels = np.array(gun_labels(run), dtype=object)
    ids = np.array([f.vehicle_id for f in sc.fleet], dtype=object)
    start = _iso(sc.to_datetime(s.lane[ss], res.seg_start))
    end = _iso(sc.to_datetime(s.lane[ss], res.seg_end))
    order = sorted(range(ss.size), key=lambda k: (start[k], ids[s.vehicle[ss[k]]], int(s.day[ss[k]])))
    return [(ids[s.vehicle[ss[k]]], labels[ss[k]], start[k], end[k], f"{res.seg_kw[k]:.3f}".rstrip("0").rstrip("."))
            for k in order]


def write_plan(run: Run, path: Path) -> int:
    rows = plan_rows(run)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PLAN_COLUMNS)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return len(rows)


def render_text(doc: dict, max_vehicles: int = 25) -> str:
    out = []
    c = doc["cost_cny"]
    out.append(f"Schedule: {doc['station']} | policy {doc['policy']} | {doc['date']}"
               + (f" + {doc['days'] - 1} more day(s), seed {doc['seed']}" if doc["days"] > 1 else ""))
    t = doc["tariff"]
    out.append(f"Tariff: {t['name']}" + (f" ({t['note']})" if t["note"] else "") + f", {doc['price_category']}"
               + (f"; NOTE: {t['warning']}" if t.get("warning") else ""))
    out.append(f"Energy {doc['energy_kwh']:,.1f} kWh: " + ", ".join(f"{p} {v:,.1f}" for p, v in doc["energy_kwh_by_period"].items()))
    out.append(f"Cost {c['total']:,.2f} CNY = electricity {c['electricity']:,.2f} + service {c['service']:,.2f}"
               f"  ({doc['avg_cny_per_kwh']:.4f} CNY/kWh)")
    if "lp" in doc:
        out.append(f"LP optimum (lower bound): {doc['lp']['cost_cny']:,.2f} CNY, unmet {doc['lp']['unmet_kwh']:.1f} kWh")
    out.append(f"Peak site load {doc['peak_site_kw']:,.0f} kW of {doc['site_limit_kw']:,.0f} kW limit")
    out.append(f"Started within 30 min: {doc['started_within_30min_share']:.1%}   "
               f"full by valley end: {doc['full_by_valley_end_share']:.1%}   unmet: {doc['unmet_kwh']:.1f} kWh")
    out.append("Rules: " + ", ".join(f"{r} {v['met']}/{v['applies']}" for r, v in doc["rules"].items()))
    if doc["feasibility"]:
        out.append(f"Before the night ({len(doc['feasibility'])} finding(s)):")
        for f in doc["feasibility"][:max_vehicles]:
            out.append("  - " + Finding(**f).line())
        if len(doc["feasibility"]) > max_vehicles:
            out.append(f"  ... {len(doc['feasibility']) - max_vehicles} more in report.json")
    else:
        out.append("Before the night: every rule can be met.")
    missing = [v for v in doc["vehicles"] if v["missed"]]
    if missing:
        out.append(f"Simulated misses ({len(missing)} vehicle-day(s)):")
        for v in missing[:max_vehicles]:
            rules = "; ".join(f"{m['rule']}" + (f" by {m['kwh']:.1f} kWh" if m["kwh"] > 0 else "") for m in v["missed"])
            out.append(f"  - {v['vehicle_id']} day {v['day']} on {v['gun'] or 'no gun'}: {rules}")
        if len(missing) > max_vehicles:
            out.append(f"  ... {len(missing) - max_vehicles} more in report.json")
    else:
        out.append("Simulated: every vehicle met every rule and leaves full.")
    if doc["days"] == 1:
        out.append(f"{'vehicle':<10}{'gun':<10}{'plug-in':<8}{'start':<7}{'end':<7}{'kWh':>7}{'SoC %':>13}")
        for v in doc["vehicles"][:max_vehicles * 4]:
            hm = lambda x: x[11:16] if x else "--"  # noqa: E731
            out.append(f"{v['vehicle_id']:<10}{(v['gun'] or '-'):<10}{hm(v['plug_in']):<8}{hm(v['start']):<7}{hm(v['end']):<7}"
                       f"{v['energy_kwh']:>7.1f}{v['arrival_soc_pct']:>6.1f}->{v['final_soc_pct']:<5.1f}")
    return "\n".join(out)


def plot_load(run: Run, path: Path, lane: int = 0) -> None:
    """Site load against tariff bands and the site limit, and one timeline row per gun."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc, res, a = run.scenario, run.result, run.assignment
    st, s = sc.station, sc.sessions
    H = min(sc.horizon_min, 3 * 1440)
    x = np.arange(H) / 60.0
    fig, (ax, ag) = plt.subplots(2, 1, figsize=(12, 4 + 0.18 * st.n_guns), sharex=True,
                                 gridspec_kw={"height_ratios": [2, max(1.5, 0.12 * st.n_guns)]})
    colours = {"critical_peak": "#d62728", "peak": "#ff9896", "flat": "#f7f7f7", "valley": "#98df8a"}
    per = sc.period[lane, :H]
    edges = np.flatnonzero(np.diff(np.r_[-1, per, -1]))
    for b0, b1 in zip(edges[:-1], edges[1:]):
        name = PERIODS[per[b0]]
        for axis in (ax, ag):
            axis.axvspan(b0 / 60, b1 / 60, color=colours[name], alpha=0.5, lw=0,
                         label=name if axis is ax and name not in ax.get_legend_handles_labels()[1] else None)
    ax.step(x, res.minute_kw[lane, :H], where="post", color="#1f77b4", lw=1.5, label="site load (setpoints)")
    ax.axhline(st.spec.site_limit_kw, color="#d62728", ls="--", lw=1.2, label=f"site limit {st.spec.site_limit_kw:g} kW")
    ax.set_ylabel("kW")
    ax.set_title(f"{st.spec.name}: policy {run.policy}, {str(sc.lane_start[lane])[:16]}")
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    ss, t0, t1, kw = res.seg_session, res.seg_start, res.seg_end, res.seg_kw
    sel = (s.lane[ss] == lane) & (t0 < H)
    top = max(float(kw.max()) if kw.size else 1.0, 1.0)
    cmap = plt.get_cmap("viridis")
    for k in np.flatnonzero(sel):
        i = ss[k]
        for g in (a.gun0[i], a.gun1[i]):
            if g >= 0:
                ag.barh(g, (min(t1[k], H) - t0[k]) / 60, left=t0[k] / 60, height=0.8, color=cmap(kw[k] / top), lw=0)
    lanes_sessions = np.flatnonzero((s.lane == lane) & (a.gun0 >= 0))
    for i in lanes_sessions:
        ag.text(a.plug[i] / 60, a.gun0[i], sc.fleet[s.vehicle[i]].vehicle_id, fontsize=6, va="center")
    ag.set_yticks(range(st.n_guns))
    ag.set_yticklabels(st.gun_id, fontsize=6)
    ag.invert_yaxis()
    ticks = np.arange(0, H / 60 + 1, 2)
    start_h = sc.lane_start[lane].hour + sc.lane_start[lane].minute / 60
    ag.set_xticks(ticks)
    ag.set_xticklabels([f"{int((start_h + t) % 24):02d}:{int(round(((start_h + t) % 1) * 60)):02d}" for t in ticks], fontsize=7)
    ag.set_xlabel("local time (gun bars: colour = kW)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
