"""One schedule run: scenario -> gun assignment -> policy plan -> simulation. Pure apart from
the optional progress callback; the CLI does the file I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

import numpy as np

from hw_profiles.fleet import FleetVehicle
from hw_profiles.specs import StationSpec
from hw_profiles.tariff import Tariff

from .assign import Assignment, assign_guns
from .model import Scenario, build_scenario, session_full_soc
from .policies import Context, Plan, make_plan, wants_two_guns
from .sim import SimResult, simulate


@dataclass
class Run:
    policy: str
    scenario: Scenario
    assignment: Assignment
    context: Context
    plan: Plan
    result: SimResult


def prepare(sc: Scenario, policy: str) -> Context:
    asg = assign_guns(sc, wants_two_guns(sc, policy))
    full = session_full_soc(sc, asg.gun0, asg.n_guns)
    s = sc.sessions
    from .curves import kwh_per_pct
    need = np.maximum(full - s.soc0, 0.0) * kwh_per_pct(s.batch, s.spec_idx)
    return Context(asg, full, need)


def run_scenario(sc: Scenario, policy: str, progress: Callable[[float], None] | None = None) -> Run:
    ctx = prepare(sc, policy)
    plan = make_plan(policy, sc, ctx)
    res = simulate(sc, ctx.assignment, plan, progress)
    return Run(policy, sc, ctx.assignment, ctx, plan, res)


def run_schedule(station: StationSpec, fleet: list[FleetVehicle], tariff: Tariff, *, policy: str = "valley",
                 day0: dt.date, days: int = 1, seed: int = 0,
                 progress: Callable[[float], None] | None = None, **kw) -> Run:
    sc = build_scenario(station, fleet, tariff, day0=day0, days=days, seed=seed, **kw)
    return run_scenario(sc, policy, progress)
