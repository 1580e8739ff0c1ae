"""``evstack demo``: the most complete thing the stack does, on the shipped examples."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demo on the shipped examples")
    p.add_argument("--examples", default=None, help="folder of the example files (default: ./examples)")
    p.set_defaults(func=cmd_demo)


def examples_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    here = Path.cwd() / "examples"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "examples"


def cmd_demo(args) -> int:
    from evstack.cli import main as evstack

    ex = examples_dir(args.examples)
    worst = 0
    runs = [
        ["check", str(ex / "bus-depot.toml"), "--fleet", str(ex / "bus-fleet.csv")],
        ["check", str(ex / "logistics-station.toml")],
        ["check", str(ex / "public-car-park.toml")],
    ]
    for argv in runs:
        print(f"\n$ evstack {' '.join(argv)}")
        worst = max(worst, evstack(argv))
    return worst
