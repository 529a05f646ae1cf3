"""Teacher throughput vs the concurrency limit, against the local fake OpenAI server with fixed latency.

With a server that answers every request after ``latency`` seconds, a runner that keeps ``c`` requests in
flight can at best complete ``c / latency`` requests per second. This prints, for several concurrency
limits, the measured requests/s, that ideal, and their ratio (target >= 0.90). It first measures the client's
own ceiling (server latency 0): once ``c / latency`` approaches it, the client's CPU per request (openai SDK +
httpx, about 1.5 ms on a 2-core machine), not the concurrency limit, bounds throughput. The server runs in
its own process (client and server do not share one interpreter) on 127.0.0.1; nothing else is contacted.

    python benchmarks/teacher.py [--latency 0.1] [--concurrency 4 16 64] [--waves 10]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cellduality.tasks.prompts import annotation_prompt
from cellduality.teacher.cache import ResponseCache
from cellduality.teacher.providers import OpenAIProvider
from cellduality.teacher.runner import TeacherRunner, TeacherSettings

ROOT = Path(__file__).resolve().parents[1]


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm_server.py"), "--latency", str(latency),
                             "--canned"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if not line or line[0] != "PORT":
        proc.kill()
        raise RuntimeError("fake server did not start")
    return proc, f"http://127.0.0.1:{line[1]}/v1"


def measure(url: str, concurrency: int, n_requests: int, cache_dir: Path) -> float:
    prompts = [(f"p{i}", annotation_prompt(["CD3D", "IL32", f"GENE{concurrency}-{i}"], None, ["T", "B"]))
               for i in range(n_requests)]
    settings = TeacherSettings(provider="openai", n_samples=1, concurrency=concurrency, progress=False)
    with ResponseCache(cache_dir / f"c{concurrency}.sqlite") as cache:  # the cache is part of the real path
        runner = TeacherRunner(OpenAIProvider("gpt-4o", "sk-bench", url, timeout_s=30), settings, cache)
        start = time.perf_counter()
        out = runner.run(prompts)
        elapsed = time.perf_counter() - start
    assert sum(len(v) for v in out.values()) == n_requests and runner.usage.failed_requests == 0
    return n_requests / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1, help="server latency per request, seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument("--waves", type=int, default=20, help="requests per run = waves x concurrency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(0.0)
        try:
            (Path(tmp) / "ceiling").mkdir()
            measure(url, 4, 8, Path(tmp) / "ceiling")  # warm-up (imports, connections)
            top = max(args.concurrency)
            ceiling = measure(url, top, top * args.waves, Path(tmp) / "ceiling")
        finally:
            proc.terminate()
            proc.wait(10)
        print(f"client ceiling (server latency 0, concurrency {top}): {ceiling:.0f} requests/s "
              f"= {1000 / ceiling:.2f} ms of client time per request")
        proc, url = start_server(args.latency)
        try:
            (Path(tmp) / "warm").mkdir()
            measure(url, 4, 8, Path(tmp) / "warm")
            print(f"fake OpenAI server latency {args.latency * 1000:.0f} ms; openai client; {args.waves} waves per run")
            print(f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'ideal':>8} {'ratio':>6}")
            for c in args.concurrency:
                n = c * args.waves
                rate = measure(url, c, n, Path(tmp))
                ideal = c / args.latency
                print(f"{c:>11} {n:>8} {rate:>8.1f} {ideal:>8.1f} {rate / ideal:>6.2f}")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
