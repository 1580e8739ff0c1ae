"""The bench control surface of ``evstack sim``: a small HTTP API (FastAPI, OpenAPI at /docs).

Plug vehicles in and out, pause a vehicle's BMS, inject and clear faults, change the clock
speed, read a pile's whole state. Every mutating call answers with the pile's new state.
Mistakes are 4xx naming the field: 404 unknown pile, 409 the gun is not in a state for it
(occupied, nothing plugged in), 422 a value out of range.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from .model import FAULT_KINDS, SimError
from .station import SimulatedStation


class PlugIn(BaseModel):
    """A vehicle to plug in."""

    profile: str = Field("bus-12m", description="vehicle profile of the catalog (or of the station file)")
    vin: str | None = Field(None, max_length=17, description="17-character VIN; default: generated")
    soc_pct: float = Field(30.0, ge=0, le=100, description="state of charge at plug-in, %")
    target_soc_pct: float = Field(100.0, gt=0, le=100, description="the vehicle stops charging here, %")
    id_token: str | None = Field(None, max_length=20, description="card id / QR token shown in register id_token")
    combined: bool = Field(False, description="occupy both guns of the pair (dual-gun charging)")


class Fault(BaseModel):
    """A fault to inject."""

    kind: Literal[FAULT_KINDS]  # type: ignore[valid-type]
    gun_no: int | None = Field(None, ge=1, description="gun for gun faults (default 1); ignored for pile-wide ones")
    temperature_c: float | None = Field(None, description="over_temperature: the gun's temperature, °C")
    duration_s: float | None = Field(None, gt=0, description="comm_drop: simulated seconds of silence")
    modules: int | None = Field(None, ge=1, description="module_loss: modules that go offline")


class Speed(BaseModel):
    speed: float = Field(..., gt=0, le=1_000_000, description="simulated seconds per real second")


class Paused(BaseModel):
    paused: bool = True


class InService(BaseModel):
    in_service: bool


def create_app(sim: SimulatedStation) -> FastAPI:
    """The control API of a running :class:`SimulatedStation`."""
    app = FastAPI(title="evstack sim control API", version="1",
                  description="Bench control of simulated piles: vehicles, faults, clock, state.")

    @app.exception_handler(SimError)
    async def _sim_error(request: Request, exc: SimError) -> JSONResponse:
        status = 404 if exc.field == "pile_id" else 409 if exc.conflict else 422
        return JSONResponse(status_code=status,
                            content={"detail": [{"loc": ["body" if status == 422 else "path", exc.field],
                                                 "msg": exc.reason, "field": exc.field}]})

    @app.get("/piles", summary="Piles, their Modbus endpoints and profiles")
    async def piles() -> list[dict]:
        return sim.table()

    @app.get("/piles/{pile_id}", summary="Everything about a pile (registers decoded, vehicles, faults)")
    async def pile_state(pile_id: str) -> dict:
        return sim.state(pile_id)

    @app.post("/piles/{pile_id}/guns/{gun_no}/plug-in", summary="Plug a vehicle in")
    async def plug_in(pile_id: str, gun_no: int, body: PlugIn) -> dict:
        sim.plug_in(pile_id, gun_no, **body.model_dump())
        return sim.state(pile_id)

    @app.post("/piles/{pile_id}/guns/{gun_no}/unplug", summary="Unplug the vehicle")
    async def unplug(pile_id: str, gun_no: int) -> dict:
        sim.unplug(pile_id, gun_no)
        return sim.state(pile_id)

    @app.post("/piles/{pile_id}/guns/{gun_no}/pause", summary="The vehicle's BMS pauses (SUSPENDED_EV) or resumes")
    async def pause(pile_id: str, gun_no: int, body: Paused) -> dict:
        sim.set_paused(pile_id, gun_no, body.paused)
        return sim.state(pile_id)

    @app.post("/piles/{pile_id}/guns/{gun_no}/service", summary="Take a gun out of service (UNAVAILABLE) or back")
    async def service(pile_id: str, gun_no: int, body: InService) -> dict:
        sim.set_in_service(pile_id, gun_no, body.in_service)
        return sim.state(pile_id)

    @app.post("/piles/{pile_id}/faults", summary="Inject a fault")
    async def inject(pile_id: str, body: Fault) -> dict:
        params = {k: v for k, v in body.model_dump().items() if k not in ("kind", "gun_no") and v is not None}
        sim.inject_fault(pile_id, body.gun_no, body.kind, **params)
        return sim.state(pile_id)

    @app.delete("/piles/{pile_id}/faults", summary="Clear injected faults and reset (one gun, or the whole pile)")
    async def clear(pile_id: str, gun_no: int | None = Query(None, ge=1)) -> dict:
        sim.clear_faults(pile_id, gun_no)
        return sim.state(pile_id)

    @app.get("/clock", summary="Simulated time and speed")
    async def clock() -> dict:
        return {"sim_time_s": sim.clock.now_s(), "speed": sim.clock.speed}

    @app.put("/clock", summary="Change the clock speed (no jump in simulated time)")
    async def set_clock(body: Speed) -> dict:
        sim.clock.set_speed(body.speed)
        return {"sim_time_s": sim.clock.now_s(), "speed": sim.clock.speed}

    return app
