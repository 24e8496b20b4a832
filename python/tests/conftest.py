"""Test setup: the in-tree package comes first on sys.path, and tests that
take a `device` run on the CPU and, when the machine has a GPU and the
library was built with a CUDA backend, on CUDA. Without torch every test
module skips itself (pytest.importorskip) with a message.

FLASHATTN_TEST_DEVICES=cpu,cuda restricts or forces the device list.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _devices():
    wanted = os.environ.get("FLASHATTN_TEST_DEVICES")
    if wanted:
        return [d for d in wanted.split(",") if d]
    import torch
    import flashattn

    devices = ["cpu"]
    if torch.cuda.is_available() and (flashattn.backend_compiled("cuda_sm80")
                                      or flashattn.backend_compiled("cuda_sm90")):
        devices.append("cuda")
    return devices


def pytest_report_header(config):
    try:
        import torch
    except ImportError:
        return "flashattn: torch is not installed, so every flashattn test is skipped"
    import flashattn

    return (f"flashattn {flashattn.__version__} ({flashattn.library_path}), "
            f"torch {torch.__version__}, devices: {','.join(_devices())}")


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _devices())
