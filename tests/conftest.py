"""Test-wide settings: deterministic CPU runs that do not oversubscribe the 2-core CI machine."""

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Runs the OpenVINO tests last.

    Once OpenVINO's CPU plugin has run (bf16 on AMX CPUs) in the pytest process, a later test that waits for a child
    process can die with SIGSEGV in waitpid: measured on a Sapphire Rapids machine with openvino 2026, reproducible
    with tests/export/test_export_runtime.py followed by tests/test_demo.py, gone without openvino. Nothing waits
    for a child after the last test, so ordering them last keeps the whole suite in one process. The README's
    OpenVINO/INT8 commands run as child processes and the parent never loads OpenVINO for them, so they stay in place.
    """

    def loads_openvino(item) -> bool:
        return ("openvino" in item.nodeid or "int8" in item.nodeid) and "test_readme.py" not in item.nodeid

    openvino_tests = [item for item in items if loads_openvino(item)]
    items[:] = [item for item in items if not loads_openvino(item)] + openvino_tests
