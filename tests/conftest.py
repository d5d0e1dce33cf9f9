from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline import Pipeline, build_pipeline

from demo.broker import Broker, start_mosquitto


@pytest.fixture
def mqtt_broker() -> Iterator[Broker]:
    """A real mosquitto on a free loopback port, new for each test (it starts in a few ms)."""
    with start_mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Synthetic data, a PatchCore bundle fitted on it and its OpenVINO edge bundle, built once per run."""
    return build_pipeline(tmp_path_factory.mktemp("pipeline"))
