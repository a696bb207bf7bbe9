"""The clone's project folder: pedseg's own Flower app (its pyproject.toml holds [tool.flwr.app]), as the tests
run it and copy it."""

from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]
