"""`train.device`: auto picks what torch sees; a device that is not there is a clear error, not a crash."""

import pytest
import torch

from pedseg_core.device import resolve_device, to_cpu
from pedseg_core.errors import PedsegError


def test_auto_is_cuda_only_when_torch_sees_a_gpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_named():
    with pytest.raises(PedsegError, match=r"train.device 'cuda:0': torch sees 0 CUDA GPU\(s\)"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("name", ["gpu", "mps"])
def test_unknown_or_unsupported_devices_are_refused(name):
    with pytest.raises(PedsegError, match=f"train.device '{name}'"):
        resolve_device(name)


def test_to_cpu_keeps_cpu_tensors_without_copying():
    state = {"w": torch.ones(2)}
    assert to_cpu(state)["w"] is state["w"]
