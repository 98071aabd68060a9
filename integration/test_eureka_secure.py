"""The adapter reaches a Eureka served over TLS with client certificates and basic auth.

The Eureka server in the test harness speaks plain HTTP, so a real Envoy stands in front of it,
as a TLS-terminating gateway does in production: it requires a client certificate signed by the
test CA and checks HTTP basic auth (Envoy's ``basic_auth`` filter) before forwarding to Eureka.
Nothing imitates Eureka; every answer the adapter parses comes from the real server.
Addresses: the gateway on 127.0.93.91; instances on 127.0.93.9x (registered only).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from integration.peers.certs import KubePki, make_pki
from integration.peers.envoy import EnvoyProxy
from integration.peers.eureka import EurekaServer
from integration.peers.ports import free_ports
from meshfed.adapters.eureka.testing import EurekaRest, instance_doc, running_adapter, wait_for

GATEWAY = "127.0.93.91"
USER, PASSWORD = "mesh", "s3cret-Passw0rd"
WAIT = 20.0


def gateway_bootstrap(pki: KubePki, admin: int, listen: int, eureka: EurekaServer) -> dict:
    sha = base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
    tls = {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
        "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(pki.server_cert)},
                    "private_key": {"filename": str(pki.server_key)},
                }
            ],
            "validation_context": {"trusted_ca": {"filename": str(pki.ca_cert)}},
        },
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
        "v3.HttpConnectionManager",
        "stat_prefix": "eureka_gateway",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "eureka",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "eureka"}}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.basic_auth",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3."
                    "BasicAuth",
                    "users": {"inline_string": f"{USER}:{{SHA}}{sha}"},
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": GATEWAY, "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "eureka_tls",
                    "address": {"socket_address": {"address": GATEWAY, "port_value": listen}},
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": tls,
                            },
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ],
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "eureka",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "eureka",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": eureka.host,
                                                    "port_value": eureka.port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


async def test_tls_client_certificate_and_basic_auth(
    tmp_path: Path,
    eureka_server: EurekaServer,
    envoy_factory: Callable[..., EnvoyProxy],
) -> None:
    pki = make_pki(tmp_path / "pki", GATEWAY)
    admin, listen = free_ports(2, GATEWAY)
    envoy_factory(gateway_bootstrap(pki, admin, listen, eureka_server))
    secure_url = f"https://{GATEWAY}:{listen}/eureka/"
    tls = {
        "caFile": str(pki.ca_cert),
        "certFile": str(pki.admin_cert),
        "keyFile": str(pki.admin_key),
    }
    base: dict[str, Any] = {"fetchInterval": "200ms", "fullFetchInterval": "2s", "timeout": "2s"}
    app = f"vault-{uuid.uuid4().hex[:8]}"
    async with EurekaRest(eureka_server.eureka_url) as rest:
        assert await rest.register(instance_doc(app, "v1", "127.0.93.92", 8080)) == 204
        try:
            async with (
                running_adapter(
                    {
                        **base,
                        "servers": [secure_url],
                        "tls": tls,
                        "auth": {"username": USER, "password": PASSWORD},
                    },
                    name="auth-block",
                ) as (agg_ok, ok),
                running_adapter(
                    # Spring style: credentials inside the URL.
                    {
                        **base,
                        "servers": [f"https://{USER}:{PASSWORD}@{GATEWAY}:{listen}/eureka"],
                        "tls": tls,
                    },
                    name="auth-in-url",
                ) as (agg_url, in_url),
                running_adapter(
                    {
                        **base,
                        "servers": [secure_url],
                        "tls": tls,
                        "auth": {"username": USER, "password": "wrong"},
                    },
                    name="bad-password",
                ) as (_, bad_password),
                running_adapter(
                    # The system trust store does not know the test CA.
                    {
                        **base,
                        "servers": [secure_url],
                        "auth": {"username": USER, "password": PASSWORD},
                    },
                    name="untrusted",
                ) as (_, untrusted),
            ):
                for aggregate in (agg_ok, agg_url):
                    await wait_for(
                        lambda a=aggregate: (
                            {e.address for e in a.endpoints(app)} == {"127.0.93.92"}
                        ),
                        WAIT,
                        "the instance through the TLS + basic-auth gateway",
                    )
                assert ok.member.synced and in_url.member.synced
                info = in_url.describe()
                assert info["auth"] and info["tls"]
                assert PASSWORD not in repr(info)
                assert info["servers"] == [secure_url]

                await wait_for(lambda: bad_password.member.degraded is not None, WAIT, "401")
                assert "HTTP 401" in bad_password.member.degraded
                assert not bad_password.member.synced
                await wait_for(lambda: untrusted.member.degraded is not None, WAIT, "TLS failure")
                assert "certificate" in untrusted.member.degraded.lower()
                assert not untrusted.member.synced
        finally:
            await rest.cancel(app, "v1")
