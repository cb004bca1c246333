from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DIFFBOOST_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or a skip that says what is missing."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not found at {p} (tests on real data need ../shared/data beside the repo)")
    return p


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    from diffboost.data.phantoms import generate_phantoms

    return generate_phantoms(tmp_path_factory.mktemp("phantoms") / "busi", n=12, seed=3)
