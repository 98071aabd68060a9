"""Property tests: normalisation is idempotent, merging is independent of report order."""

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.registry import AggregateRegistry, Endpoint, Labels, Port, Protocol, Service
from meshfed.registry.model import workload_name, workload_namespace

names = st.text(alphabet="abcdefgh-", min_size=1, max_size=6)
label_maps = st.dictionaries(names, names, max_size=4)
ports = st.builds(Port, st.integers(1, 65535), names, st.sampled_from(list(Protocol)))
hosts = st.sampled_from(["a.svc", "b.svc", "c.svc"])
endpoints = st.builds(
    Endpoint,
    st.sampled_from([f"127.0.0.{i}" for i in range(1, 6)]),
    st.dictionaries(names, st.integers(1, 65535), max_size=2),
    label_maps,
    healthy=st.booleans(),
    identity=st.sampled_from(["", "spiffe://cluster.local/ns/n1/sa/s", "not-spiffe"]),
    workload=st.sampled_from(["", "w1", "w2"]),
    hostname=st.sampled_from(["", "w1.a.svc", "h.b.svc"]),
)
services = st.builds(
    Service,
    hosts,
    namespace=st.sampled_from(["default", "n1"]),
    ports=st.lists(ports, max_size=3, unique_by=lambda p: (p.name, p.number)),
)
member_states = st.lists(
    st.tuples(st.lists(services, max_size=3), st.lists(st.tuples(hosts, endpoints), max_size=4)),
    min_size=1,
    max_size=3,
)


@given(label_maps)
def test_labels_normalisation_is_idempotent(raw):
    once = Labels(raw)
    assert Labels(once) == once
    assert Labels(dict(once)) == once
    assert Labels(reversed(list(once.items()))) == once


@given(st.lists(ports, max_size=5))
def test_service_normalisation_is_idempotent(port_list):
    once = Service("x.svc", ports=port_list)
    assert Service("x.svc", ports=once.ports) == once
    assert Service("x.svc", ports=list(reversed(port_list))) == once


def _apply(order, states):
    agg = AggregateRegistry()
    members = [agg.add_member(f"r{i}") for i in range(len(states))]
    for i in order:
        svcs, eps = states[i]
        by_host = {}
        for host, ep in eps:
            by_host.setdefault(host, []).append(ep)
        # Last writer per host within one member, as an adapter would report it.
        unique = {s.hostname: s for s in svcs}
        members[i].replace(unique.values(), by_host)
    return agg


@settings(max_examples=60, deadline=None)
@given(member_states)
def test_merge_is_independent_of_report_order(states):
    views = set()
    for order in itertools.permutations(range(len(states))):
        agg = _apply(order, states)
        merged = [(h, agg.service(h), agg.endpoints(h)) for h in sorted(agg.services())]
        views.add((tuple(merged), agg.conflicts()))
    assert len(views) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(member_states, min_size=1, max_size=4))
def test_address_and_workload_indexes_equal_a_scan_of_the_merged_view(history):
    # Apply successive states to the same members: the incrementally kept index must always
    # answer what a full scan of the merged view answers.
    agg = AggregateRegistry()
    members = [agg.add_member(f"r{i}") for i in range(3)]
    for states in history:
        for member, (svcs, eps) in zip(members, states, strict=False):
            by_host: dict = {}
            for host, ep in eps:
                by_host.setdefault(host, []).append(ep)
            member.replace({s.hostname: s for s in svcs}.values(), by_host)
        for ip in [f"127.0.0.{i}" for i in range(1, 6)]:
            scan = tuple(
                (agg.service(h), e)
                for h in sorted(agg.services())
                for e in agg.endpoints(h)
                if e.address == ip
            )
            assert agg.at_address(ip) == scan
            assert agg.hosts_at(ip) == tuple(sorted({s.hostname for s, _ in scan}))
        names = ["w1", "w2", "h"] + [f"127.0.0.{i}" for i in range(1, 6)]
        for name, namespace in itertools.product(names, ["default", "n1"]):
            scan = tuple(
                (agg.service(h), e)
                for h in sorted(agg.services())
                for e in agg.endpoints(h)
                if workload_name(e) == name and workload_namespace(agg.service(h), e) == namespace
            )
            assert agg.of_workload(name, namespace) == scan
