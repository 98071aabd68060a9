"""Good documents of every kind meshfed reads, and the hostile values thrown at their fields.

Both the property tests (:mod:`integration.hostile.test_properties`) and the committed corpus
(:mod:`integration.hostile.generate`) start from these seeds: a document that validates, whose
fields are then replaced, removed or joined by unknown ones. Keeping the seeds in one place means
the corpus and the properties cover the same kinds and the same fields.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from meshfed.core.resources import ConfigError

ROUTING = "config.istio.io/v1alpha2"
NETWORKING = "networking.meshfed.io/v1alpha1"

SEEDS: dict[str, dict[str, Any]] = {
    "ServiceEntry": {
        "apiVersion": NETWORKING,
        "kind": "ServiceEntry",
        "metadata": {"name": "ledger", "namespace": "default", "labels": {"team": "pay"}},
        "spec": {
            "hosts": ["ledger.default.svc.cluster.local"],
            "addresses": ["10.9.0.1"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP", "targetPort": 9080}],
            "endpoints": [
                {
                    "address": "127.0.0.21",
                    "ports": {"http": 9080},
                    "labels": {"version": "v1"},
                    "serviceAccount": "ledger",
                    "locality": "us-east/zone-a",
                    "weight": 2,
                }
            ],
        },
    },
    "WorkloadEntry": {
        "apiVersion": NETWORKING,
        "kind": "WorkloadEntry",
        "metadata": {"name": "ledger-vm", "namespace": "default"},
        "spec": {
            "address": "127.0.0.22",
            "ports": {"http": 9080},
            "labels": {"app": "ledger", "version": "v2"},
            "serviceAccount": "ledger",
            "locality": "us-east/zone-b/rack-1",
            "weight": 1,
        },
    },
    "RouteRule": {
        "apiVersion": ROUTING,
        "kind": "RouteRule",
        "metadata": {"name": "reviews-jason", "namespace": "default"},
        "spec": {
            "destination": {"name": "reviews"},
            "precedence": 2,
            "match": {
                "source": {"name": "productpage", "labels": {"version": "v1"}},
                "request": {
                    "headers": {
                        "cookie": {"regex": "^(.*?;)?(user=jason)(;.*)?$"},
                        "uri": {"prefix": "/api"},
                    }
                },
            },
            "route": [
                {"labels": {"version": "v1"}, "weight": 90},
                {"labels": {"version": "v2"}, "weight": 10},
            ],
            "httpReqTimeout": {"simpleTimeout": {"timeout": "1.5s"}},
            "httpReqRetries": {"simpleRetry": {"attempts": 3, "perTryTimeout": "0.5s"}},
            "httpFault": {
                "delay": {"percent": 10, "fixedDelay": "2s"},
                "abort": {"percent": 1, "httpStatus": 503},
            },
            "rewrite": {"uri": "/v2/api", "authority": "reviews.internal"},
            "mirror": {"name": "reviews", "labels": {"version": "v3"}},
            "appendHeaders": {"x-mesh": "meshfed"},
            "websocketUpgrade": True,
            "corsPolicy": {
                "allowOrigin": ["https://app.example"],
                "allowMethods": ["GET", "PUT"],
                "allowHeaders": ["x-custom"],
                "maxAge": "1m",
                "allowCredentials": True,
            },
        },
    },
    "TcpRouteRule": {
        "apiVersion": ROUTING,
        "kind": "RouteRule",
        "metadata": {"name": "mongo-slow", "namespace": "default"},
        "spec": {
            "destination": {"name": "mongodb"},
            "match": {"tcp": {"sourceSubnet": ["10.0.0.0/8"], "destinationSubnet": ["10.9.0.1"]}},
            "l4Fault": {
                "throttle": {"downstreamLimitBps": 8000},
                "terminate": {"terminateAfterPeriod": "30s"},
            },
        },
    },
    "DestinationPolicy": {
        "apiVersion": ROUTING,
        "kind": "DestinationPolicy",
        "metadata": {"name": "reviews-cb", "namespace": "default"},
        "spec": {
            "destination": {"name": "reviews", "labels": {"version": "v1"}},
            "loadBalancing": {"name": "LEAST_CONN"},
            "connectTimeout": "1s",
            "circuitBreaker": {
                "simpleCb": {
                    "maxConnections": 1,
                    "httpMaxPendingRequests": 1,
                    "httpMaxRequests": 1,
                    "httpMaxRequestsPerConnection": 10,
                    "httpMaxRetries": 3,
                    "httpConsecutiveErrors": 5,
                    "httpDetectionInterval": "10s",
                    "sleepWindow": "30s",
                    "httpMaxEjectionPercent": 50,
                }
            },
            "healthCheck": {
                "path": "/healthz",
                "interval": "5s",
                "timeout": "1s",
                "unhealthyThreshold": 2,
                "healthyThreshold": 1,
            },
        },
    },
    "EgressRule": {
        "apiVersion": ROUTING,
        "kind": "EgressRule",
        "metadata": {"name": "apis", "namespace": "default"},
        "spec": {
            "destination": {"service": "*.example.com"},
            "ports": [{"port": 80, "protocol": "http"}, {"port": 443, "protocol": "https"}],
        },
    },
    "Ingress": {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "default"},
        "spec": {
            "ingressClassName": "meshfed",
            "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
            "rules": [
                {
                    "host": "shop.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/cart",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "cart", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    },
    "Gateway": {
        "apiVersion": "config.meshfed.io/v1alpha1",
        "kind": "Gateway",
        "metadata": {"name": "front", "namespace": "default"},
        "spec": {
            "port": 8080,
            "rules": [
                {
                    "host": "grpc.example.com",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "grpc": True,
                                "backend": {"serviceName": "greeter", "servicePort": 9090},
                            }
                        ]
                    },
                }
            ],
            "tls": [{"hosts": ["grpc.example.com"], "secretName": "front-tls"}],
        },
    },
    "MeshConfig": {
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "mesh"},
        "spec": {
            "trustDomain": "cluster.local",
            "systemNamespace": "meshfed-system",
            "listen": {"monitoring": "127.0.0.1:0", "discovery": "127.0.0.1:0"},
            "registries": [{"name": "files", "kind": "static", "paths": ["."]}],
            "configPaths": ["."],
            "pilot": {
                "debounceQuiet": 0.1,
                "debounceMax": 1,
                "egressDnsResolvers": ["127.0.0.53:5353", "127.0.0.54"],
                "ingressClass": "meshfed",
                "ingressControllerMode": "STRICT",
                "mtls": {"mode": "PERMISSIVE", "destinations": {"ratings.default": "STRICT"}},
            },
        },
    },
    "VirtualService": {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "hosts": ["reviews"],
            "gateways": ["mesh"],
            "http": [
                {
                    "name": "jason",
                    "match": [
                        {
                            "headers": {"end-user": {"exact": "jason"}},
                            "uri": {"prefix": "/api"},
                            "method": {"regex": "GET|PUT"},
                        }
                    ],
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10},
                    ],
                    "timeout": "1.5s",
                    "retries": {"attempts": 3, "perTryTimeout": "0.5s"},
                    "fault": {
                        "delay": {"percentage": {"value": 10.0}, "fixedDelay": "2s"},
                        "abort": {"percentage": {"value": 1.0}, "httpStatus": 503},
                    },
                    "rewrite": {"uri": "/v2/api", "authority": "reviews.internal"},
                    "mirror": {"host": "reviews", "subset": "v3"},
                    "headers": {"request": {"add": {"x-mesh": "meshfed"}}},
                    "corsPolicy": {
                        "allowOrigins": [{"exact": "https://app.example"}],
                        "allowMethods": ["GET", "PUT"],
                        "allowHeaders": ["x-custom"],
                        "maxAge": "1m",
                        "allowCredentials": True,
                    },
                },
                {"route": [{"destination": {"host": "productpage"}}]},
            ],
        },
    },
    "DestinationRule": {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "host": "reviews.default.svc.cluster.local",
            "trafficPolicy": {
                "loadBalancer": {"simple": "LEAST_REQUEST"},
                "connectionPool": {
                    "tcp": {"maxConnections": 10, "connectTimeout": "1s"},
                    "http": {"http1MaxPendingRequests": 5, "maxRetries": 3},
                },
                "outlierDetection": {
                    "consecutive5xxErrors": 5,
                    "interval": "10s",
                    "baseEjectionTime": "30s",
                    "maxEjectionPercent": 50,
                },
            },
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                },
                {"name": "v3", "labels": {"version": "v3"}},
            ],
        },
    },
    "PeerAuthentication": {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}},
        },
    },
    "AuthorizationPolicy": {
        "apiVersion": "security.istio.io/v1beta1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "action": "ALLOW",
            "rules": [
                {
                    "from": [
                        {
                            "source": {
                                "principals": ["cluster.local/ns/default/sa/client"],
                                "namespaces": ["default"],
                                "ipBlocks": ["127.0.0.0/8"],
                            }
                        }
                    ],
                    "to": [
                        {
                            "operation": {
                                "hosts": ["web.default.svc.cluster.local"],
                                "methods": ["GET"],
                                "paths": ["/api/*"],
                                "ports": ["9080"],
                            }
                        }
                    ],
                    "when": [{"key": "request.headers[x-tenant]", "values": ["blue"]}],
                }
            ],
        },
    },
    "Sidecar": {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {
            "workloadSelector": {"labels": {"app": "web"}},
            "egress": [{"hosts": ["./*", "istio-system/*"]}],
        },
    },
    "IstioGateway": {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "Gateway",
        "metadata": {"name": "front", "namespace": "default"},
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                    "hosts": ["shop.example.com", "default/*.web.example.com"],
                    "tls": {"httpsRedirect": True},
                },
                {
                    "port": {"number": 8443, "name": "https", "protocol": "HTTPS"},
                    "hosts": ["./shop.example.com"],
                    "tls": {
                        "mode": "MUTUAL",
                        "credentialName": "shop-cert",
                        "minProtocolVersion": "TLSV1_2",
                    },
                },
                {
                    "port": {"number": 9443, "name": "tls", "protocol": "TLS"},
                    "hosts": ["*/db.example.com"],
                    "tls": {"mode": "PASSTHROUGH"},
                },
            ],
        },
    },
}

# Values no field of any kind should accept as they are, or accept only where they fit; each
# one was seen to crash, hang or slip through a parser, or is what a careless edit produces.
HOSTILE_VALUES: list[Any] = [
    None,
    "",
    " ",
    True,
    False,
    0,
    -1,
    65536,
    70000,
    2**31,
    2**64,
    -(2**63),
    1.5,
    float("nan"),
    float("inf"),
    "²",
    "٩٠٨٠",
    "８０",  # noqa: RUF001 (full-width digits, on purpose)
    "0x50",
    "1e3",
    "a..b",
    "host:80",
    "-bad-",
    "UPPER_case",
    "x\x00y",
    "line\nbreak",
    "a" * 300,
    "b" * 5000,
    "*",
    "*.",
    "999.1.1.1",
    "10.0.0.0/33",
    "::1::",
    "../../etc/passwd",
    "a/b",
    "(?P=n)",
    "(?>a)",
    "a*+",
    "(a",
    "0s",
    "-1s",
    "1e400s",
    "99999999999999h",
    "٥s",  # noqa: RUF001 (an Arabic-Indic digit, on purpose)
    "yes",
    "BOGUS",
    "\u202eevil",
    [],
    [None],
    ["x", 1],
    {},
    {"k": None},
    {"nested": {"deeper": [1, {"x": "y"}]}},
]


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a document (mapping keys and list indexes), parents before children."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaf_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaf_paths(child, (*prefix, index))


def mutable_paths(kind: str) -> list[tuple[Any, ...]]:
    """The paths a test may change: everything but ``kind`` (a changed kind is another
    kind's document, or one no store reads)."""
    return [p for p in leaf_paths(SEEDS[kind]) if p[0] != "kind"]


def replaced(kind: str, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The seed of ``kind`` with the field at ``path`` set to ``value``."""
    doc = copy.deepcopy(SEEDS[kind])
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


def removed(kind: str, path: tuple[Any, ...]) -> dict[str, Any]:
    doc = copy.deepcopy(SEEDS[kind])
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return doc


def field_name(path: tuple[Any, ...]) -> str:
    """A path as meshfed's errors write it: ``spec.ports[0].number``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def mapping_paths(kind: str) -> list[tuple[Any, ...]]:
    """The paths of mappings in a seed (where an unknown field can be added)."""
    out = []
    for path in leaf_paths(SEEDS[kind]):
        target: Any = SEEDS[kind]
        for step in path:
            target = target[step]
        if isinstance(target, dict):
            out.append(path)
    return out


def added(kind: str, path: tuple[Any, ...], key: str, value: Any) -> dict[str, Any]:
    """The seed with an extra field ``key`` in the mapping at ``path``."""
    doc = copy.deepcopy(SEEDS[kind])
    target: Any = doc
    for step in path:
        target = target[step]
    target.setdefault(key, value)
    return doc


def related(error: ConfigError, field: str) -> bool:
    """The error is about the changed field, a part of it, or the structure holding it."""
    got = error.field
    if not got:
        return True  # a document-level error (bad YAML value, unknown kind...)
    return field.startswith(got) or got.startswith(field) or _same_section(got, field)


def _same_section(a: str, b: str) -> bool:
    # Cross-field rules report on a sibling: a port renamed is missed by the endpoints that
    # name it, a weight changed breaks the sum over the route list, and so on.
    return a.split(".")[:2] == b.split(".")[:2] or a.split("[")[0] == b.split("[")[0]
