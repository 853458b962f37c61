"""`make bench`: call-lifecycle throughput and latency on a local stack.

Runs the same 1:1 lifecycle (start → accept → end) through REST via Envoy and through
gRPC straight to the calls service, in one run, and reports both and their ratio,
so the figures compare like with like on whatever machine runs it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import grpc
import httpx
from sendsar.calls.v1 import calls_pb2 as pb
from sendsar.calls.v1 import calls_pb2_grpc as pb_grpc

from tests.conftest import Tenant, create_tenant
from tests.stack import Stack, new_workdir

CYCLES = 300
CONCURRENCY = 16


async def run(name: str, cycle: Callable[[int], Awaitable[None]]) -> dict[str, float]:
    latencies: list[float] = []
    queue = list(range(CYCLES))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            await cycle(i)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    result = {
        "cycles_per_s": CYCLES / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }
    print(
        f"{name:>6}: {result['cycles_per_s']:7.1f} lifecycles/s  p50 {result['p50_ms']:6.1f} ms  "
        f"p99 {result['p99_ms']:6.1f} ms  (start+accept+end, {CONCURRENCY} concurrent)"
    )
    return result


async def main() -> None:
    stack = Stack(workdir=new_workdir())
    try:
        stack.start_all()
        tenant: Tenant = create_tenant(stack, "bench")
        rooms = [tenant.room(f"a{i}", f"b{i}") for i in range(CYCLES)]
        tokens = {u: tenant.session_token(u) for i in range(CYCLES) for u in (f"a{i}", f"b{i}")}

        async with httpx.AsyncClient(base_url=stack.rest, timeout=30) as http:

            async def rest_cycle(i: int) -> None:
                room, a, b = (
                    rooms[i],
                    {"Authorization": f"Bearer {tokens[f'a{i}']}"},
                    {"Authorization": f"Bearer {tokens[f'b{i}']}"},
                )
                call = (await http.post(f"/chat/rooms/{room}/calls", json={}, headers=a)).json()[
                    "call"
                ]
                await http.post(f"/chat/rooms/{room}/calls/{call['id']}/accept", headers=b)
                reply = await http.post(f"/chat/rooms/{room}/calls/{call['id']}/end", headers=a)
                assert reply.status_code == 200, reply.text

            rest = await run("REST", rest_cycle)

        channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_ports['calls']}")
        stub = pb_grpc.CallServiceStub(channel)

        async def grpc_cycle(i: int) -> None:
            room = rooms[i]
            a = [("authorization", f"Bearer {tokens[f'a{i}']}")]
            b = [("authorization", f"Bearer {tokens[f'b{i}']}")]
            call = (await stub.StartCall(pb.StartCallRequest(room_id=room), metadata=a)).call
            await stub.AcceptCall(pb.AcceptCallRequest(room_id=room, call_id=call.id), metadata=b)
            await stub.EndCall(pb.EndCallRequest(room_id=room, call_id=call.id), metadata=a)

        direct = await run("gRPC", grpc_cycle)
        await channel.close()
        print(
            f"REST/gRPC throughput ratio: {rest['cycles_per_s'] / direct['cycles_per_s']:.2f} "
            f"(Envoy transcoding + HTTP/1.1 overhead)"
        )
    finally:
        stack.stop_all()


if __name__ == "__main__":
    asyncio.run(main())
