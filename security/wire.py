"""Names on the wire of the CA's signing service, shared by the server and its clients.

Why a module of its own: the node agent needs these constants but none of the CA's code, and
importing :mod:`security.service` would load the CA (and its memory) into every agent.
"""

from __future__ import annotations

SERVICE_NAME = "meshfed.security.v1.CertificateService"
SIGN_METHOD = f"/{SERVICE_NAME}/Sign"
BUNDLE_METHOD = f"/{SERVICE_NAME}/TrustBundle"  # public: the current trust bundle
JOIN_TOKEN_HEADER = "x-meshfed-join-token"
CA_SERVER_NAME = "meshfed-ca"  # the DNS SAN clients check (grpc.ssl_target_name_override)
