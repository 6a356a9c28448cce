"""Test-wide settings: deterministic CPU runs that do not oversubscribe the 2-core CI machine."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # lets tests import the shared `parity` helpers

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
