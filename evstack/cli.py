"""The ``evstack`` command: one argparse parser, one subcommand module per package.

Each package contributes its subcommands through ``register(subparsers)`` in its ``cli``
module and imports its heavy dependencies inside the handlers, so ``evstack check`` stays fast.
Exit codes: 0 success, 1 a rule failed, 2 bad input (one line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from hw_profiles.errors import EXIT_BAD_INPUT, InputError

COMMAND_MODULES = (
    "hw_profiles.cli",
    "firmware_sim.cli",
    "controller.cli",
    "controller.export_cli",
    "scheduler.cli",
    "evstack.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evstack",
        description="Control and simulate EV charging hardware (Qujing rules).",
        epilog="Exit codes: 0 ok, 1 a rule failed, 2 bad input, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that package has no commands yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        print(f"evstack {args.command}: {e.line()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `evstack ... | head`: the reader left; not an error of ours
        import os
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second traceback when Python flushes stdout at exit
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
