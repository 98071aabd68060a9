"""The pure injection: selection, what is added, annotations, idempotence, hostile pods."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.injection import annotations as A
from meshfed.injection.admission import BadReview, parse_request, review
from meshfed.injection.inject import InjectionError, inject_pod
from meshfed.injection.iptables import Interception, rules
from meshfed.injection.patch import apply, diff
from meshfed.injection.template import TemplateError, default_template, parse_template
from meshfed.injection.workloads import TEMPLATE_PATHS, inject_documents, inject_object

LABELLED = {"istio-injection": "enabled"}
TEMPLATE = default_template()


def pod(**meta: Any) -> dict[str, Any]:
    spec = meta.pop("spec", None) or {
        "serviceAccountName": "web",
        "containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", **meta}, "spec": spec}


def sidecar(p: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in p["spec"]["containers"] if c["name"] == "meshfed-proxy")


def arg(container: dict[str, Any], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in container["args"] if a.startswith(flag + "="))


def test_labelled_namespace_gets_sidecar_init_container_volumes_and_status() -> None:
    original = pod()
    out = inject_pod(original, TEMPLATE, "shop", LABELLED)
    assert out.injected and out.reason == "namespace label istio-injection=enabled"
    assert original == pod()  # the input is not modified
    names = [c["name"] for c in out.pod["spec"]["containers"]]
    assert names == ["app", "meshfed-proxy"]
    assert [c["name"] for c in out.pod["spec"]["initContainers"]] == ["meshfed-init"]
    assert [v["name"] for v in out.pod["spec"]["volumes"]] == ["meshfed-token", "meshfed-ca-root"]
    proxy = sidecar(out.pod)
    assert proxy["command"] == ["meshfed", "proxy"]
    assert arg(proxy, "--identity") == "spiffe://cluster.local/ns/shop/sa/web"
    assert arg(proxy, "--app-ports") == "8080:8080"
    assert arg(proxy, "--interception") == "redirect"
    assert proxy["securityContext"]["runAsUser"] == 1337  # typed from the value
    token = out.pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "meshfed-ca"
    status = json.loads(out.pod["metadata"]["annotations"][A.STATUS])
    assert status["containers"] == ["meshfed-proxy"]
    assert status["initContainers"] == ["meshfed-init"]
    assert status["version"] == "meshfed-default-1" and status["template"] == TEMPLATE.digest
    assert out.pod["metadata"]["labels"]["security.meshfed.io/tlsMode"] == "mtls"


@pytest.mark.parametrize(
    ("ns_labels", "meta", "expected"),
    [
        ({}, {}, False),
        ({"istio-injection": "enabled"}, {}, True),
        ({"meshfed.io/injection": "enabled"}, {}, True),
        ({"istio-injection": "enabled"}, {"annotations": {A.INJECT: "false"}}, False),
        ({"istio-injection": "enabled"}, {"labels": {A.INJECT: "false"}}, False),
        ({}, {"annotations": {A.INJECT: "true"}}, True),
        ({}, {"labels": {A.INJECT: "true"}}, True),
        ({"istio-injection": "disabled"}, {"annotations": {A.INJECT: "true"}}, False),
        ({"istio-injection": "enabled"}, {"annotations": {A.INJECT: "maybe"}}, True),
        ({"istio-injection": "other"}, {}, False),
    ],
)
def test_selection(ns_labels: dict[str, str], meta: dict[str, Any], expected: bool) -> None:
    assert inject_pod(pod(**meta), TEMPLATE, "shop", ns_labels).injected is expected


def test_host_network_and_injected_pods_are_left_alone() -> None:
    host = pod(spec={"hostNetwork": True, "containers": [{"name": "a", "image": "x"}]})
    out = inject_pod(host, TEMPLATE, "shop", LABELLED)
    assert (out.injected, out.reason, out.pod) == (False, "host network", host)
    once = inject_pod(pod(), TEMPLATE, "shop", LABELLED).pod
    twice = inject_pod(once, TEMPLATE, "shop", LABELLED)
    assert (twice.injected, twice.reason, twice.pod) == (False, "already injected", once)
    # A sidecar container of the same name without the annotation (hand-made) is not doubled.
    hand = copy.deepcopy(once)
    del hand["metadata"]["annotations"][A.STATUS]
    assert inject_pod(hand, TEMPLATE, "shop", LABELLED).pod == hand


def test_traffic_annotations_reach_the_init_container_and_the_proxy() -> None:
    p = pod(
        annotations={
            A.INCLUDE_OUTBOUND_IP_RANGES: "10.96.0.0/12, 10.0.0.1",
            A.EXCLUDE_OUTBOUND_IP_RANGES: "10.96.0.10/32",
            A.EXCLUDE_INBOUND_PORTS: "9090",
            A.EXCLUDE_OUTBOUND_PORTS: "5432,6379",
        },
        spec={
            "containers": [
                {"name": "app", "ports": [{"containerPort": 8080}, {"containerPort": 9090}]},
                {"name": "dns", "ports": [{"containerPort": 53, "protocol": "UDP"}]},
            ]
        },
    )
    out = inject_pod(p, TEMPLATE, "shop", LABELLED).pod
    init = out["spec"]["initContainers"][0]
    assert arg(init, "--include-outbound-ip-ranges") == "10.96.0.0/12,10.0.0.1/32"
    assert arg(init, "--exclude-outbound-ip-ranges") == "10.96.0.10/32"
    assert arg(init, "--exclude-inbound-ports") == "9090,15090,15021"
    assert arg(init, "--exclude-outbound-ports") == "5432,6379"
    # 9090 excluded, UDP never intercepted; the sidecar's service account defaults to default.
    assert arg(sidecar(out), "--app-ports") == "8080:8080"
    assert arg(sidecar(out), "--identity").endswith("/ns/shop/sa/default")
    only = pod(annotations={A.INCLUDE_INBOUND_PORTS: "8080"})
    assert (
        arg(
            inject_pod(only, TEMPLATE, "s", LABELLED).pod["spec"]["initContainers"][0],
            "--include-inbound-ports",
        )
        == "8080"
    )


def test_interception_none_has_no_init_container() -> None:
    out = inject_pod(pod(annotations={A.INTERCEPTION_MODE: "NONE"}), TEMPLATE, "s", LABELLED).pod
    assert "initContainers" not in out["spec"]
    assert arg(sidecar(out), "--interception") == "none"
    assert json.loads(out["metadata"]["annotations"][A.STATUS])["initContainers"] == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (A.INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/33", "CIDRs"),
        (A.EXCLUDE_INBOUND_PORTS, "80,http", "ports 1..65535"),
        (A.EXCLUDE_OUTBOUND_PORTS, "70000", "ports 1..65535"),
        (A.EXCLUDE_OUTBOUND_IP_RANGES, "*", "CIDRs"),
        (A.INTERCEPTION_MODE, "TPROXY", "REDIRECT or NONE"),
    ],
)
def test_bad_annotations_are_named(key: str, value: str, expected: str) -> None:
    with pytest.raises(InjectionError) as err:
        inject_pod(pod(annotations={key: value}), TEMPLATE, "shop", LABELLED, source="web.yaml")
    (error,) = err.value.errors
    assert (error.file, error.obj, error.field) == (
        "web.yaml",
        "Pod web",
        f"metadata.annotations[{key}]",
    )
    assert expected in error.message


def test_reserved_names_are_refused() -> None:
    p = pod(spec={"containers": [{"name": "a"}], "volumes": [{"name": "meshfed-token"}]})
    with pytest.raises(InjectionError, match=r"spec\.volumes: 'meshfed-token' is the name"):
        inject_pod(p, TEMPLATE, "shop", LABELLED)


def test_template_errors_name_the_field() -> None:
    with pytest.raises(TemplateError) as err:
        parse_template(
            "version: v\ncontainers:\n- name: p\n  image: '{{imag}}'\nextra: 1\n", "configmap x"
        )
    text = str(err.value)
    assert (
        "configmap x: injection template: containers[0].image: placeholder {{imag}} has no value"
        in text
    )
    assert "extra: unknown field" in text
    with pytest.raises(TemplateError, match="expected at least one container"):
        parse_template("version: v\n", "cm")
    with pytest.raises(TemplateError, match="expected one YAML mapping"):
        parse_template("- 1\n", "cm")


def test_a_template_from_config_changes_what_is_injected() -> None:
    custom = parse_template(
        "version: custom-2\nvalues: {image: my/proxy:9}\n"
        "containers:\n- name: side\n  image: '{{image}}'\n  args: ['{{namespace}}/{{appPorts}}']\n",
        "cm",
    )
    out = inject_pod(pod(), custom, "shop", LABELLED).pod
    assert out["spec"]["containers"][1] == {
        "name": "side",
        "image": "my/proxy:9",
        "args": ["shop/8080:8080"],
    }
    assert "initContainers" not in out["spec"]
    assert json.loads(out["metadata"]["annotations"][A.STATUS])["version"] == "custom-2"


def test_patch_round_trip_without_metadata() -> None:
    bare = {"spec": {"containers": [{"name": "a"}]}}
    out = inject_pod({**bare, "metadata": {}}, TEMPLATE, "shop", LABELLED).pod
    ops = diff(bare, out)
    assert [o["path"] for o in ops][:3] == [
        "/metadata",
        "/metadata/labels",
        "/metadata/annotations",
    ]
    assert apply(bare, ops) == out


def _review(p: Any, namespace: str = "shop", op: str = "CREATE") -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": namespace,
                "operation": op,
                "object": p,
            },
        }
    ).encode()


def test_admission_review_answers_with_a_json_patch() -> None:
    answer = review(parse_request(_review(pod())), TEMPLATE, LABELLED)
    response = answer.body["response"]
    assert answer.body["apiVersion"] == "admission.k8s.io/v1" and response["uid"] == "u-1"
    assert response["allowed"] and response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert apply(pod(), ops) == inject_pod(pod(), TEMPLATE, "shop", LABELLED).pod
    left = review(parse_request(_review(pod())), TEMPLATE, {})
    assert left.body["response"]["allowed"] and "patch" not in left.body["response"]
    update = review(parse_request(_review(pod(), op="UPDATE")), TEMPLATE, LABELLED)
    assert "patch" not in update.body["response"]
    bad = review(
        parse_request(_review(pod(annotations={A.EXCLUDE_INBOUND_PORTS: "x"}))), TEMPLATE, LABELLED
    )
    assert bad.body["response"]["allowed"] is False
    assert "excludeInboundPorts" in bad.body["response"]["status"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{",
        b'{"apiVersion":"v1","kind":"AdmissionReview"}',
        _review(pod())[:-3],
        json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "x", "kind": {"kind": "Service"}, "object": {}},
            }
        ).encode(),
    ],
)
def test_bad_reviews_are_refused_with_a_reason(body: bytes) -> None:
    with pytest.raises(BadReview):
        parse_request(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
field_names = st.sampled_from(
    [
        "metadata",
        "spec",
        "containers",
        "initContainers",
        "volumes",
        "ports",
        "containerPort",
        "name",
        "labels",
        "annotations",
        "hostNetwork",
        "serviceAccountName",
        "protocol",
        A.INJECT,
        A.STATUS,
        A.EXCLUDE_INBOUND_PORTS,
        A.INCLUDE_OUTBOUND_IP_RANGES,
        A.INTERCEPTION_MODE,
    ]
)
pod_like = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=8) | st.just("enabled"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(field_names, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(
    pod_like,
    st.dictionaries(
        st.sampled_from(list(A.NAMESPACE_LABELS)), st.sampled_from(["enabled", "disabled", "x"])
    ),
)
def test_hostile_pods_get_a_clear_error_or_an_answer(p: Any, ns: dict[str, str]) -> None:
    try:
        out = inject_pod(p, TEMPLATE, "shop", ns, source="hostile")
    except InjectionError as exc:
        assert exc.errors and all(e.file == "hostile" for e in exc.errors)
        assert all(e.field or e.message for e in exc.errors)
        return
    again = inject_pod(out.pod, TEMPLATE, "shop", ns)
    assert again.pod == out.pod  # idempotent
    if out.injected:
        assert apply(p, diff(p, out.pod)) == out.pod


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_hostile_admission_bodies_never_raise_anything_else(doc: Any) -> None:
    body = json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": doc}
    )
    try:
        request = parse_request(body.encode())
    except BadReview:
        return
    answer = review(request, TEMPLATE, LABELLED)
    assert answer.body["response"]["uid"] == request.uid


WORKLOADS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Job": "batch/v1",
    "Pod": "v1",
}


def workload(kind: str) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": pod()["spec"]}
    if kind == "Pod":
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
            "spec": template["spec"],
        }
    return {
        "apiVersion": WORKLOADS[kind],
        "kind": kind,
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template},
    }


@pytest.mark.parametrize("kind", sorted(WORKLOADS))
def test_kube_inject_equals_the_webhook_for_each_kind(kind: str) -> None:
    doc = workload(kind)
    offline, outcome = inject_object(doc, TEMPLATE, LABELLED, "default", "web.yaml")
    assert outcome is not None and outcome.injected
    path = TEMPLATE_PATHS[kind]
    pod_template: Any = doc
    offline_pod: Any = offline
    for part in path:
        pod_template, offline_pod = pod_template[part], offline_pod[part]
    answer = review(parse_request(_review(pod_template)), TEMPLATE, LABELLED)
    webhook_pod = apply(
        pod_template, json.loads(base64.b64decode(answer.body["response"]["patch"]))
    )
    assert webhook_pod["spec"] == offline_pod["spec"]
    assert webhook_pod["metadata"] == offline_pod["metadata"]


def test_kube_inject_documents_passes_other_kinds_and_names_bad_ones() -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n---\n" + json.dumps(
        workload("Deployment")
    )
    docs, outcomes = inject_documents(text, TEMPLATE, "in.yaml", LABELLED)
    assert docs[0]["kind"] == "Service" and outcomes[0] is None
    assert outcomes[1] is not None and outcomes[1].injected
    bad = workload("Deployment")
    bad["spec"]["template"]["spec"]["containers"] = "nope"
    with pytest.raises(InjectionError) as err:
        inject_documents(json.dumps(bad), TEMPLATE, "in.yaml", LABELLED)
    assert (
        str(err.value)
        == "in.yaml: Deployment shop/web: spec.template.spec.containers: expected a list"
    )


def test_iptables_rules_follow_the_annotations() -> None:
    got = rules(
        Interception(
            include_outbound_ip_ranges="10.96.0.0/12",
            exclude_inbound_ports="15021",
            exclude_outbound_ports="5432",
        )
    )
    text = [" ".join(r) for r in got]
    assert "-t nat -A MESHFED_OUTPUT -m owner --uid-owner 1337 -j RETURN" in text
    assert "-t nat -A MESHFED_OUTPUT -d 10.96.0.0/12 -j MESHFED_REDIRECT" in text
    assert "-t nat -A MESHFED_INBOUND -p tcp --dport 15021 -j RETURN" in text
    assert "-t nat -A MESHFED_OUTPUT -p tcp --dport 5432 -j RETURN" in text
    assert "-t nat -A MESHFED_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in text
    assert not any(
        "OUTPUT -p tcp -j MESHFED_OUTPUT" in t
        for t in (" ".join(r) for r in rules(Interception(include_outbound_ip_ranges="")))
    )
    with pytest.raises(ValueError, match="--exclude-inbound-ports: expected"):
        rules(Interception(exclude_inbound_ports="80;rm -rf"))
