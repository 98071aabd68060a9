"""A kubeconfig that is not a regular file is refused at once, never read into a blocked thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshfed.adapters.kubernetes.client import load_api_client
from meshfed.core.files import FileRefused


@pytest.mark.timeout(10)
def test_fifo_or_device_kubeconfig_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "kubeconfig"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match="not a regular file \\(a FIFO\\)"):
        load_api_client(str(fifo))
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    with pytest.raises(FileRefused, match="not a regular file \\(a character device\\)"):
        load_api_client(str(zero))
