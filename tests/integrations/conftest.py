from __future__ import annotations

import os

import pytest

# Tiny models from configs, generated or bundled data: nothing is ever downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def plain_outcome(tmp_path_factory):
    """The plain tracked loop on the noisy digits: what each framework's run is compared with."""
    from fixtures.frameworks import plain

    return plain(tmp_path_factory.mktemp("plain") / "run")
