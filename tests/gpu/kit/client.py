"""One CUDA client of the kit, run as its own process (``python3 -m tests.gpu.kit.client ROLE OPTIONS``).

It sets up its workload and warms it up, prints one JSON line (``ready``, with the SMs and memory
CUDA gives it), then answers commands on stdin, one JSON line each:
``run SECONDS`` (its workload for that long: a rate, or latencies for ``latency``),
``alloc MIB`` (whether that much more device memory can be had), ``quit``.
Roles: ``matmul`` (a fixed half-precision matmul loop), ``infer`` (small-batch MLP inference, as an
inference service runs it), ``latency`` (single requests arriving at a fixed interval, each timed from
its arrival), ``trainer`` (MLP training steps, a best-effort job).
"""
from __future__ import annotations

import json
import sys
import time


def _mlp(torch, width: int, depth: int):
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).cuda()


class Workload:
    def __init__(self, torch, role: str, options: dict):
        self.torch, self.role = torch, role
        self.interval = options.get("interval_ms", 5) / 1000
        if role == "matmul":
            self.a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
            self.b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
        elif role in ("infer", "latency"):
            self.model = _mlp(torch, options.get("width", 1024), options.get("depth", 4)).half().eval()
            self.x = torch.randn(options.get("batch", 1), options.get("width", 1024), device="cuda",
                                 dtype=torch.float16)
        elif role == "trainer":
            self.model = _mlp(torch, 4096, 4)
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3)
            self.x = torch.randn(512, 4096, device="cuda")
        else:
            raise ValueError(f"unknown role {role!r}")
        self.held: list = []

    def step(self) -> None:
        """One unit of work, finished on the GPU before it returns (a frozen client stops at once)."""
        torch = self.torch
        if self.role == "matmul":
            for _ in range(4):
                torch.matmul(self.a, self.b)
        elif self.role == "trainer":
            self.optimizer.zero_grad()
            self.model(self.x).square().mean().backward()
            self.optimizer.step()
        else:
            with torch.inference_mode():
                self.model(self.x)
        torch.cuda.synchronize()

    def run(self, seconds: float) -> dict:
        if self.role == "latency":
            return self._requests(seconds)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.step()
            steps += 1
        return {"rate": steps / (time.perf_counter() - start)}

    def _requests(self, seconds: float) -> dict:
        """Open-loop arrivals every ``interval``: a request that waits behind a slow one counts its wait."""
        start = time.perf_counter()
        latencies, arrival = [], start
        while arrival - start < seconds:
            now = time.perf_counter()
            if now < arrival:
                time.sleep(arrival - now)
            self.step()
            latencies.append(time.perf_counter() - arrival)
            arrival += self.interval
        latencies.sort()
        return {"n": len(latencies), "p50_ms": 1000 * latencies[len(latencies) // 2],
                "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}

    def alloc(self, mib: int) -> dict:
        try:
            self.held.append(self.torch.empty(mib * 2**20, dtype=self.torch.uint8, device="cuda"))
            self.torch.cuda.synchronize()
            return {"allocated": True}
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            return {"allocated": False, "error": str(exc).splitlines()[0][:200]}


def main(role: str, options: dict) -> int:
    try:
        import torch

        props = torch.cuda.get_device_properties(0)
        work = Workload(torch, role, options)
        warm_until = time.perf_counter() + options.get("warmup_s", 1.0)
        while time.perf_counter() < warm_until:
            work.step()
    except Exception as exc:  # the parent reads why this client could not start (a refused context)
        print(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}),
              flush=True)
        return 1
    print(json.dumps({"ready": True, "sms": props.multi_processor_count,
                      "memory_mib": props.total_memory // 2**20}), flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "run":
            print(json.dumps(work.run(float(args[0]))), flush=True)
        elif command == "alloc":
            print(json.dumps(work.alloc(int(args[0]))), flush=True)
        elif command == "quit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
