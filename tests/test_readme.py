"""The README's two commands exist and come first; the demo runs."""

import re
import subprocess

from evstack.cli import main
from helpers import EXAMPLES, ROOT


def test_readme_shows_make_demo_and_make_test_first():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"]


def test_makefile_targets_exist():
    r = subprocess.run(["make", "-n", "-C", str(ROOT), "demo", "test"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "evstack demo" in r.stdout and "pytest" in r.stdout


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_demo_runs_the_whole_stack(tmp_path, capsys):
    """`make demo` = `evstack demo`: check, schedule, a night over Modbus with the controller, bills."""
    assert main(["demo", "--examples", str(EXAMPLES), "--out", str(tmp_path), "--speed", "1000"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert (tmp_path / "schedule" / "plan.csv").exists() and (tmp_path / "evstack.db").exists()
    summary = [line for line in out.splitlines() if "sessions billed" in line][-1]
    assert summary.startswith("18 sessions billed") and summary.endswith("controller exit code 0")
    worst = float(summary.split("worst ")[1].split(" %")[0])
    assert worst <= 2.0, summary


def test_broken_pipe_is_not_a_traceback(tmp_path):
    import sys
    r = subprocess.run(f"{sys.executable} -m evstack registers | head -1", shell=True, capture_output=True, text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr and r.stdout.strip()
