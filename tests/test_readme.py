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


def test_demo_runs_on_the_examples(capsys):
    assert main(["demo", "--examples", str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert "Result: compliant" in out and "FAIL" not in out
