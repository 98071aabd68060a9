"""Pilot-vs-Envoy comparison used by ``meshfed proxy-status PROXY``."""

from __future__ import annotations

from meshfed.proxy_compare import compare

PILOT = {
    "configs": {
        "cds": [{"name": "c1"}, {"name": "c2"}],
        "eds": [{"name": "c1"}],
        "lds": [{"name": "l1"}, {"name": "bad"}],
        "rds": [{"name": "r1"}],
    }
}
ENVOY = {
    "configs": [
        {
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "static_clusters": [{"cluster": {"name": "xds-grpc"}}],
            "dynamic_active_clusters": [
                {"cluster": {"name": "c1", "type": "EDS", "eds_cluster_config": {}}},
                {"cluster": {"name": "c2"}},  # STATIC, its endpoints inline
            ],
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "dynamic_endpoint_configs": [
                {"endpoint_config": {"cluster_name": "c1"}},
                {"endpoint_config": {"cluster_name": "c2"}},  # no EDS: not Pilot's to send
            ],
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "dynamic_listeners": [
                {"name": "l1", "active_state": {}},
                {"name": "old", "active_state": {}},
                {
                    "error_state": {
                        "failed_configuration": {"name": "bad"},
                        "details": "cannot bind",
                    }
                },
            ],
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "dynamic_route_configs": [{"route_config": {"name": "r1"}}],
        },
    ]
}


def test_compare_reports_missing_extra_and_envoy_errors() -> None:
    diffs = {d.kind: d for d in compare(PILOT, ENVOY)}
    assert diffs["cluster"].in_sync and diffs["endpoint"].in_sync and diffs["route"].in_sync
    listeners = diffs["listener"]
    assert listeners.missing == ("bad",) and listeners.extra == ("old",)
    assert listeners.errors == ("listener bad: cannot bind",)
    assert "missing in Envoy: bad" in str(listeners)
    assert str(diffs["cluster"]) == "Clusters match (2)"
