"""Shared test helpers: free ports, example paths, station files rewritten onto free ports."""

from __future__ import annotations

import re
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def station_on_free_ports(src: Path, dst_dir: Path, *, host: str = "127.0.0.1") -> Path:
    """Copy a station file with every ``port = N`` replaced by a free port; returns the new path.

    Referenced files (a relative ``tariff`` path) still resolve: presets are names, and a
    relative path is rewritten to an absolute one.
    """
    text = Path(src).read_text(encoding="utf-8")
    text = re.sub(r"(?m)^port\s*=\s*\d+", lambda m: f"port = {free_port()}", text)
    text = re.sub(r'(?m)^host\s*=\s*"[^"]*"', f'host = "{host}"', text)

    def abs_tariff(m: re.Match) -> str:
        ref = m.group(1)
        if ref.endswith(".toml") and not Path(ref).is_absolute():
            ref = str((Path(src).parent / ref).resolve())
        return f'tariff = "{ref}"'

    text = re.sub(r'(?m)^tariff\s*=\s*"([^"]*)"', abs_tariff, text)
    out = Path(dst_dir) / Path(src).name
    out.write_text(text, encoding="utf-8")
    return out
