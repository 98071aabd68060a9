"""Incremental mapping gives exactly what mapping everything again gives, change after change."""

import random

import attrs

from meshfed.adapters.eureka.mapping import IncrementalMapper, MappingSettings, build_model
from meshfed.adapters.eureka.reconcile import apply_delta, changed_apps, from_instances
from meshfed.adapters.eureka.wire import ADDED, DELETED, MODIFIED, Applications, Instance, PortSpec

SETTINGS = MappingSettings(registry="eureka", hostname_template="{vip}.eureka")
APPS = [f"APP{i}" for i in range(6)]
VIPS = ["a", "b", "c", "a,b", "shared", ""]
STATUSES = ["UP", "UP", "UP", "DOWN", "OUT_OF_SERVICE", "STARTING"]


def random_instance(rng: random.Random, n: int) -> Instance:
    return Instance(
        instance_id=f"i{n}",
        app=rng.choice(APPS),
        ip_addr=rng.choice([f"127.0.9.{n % 7}", f"127.0.8.{n % 5}", "not-an-ip"]),
        vip_address=rng.choice(VIPS),
        status=rng.choice(STATUSES),
        port=PortSpec(8000 + n % 3, rng.random() > 0.1),
        secure_port=PortSpec(9443, rng.random() > 0.7),
        metadata=rng.choice([{}, {"protocol": "grpc"}, {"protocol": "bogus"}, {"zone": "z"}]),
    )


def test_incremental_equals_full_over_random_deltas():
    for seed in range(30):
        rng = random.Random(seed)
        apps = from_instances(random_instance(rng, n) for n in range(rng.randrange(0, 25)))
        mapper = IncrementalMapper(SETTINGS)
        assert mapper.rebuild(apps) == build_model(apps, SETTINGS)
        serial = 1000
        for _ in range(25):
            changes = []
            for _ in range(rng.randrange(1, 4)):
                existing = [i for app in apps.values() for i in app.values()]
                roll = rng.random()
                if existing and roll < 0.3:
                    changes.append(attrs.evolve(rng.choice(existing), action_type=DELETED))
                elif existing and roll < 0.7:
                    # Same identity, new content (status, VIP, ports, address may all move).
                    old = rng.choice(existing)
                    new = random_instance(rng, serial)
                    changes.append(
                        attrs.evolve(
                            new, instance_id=old.instance_id, app=old.app, action_type=MODIFIED
                        )
                    )
                else:
                    changes.append(attrs.evolve(random_instance(rng, serial), action_type=ADDED))
                serial += 1
            outcome = apply_delta(apps, Applications(tuple(changes)))
            assert changed_apps(apps, outcome.apps) == outcome.changed_apps
            apps = outcome.apps
            assert mapper.update(apps, outcome.changed_apps) == build_model(apps, SETTINGS), seed


def test_update_without_changes_is_the_same_model():
    apps = from_instances(
        [
            Instance(
                "x", "A", ip_addr="127.0.0.2", vip_address="a", status="UP", port=PortSpec(80, True)
            )
        ]
    )
    mapper = IncrementalMapper(SETTINGS)
    first = mapper.rebuild(apps)
    assert mapper.update(apps, []) == first
