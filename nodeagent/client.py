"""The CA client as the node agent knows it; it lives in :mod:`security.caclient`.

Kept so node-agent code and its tests name the client where they always did.
"""

from meshfed.security.caclient import RETRYABLE, CAClient, CARefused, SignResponse

__all__ = ["RETRYABLE", "CAClient", "CARefused", "SignResponse"]
