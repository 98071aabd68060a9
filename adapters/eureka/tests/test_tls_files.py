"""TLS files named in a Eureka registry entry are read by the config reader: a FIFO or device
there is refused at once with the file named, never opened by OpenSSL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshfed.adapters.eureka.client import ssl_context
from meshfed.adapters.eureka.config import EurekaSettings, TLSSettings
from meshfed.adapters.eureka.mapping import MappingSettings
from meshfed.core.files import FileRefused


def settings(tls: TLSSettings) -> EurekaSettings:
    return EurekaSettings(("http://127.0.0.1:1/eureka",), MappingSettings("eureka"), tls=tls)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("field", ["ca_file", "cert_file"])
def test_fifo_as_a_tls_file_is_refused(tmp_path: Path, field: str) -> None:
    fifo = tmp_path / "x.pem"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match="not a regular file \\(a FIFO\\)") as info:
        ssl_context(settings(TLSSettings(**{field: str(fifo)})))
    assert info.value.path == str(fifo)
