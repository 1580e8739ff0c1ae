import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import EXAMPLES  # noqa: E402


@pytest.fixture
def examples() -> Path:
    return EXAMPLES
