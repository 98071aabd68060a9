"""Guard for the seed's known issue "periodic 404": under continuous traffic while endpoints
are added and removed (and unrelated services come and go, which re-sends clusters, listeners
and routes), not one request fails with 404 or 503.

Hosts: 127.<run>.83.x. Backends keep running when removed from the registry, as a draining
workload would; the sidecar must stop sending to them without failing requests.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp

from integration.pilot_helpers import addr, endpoint, get, http_service, running_mesh

A_IP = addr(83, 2)
BACKEND_IPS = [addr(83, i) for i in range(3, 7)]
HOST = "b.default.svc.cluster.local"
CHURN_SECONDS = 6.0


async def test_no_404_or_503_during_endpoint_and_service_churn() -> None:
    async with running_mesh(quiet=0.01, max_delay=0.1) as mesh:
        service = http_service(HOST)
        mesh.member.replace([service], {HOST: [endpoint(BACKEND_IPS[0])]})
        for i, ip in enumerate(BACKEND_IPS):
            await mesh.backend(f"b{i}", ip, 9080)
        a = await mesh.sidecar(A_IP, "a")
        url = a.outbound_url + "/"
        statuses: dict[int, int] = {}
        answered: set[str] = set()
        stop = asyncio.Event()

        async def traffic(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                status, body = await get(session, url, HOST)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    answered.add(body)

        rng = random.Random(4)
        changes = 0
        async with aiohttp.ClientSession() as session:
            workers = [asyncio.create_task(traffic(session)) for _ in range(4)]
            try:
                deadline = time.monotonic() + CHURN_SECONDS
                while time.monotonic() < deadline:
                    chosen = rng.sample(BACKEND_IPS, rng.randint(1, len(BACKEND_IPS)))
                    mesh.member.set_endpoints(HOST, [endpoint(ip) for ip in chosen])
                    if changes % 3 == 0:
                        # Other services appearing/disappearing re-send CDS, LDS and RDS.
                        extra = http_service(f"x{changes}.default.svc.cluster.local")
                        mesh.member.put_service(extra, [endpoint(BACKEND_IPS[0])])
                    elif changes % 3 == 1:
                        mesh.member.delete_service(f"x{changes - 1}.default.svc.cluster.local")
                    changes += 1
                    await asyncio.sleep(rng.uniform(0.02, 0.15))
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
        total = sum(statuses.values())
        print(f"{total} requests, {changes} changes, statuses {statuses}")
        assert total > 200, f"too little traffic to mean anything: {statuses}"
        assert set(statuses) == {200}, f"failed requests during {changes} changes: {statuses}"
        assert len(answered) >= 3, answered
        assert mesh.pilot.pushes >= 10
