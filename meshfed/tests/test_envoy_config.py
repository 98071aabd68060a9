"""The proxy-config tables cut from Envoy admin documents: names parsed, filters applied."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshfed import envoy_config as E

API = "api.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"


def dump(**sections: dict[str, Any]) -> dict[str, Any]:
    return {"configs": [{"@type": E.DUMP_TYPES[k], **v} for k, v in sections.items()]}


CLUSTERS = dump(
    cluster={
        "static_clusters": [{"cluster": {"name": "xds-grpc", "type": "STATIC"}}],
        "dynamic_active_clusters": [
            {"cluster": {"name": f"outbound|80||{API}", "type": "EDS"}},
            {"cluster": {"name": f"outbound|80|v2|{API}", "eds_cluster_config": {}}},
            {"cluster": {"name": f"inbound|9080||{WEB}", "type": "STATIC"}},
        ],
        "dynamic_warming_clusters": [{"cluster": {"name": f"outbound|443||{WEB}"}}],
    }
)


def test_cluster_names_are_split_and_filtered() -> None:
    assert E.parse_cluster_name(f"outbound|80|v2|{API}") == ("outbound", 80, "v2", API)
    assert E.parse_cluster_name("xds-grpc") == ("", 0, "", "xds-grpc")
    assert E.parse_cluster_name("sideways|80||x") == ("", 0, "", "sideways|80||x")
    rows = E.cluster_rows(CLUSTERS)
    assert ["xds-grpc", "-", "-", "-", "STATIC", "STATIC"] in rows
    assert [API, "80", "v2", "outbound", "EDS", "DYNAMIC"] in rows
    assert [WEB, "443", "-", "outbound", "-", "WARMING"] in rows
    assert len(rows) == 5
    inbound = E.cluster_rows(CLUSTERS, E.Filters(direction="inbound"))
    assert [r[0] for r in inbound] == [WEB]
    # a short name matches its FQDN, not another name it prefixes
    assert {r[2] for r in E.cluster_rows(CLUSTERS, E.Filters(fqdn="api"))} == {"-", "v2"}
    assert E.cluster_rows(CLUSTERS, E.Filters(fqdn="ap")) == []
    assert [r[1] for r in E.cluster_rows(CLUSTERS, E.Filters(port=443))] == ["443"]
    assert [r[2] for r in E.cluster_rows(CLUSTERS, E.Filters(subset="v2"))] == ["v2"]


LISTENERS = dump(
    listener={
        "dynamic_listeners": [
            {
                "active_state": {
                    "listener": {
                        "name": "outbound_http",
                        "address": {
                            "socket_address": {"address": "127.0.0.2", "port_value": 15001}
                        },
                        "traffic_direction": "OUTBOUND",
                        "filter_chains": [
                            {
                                "filters": [
                                    {
                                        "typed_config": {
                                            "rds": {"route_config_name": "outbound_http"}
                                        }
                                    }
                                ]
                            }
                        ],
                    }
                }
            },
            {
                "warming_state": {
                    "listener": {
                        "name": "inbound|127.0.0.2:9080",
                        "address": {"socket_address": {"address": "127.0.0.2", "port_value": 9080}},
                        "filter_chains": [
                            {
                                "filter_chain_match": {"transport_protocol": "tls"},
                                "filters": [{"typed_config": {"cluster": f"inbound|9080||{WEB}"}}],
                            },
                            {"filters": [{"typed_config": {"cluster": f"inbound|9080||{WEB}"}}]},
                        ],
                    }
                }
            },
            {"name": "removed", "error_state": {}},
        ]
    }
)


def test_listener_rows_one_per_filter_chain_with_filters() -> None:
    rows = E.listener_rows(LISTENERS)
    assert rows[0] == ["outbound_http", "127.0.0.2", "15001", "outbound", "ALL",
                       "Route: outbound_http"]  # fmt: skip
    assert rows[1][3:] == ["inbound", "transport=tls", f"Cluster: inbound|9080||{WEB}"]
    assert len(rows) == 3
    assert {r[0] for r in E.listener_rows(LISTENERS, E.Filters(port=9080))} == {
        "inbound|127.0.0.2:9080"
    }
    assert {r[0] for r in E.listener_rows(LISTENERS, E.Filters(direction="outbound"))} == {
        "outbound_http"
    }


ROUTES = dump(
    route={
        "dynamic_route_configs": [
            {
                "route_config": {
                    "name": "outbound_http",
                    "virtual_hosts": [
                        {
                            "name": f"{API}:80",
                            "domains": [API, f"{API}:80", "api", "api:80"],
                            "routes": [
                                {
                                    "match": {"prefix": "/", "headers": [{"name": "end-user"}]},
                                    "route": {
                                        "weighted_clusters": {
                                            "clusters": [
                                                {"name": f"outbound|80|v1|{API}", "weight": 90},
                                                {"name": f"outbound|80|v2|{API}", "weight": 10},
                                            ]
                                        }
                                    },
                                },
                                {"match": {"path": "/x"}, "direct_response": {"status": 404}},
                            ],
                        },
                        {"name": "web:9080", "domains": [f"{WEB}:9080"], "routes": [
                            {"match": {"safe_regex": {"regex": "/a.*"}},
                             "route": {"cluster": f"outbound|9080||{WEB}"}}]},
                    ],
                }
            }
        ]
    }
)  # fmt: skip


def test_route_rows_show_matches_and_destinations() -> None:
    rows = E.route_rows(ROUTES)
    assert rows[0][2] == f"{API}, {API}:80 +2 more"
    assert rows[0][3] == "/* end-user"
    assert rows[0][4] == f"outbound|80|v1|{API} (90), outbound|80|v2|{API} (10)"
    assert rows[1][3:] == ["path=/x", "direct 404"]
    assert rows[2][3:] == ["regex=/a.*", f"outbound|9080||{WEB}"]
    assert [r[1] for r in E.route_rows(ROUTES, E.Filters(fqdn="web"))] == ["web:9080"]
    assert [r[1] for r in E.route_rows(ROUTES, E.Filters(port=80))] == [f"{API}:80"] * 2


def test_endpoint_rows_from_cluster_statuses() -> None:
    statuses = {
        "cluster_statuses": [
            {
                "name": f"outbound|80||{API}",
                "host_statuses": [
                    {"address": {"socket_address": {"address": "127.0.0.9", "port_value": 9080}},
                     "health_status": {"eds_health_status": "HEALTHY"}},
                    {"address": {"socket_address": {"address": "127.0.0.8", "port_value": 9080}},
                     "health_status": {"eds_health_status": "HEALTHY",
                                       "failed_outlier_check": True}},
                    {"address": {"socket_address": {"address": "127.0.0.7", "port_value": 9080}},
                     "health_status": {"failed_active_health_check": True}},
                ],
            },
            {"name": "sds", "host_statuses": [{"address": {"pipe": {"path": "/run/sds"}}}]},
        ]
    }  # fmt: skip
    rows = E.endpoint_rows(statuses)
    assert rows[0] == ["127.0.0.7:9080", "UNHEALTHY", "OK", f"outbound|80||{API}"]
    assert rows[1][:3] == ["127.0.0.8:9080", "HEALTHY", "FAILED"]
    assert rows[3] == ["unix:///run/sds", "HEALTHY", "OK", "sds"]
    assert len(E.endpoint_rows(statuses, E.Filters(fqdn=API))) == 3
    assert E.endpoint_rows(statuses, E.Filters(direction="inbound")) == []


def certificate(days: int) -> tuple[bytes, int]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), cert.serial_number


def test_secret_rows_read_the_certificates() -> None:
    good, serial = certificate(1)
    expired, _ = certificate(-1)
    b64 = base64.b64encode
    secrets = dump(
        secret={
            "dynamic_active_secrets": [
                {"name": "default", "secret": {"tls_certificate": {
                    "certificate_chain": {"inline_bytes": b64(good).decode()}}}},
                {"name": "ROOTCA", "secret": {"validation_context": {
                    "trusted_ca": {"inline_bytes": b64(expired).decode()}}}},
            ],
            "dynamic_warming_secrets": [{"name": "late", "secret": {}}],
        }
    )  # fmt: skip
    rows = E.secret_rows(secrets)
    assert rows[0][:5] == ["default", "Cert Chain", "ACTIVE", "true", format(serial, "x")]
    assert rows[1][:4] == ["ROOTCA", "CA", "ACTIVE", "false"]
    assert rows[2] == ["late", "-", "WARMING", "-", "-", "-"]
    bad = dump(secret={"dynamic_active_secrets": [{"name": "x", "secret": {"tls_certificate": {
        "certificate_chain": {"inline_bytes": b64(b"not a pem").decode()}}}}]})  # fmt: skip
    assert E.secret_rows(bad)[0][3] == "false"


def test_bootstrap_rows_and_raw_resources() -> None:
    boot = dump(
        bootstrap={
            "bootstrap": {
                "node": {"id": "sidecar~127.0.0.2~web.default~x", "cluster": "web"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.2",
                                                         "port_value": 15000}}},
                "dynamic_resources": {"ads_config": {"grpc_services": [
                    {"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
                "static_resources": {"clusters": [{"name": "xds-grpc"}]},
            }
        }
    )  # fmt: skip
    rows = dict((r[0], r[1]) for r in E.bootstrap_rows(boot) if r[0] != "static cluster")
    assert rows == {"node id": "sidecar~127.0.0.2~web.default~x", "cluster": "web",
                    "admin": "127.0.0.2:15000", "ADS cluster": "xds-grpc"}  # fmt: skip
    assert E.bootstrap(boot)["node"]["cluster"] == "web"
    assert E.bootstrap({}) == {} and E.cluster_rows({}) == []
    assert next(c["name"] for c in E.resources(CLUSTERS, "cluster")) == "xds-grpc"
    assert len(E.resources(LISTENERS, "listener")) == 2
