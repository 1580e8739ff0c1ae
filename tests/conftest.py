import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import EXAMPLES  # noqa: E402

# CI (CI=true) replays a fixed sequence of examples, so a submission is judged on the same
# cases each time; developers' runs draw new examples and keep exploring (a failure found
# there becomes a regression test).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session", autouse=True)
def _allocation_kernel_compiled():
    """Compile the allocation kernel (or load numba's cache) before any test runs: on a
    fresh clone the first compile takes ~10 s, which must not fall inside a test that waits
    for a pile with a timeout."""
    from controller.allocation import warm_up

    warm_up()


@pytest.fixture(scope="module", params=["numba", "numpy"])
def backend(request):
    """The allocation backend a module's tests run on: once for each this installation has
    (a module opts in with ``pytestmark = pytest.mark.usefixtures("backend")``)."""
    from controller.allocation import BACKENDS, _core

    if request.param not in BACKENDS:
        pytest.skip(f"allocation backend {request.param!r} does not import here")
    saved = _core.DEFAULT_BACKEND
    _core.DEFAULT_BACKEND = request.param
    yield request.param
    _core.DEFAULT_BACKEND = saved
