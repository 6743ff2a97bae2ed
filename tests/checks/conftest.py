from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # The checks' tests train tiny MLPs, fastest on one thread; more only spin against each other on a busy CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
