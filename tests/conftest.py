"""Shared test set-up: every module in tests/fixtures/ is loaded as a pytest plugin."""

from pathlib import Path

_FIXTURES = Path(__file__).parent / "fixtures"

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in _FIXTURES.glob("*.py")
    if not path.name.startswith("_")
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
