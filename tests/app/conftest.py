"""One tiny app world (phantom dataset, cache, bank, predictions) for the app's test modules."""

from __future__ import annotations

import pytest
from app_fixtures import build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("appworld"))
