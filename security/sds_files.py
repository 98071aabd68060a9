"""Where a proxy's secrets live when Envoy reads them from files (file-based SDS).

Why a module of its own: two sides must agree on it and neither may load the other. The node
agent writes the files (and must stay free of Envoy's protobufs, it runs once per node); Pilot
and :mod:`security.mtls` name them in the config they hand Envoy. Standard library only.

Promises:
- One directory per proxy holds one file per secret: ``<dir>/default.json`` (certificate chain
  and private key together, so a rotation can never pair a new certificate with an old key)
  and ``<dir>/ROOTCA.json`` (the trust bundle). Each file is one SDS ``DiscoveryResponse`` with
  exactly one ``Secret`` named like the file, the form Envoy's ``path_config_source`` reads.
- :data:`CERT_SECRET` and :data:`ROOT_SECRET` are the names Istio's sidecars use.
"""

from __future__ import annotations

import os

CERT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SUFFIX = ".json"  # Envoy picks the parser by extension: JSON, a subset of YAML, is both


def secret_path(directory: str | os.PathLike[str], name: str) -> str:
    """The file Envoy reads secret ``name`` from, inside a proxy's secrets ``directory``."""
    return os.path.join(os.fspath(directory), name + SUFFIX)
