"""``evstack sim STATION``: every pile of a station as a Modbus TCP server, plus the control API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import signal
import socket
import sys

from hw_profiles.errors import EXIT_OK, InputError

READY_LINE = "evstack sim: ready"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sim", help="run a station's piles as simulated Modbus TCP piles",
        description="Start every pile of STATION as a Modbus TCP server (register map: `evstack registers`), "
                    "print a table of piles, ports and unit ids, serve the HTTP control API, then print "
                    f"'{READY_LINE}'. SIGINT/SIGTERM stop cleanly (state saved), exit 0. Bad input: exit 2.")
    p.add_argument("station", help="station file (TOML); port 0 = pick a free port")
    p.add_argument("--speed", type=float, default=1.0, help="clock speed: simulated seconds per real second (default 1)")
    p.add_argument("--start", help="simulated start time, ISO 8601 (default: now)")
    p.add_argument("--http", default="127.0.0.1:8020", metavar="HOST:PORT",
                   help="control API address (default 127.0.0.1:8020; port 0 = a free port)")
    p.add_argument("--state", help="state file (JSON): meters, sessions, vehicles survive restarts")
    p.add_argument("--scenario", help="CSV of vehicles to plug in at given times (see docs/firmware-sim.md)")
    p.add_argument("--audit", help="append every Modbus write (accepted or refused) to this JSON-lines file")
    p.set_defaults(func=cmd_sim)


def _parse_http(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(None, "--http", f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parse_start(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InputError(None, "--start", f"expected an ISO date-time like 2024-05-01T22:00, got {text!r}") from None


def cmd_sim(args) -> int:
    from hw_profiles.station import load_station

    station = load_station(args.station)
    if not (args.speed > 0 and args.speed < 1e7):
        raise InputError(None, "--speed", f"must be > 0, got {args.speed:g}")
    start_s = _parse_start(args.start)
    http = _parse_http(args.http)
    return asyncio.run(_serve(args, station, start_s, http))


class _QuietSignals:
    """uvicorn's own signal capture re-raises the signal after shutdown; we handle signals ourselves."""

    @staticmethod
    def make(config):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield

        return Server(config)


async def _serve(args, station, start_s, http) -> int:
    import uvicorn

    from hw_profiles.clock import ScaledClock

    from .control_api import create_app
    from .scenario import load_scenario, run_scenario
    from .station import SimulatedStation

    clock = ScaledClock(args.speed, start_s)
    arrivals = load_scenario(args.scenario, station, clock.now_s()) if args.scenario else []
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in http[0] else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(http)
    except OSError as e:
        raise InputError(None, "--http", f"cannot listen on {args.http}: {e.strerror or e}") from None
    sim = SimulatedStation(station, clock=clock, state_path=args.state, audit_path=args.audit)
    try:
        await sim.start()
    except OSError as e:
        sock.close()
        raise InputError(args.station, "piles", str(e)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    config = uvicorn.Config(create_app(sim), log_level="warning", lifespan="off")
    server = _QuietSignals.make(config)
    api = asyncio.create_task(server.serve(sockets=[sock]))
    scenario = asyncio.create_task(run_scenario(sim, arrivals)) if arrivals else None
    try:
        while not server.started and not api.done():
            await asyncio.sleep(0.01)
        if api.done():  # uvicorn failed to start
            await api
            raise InputError(None, "--http", f"control API did not start on {args.http}")
        host, port = sock.getsockname()[:2]
        rows = sim.table()
        print(f"{station.name}: {len(rows)} piles, {station.gun_count} guns, clock x{clock.speed:g}, "
              f"start {dt.datetime.fromtimestamp(clock.now_s()).isoformat(timespec='seconds')}")
        print(f"{'pile':<10} {'host':<15} {'port':>6} {'unit':>4} {'guns':>4}  profile")
        for r in rows:
            print(f"{r['pile']:<10} {r['host']:<15} {r['port']:>6} {r['unit']:>4} {r['guns']:>4}  {r['profile']}")
        print(f"control API: http://{host}:{port} (OpenAPI: http://{host}:{port}/docs)")
        print(READY_LINE, flush=True)
        await stop.wait()
    finally:
        if scenario is not None:
            scenario.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scenario
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(api, 5)
        await sim.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("evstack sim: stopped", file=sys.stderr, flush=True)
    return EXIT_OK
