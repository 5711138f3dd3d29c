"""HTTP serving under load (issue 23): requests/s and p50/p95/p99 latency of ``unetseg serve`` at 1, 4 and 16
concurrent clients, zero server errors, bad uploads (truncated, text, pixel bomb, wrong dimensionality, wrong
channels) answered 4xx while the server stays up, and the server's resident memory over 5,000 requests.

The server is a fresh ``unetseg serve`` process on a loopback port, with its defaults (queue 16, micro-batches
of up to 8, a bearer token), serving a random-weight U-Net (base 8, depth 3, one 256x256 tile per image;
``--checkpoint RUN`` serves yours); its RSS is read from ``/proc/PID/status``. Clients are threads of this
process, each with its own keep-alive connection (httpx), posting 256x256 PNGs of synthetic cells: on a small
machine they share its cores with the server, so the numbers are a floor. Every phase stops at its request
count or its seconds, whichever comes first; the script exits non-zero on any 5xx, a bad upload not answered
4xx, or a server that died. Run it alone on a quiet machine::

    .venv/bin/python benchmarks/serve_load.py            # the full run; writes BENCHMARKS.md's serve section
    .venv/bin/python benchmarks/serve_load.py --smoke    # 50 requests per phase, prints, writes nothing
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import machine_facts, replace_section

from unetseg.fileio import write_text  # atomic: temp, fsync, replace

REPO = Path(__file__).resolve().parents[1]
TOKEN = "benchmark-token-" + "0123456789abcdef"
CLIENTS = (1, 4, 16)


# ------------------------------------------------------------------------------------------ inputs
def make_checkpoint(folder: Path, size: int) -> Path:
    """A random-weight U-Net (base 8, depth 3) whose tile is one ``size`` x ``size`` image."""
    import torch

    from unetseg.checkpoint import save_checkpoint
    from unetseg.config import Config
    from unetseg.models import build_model

    cfg = Config()
    m = cfg.model
    m.name, m.spatial_dims, m.in_channels, m.num_classes, m.base_channels, m.depth = "unet", 2, 1, 2, 8, 3
    cfg.data.patch_size, cfg.data.class_values = [size, size], [0.0, 255.0]
    torch.manual_seed(0)
    return save_checkpoint(folder / "ckpt", build_model(m.name, **m.build_kwargs()).eval(), cfg)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def good_uploads(size: int, n: int = 8) -> list[bytes]:
    from unetseg.data.synthetic import make_image

    return [png_bytes(np.clip(make_image("cells", (size, size), seed=s)[0], 0, 255).astype(np.uint8))
            for s in range(n)]


def bad_uploads(size: int) -> dict[str, bytes]:
    """One of each kind of upload the server must refuse with a 4xx."""
    import tifffile

    good = png_bytes(np.zeros((size, size), np.uint8) + 7)

    def tiff(array: np.ndarray, axes: str) -> bytes:
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, array, metadata={"axes": axes})
        return buffer.getvalue()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))
    return {
        "truncated PNG": good[: len(good) // 2],
        "text": b"this is not an image\n" * 10,
        "pixel bomb (PNG declaring 50000x50000)": bomb,
        "3D stack to a 2D model": tiff(np.zeros((4, 64, 64), np.uint8), "ZYX"),
        "2 channels to a 1-channel model": tiff(np.zeros((2, 64, 64), np.uint8), "CYX"),
    }


# ------------------------------------------------------------------------------------------ server
@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    stderr: list[str] = field(default_factory=list)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kib / 1024

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_server(checkpoint: Path, work: Path, options: list[str]) -> Server:
    token = work / "token"
    write_text(token, TOKEN + "\n")
    token.chmod(0o600)
    cmd = [sys.executable, "-m", "unetseg", "serve", "--checkpoint", str(checkpoint), "--port", "0",
           "--token-file", str(token), "--log-level", "warning", *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    found = re.search(r"on (http://\S+) ", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the server did not start: {line or proc.stderr.read()}")
    server = Server(proc, found[1])
    threading.Thread(target=lambda: server.stderr.extend(proc.stderr), daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("the server did not answer /health within 300 s")


# ------------------------------------------------------------------------------------------ load
@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    seconds: float = 0.0

    def add(self, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.latencies.append(seconds)

    def count(self, lo: int, hi: int) -> int:
        return sum(n for s, n in self.statuses.items() if lo <= s < hi)


def load(server: Server, clients: int, requests: int, seconds: float, uploads: list[bytes],
         on_progress: Callable[[int], None] | None = None) -> Tally:
    """``clients`` threads posting ``uploads`` in turn until ``requests`` are answered or ``seconds`` pass."""
    tally, lock = Tally(), threading.Lock()
    sent = [0]
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            while time.monotonic() < deadline:
                with lock:
                    if sent[0] >= requests:
                        return
                    n = sent[0]
                    sent[0] += 1
                start = time.perf_counter()
                try:
                    status = c.post("/predict", content=uploads[n % len(uploads)]).status_code
                except httpx.TransportError:
                    with lock:
                        tally.transport_errors += 1
                    continue
                with lock:
                    tally.add(status, time.perf_counter() - start)
                if on_progress is not None:
                    on_progress(n + 1)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.seconds = time.perf_counter() - start
    return tally


def throughput(server: Server, args: argparse.Namespace, uploads: list[bytes]) -> list[dict[str, Any]]:
    rows = []
    for clients in CLIENTS:
        load(server, clients, 2 * clients, 60, uploads)  # warm the connections and the batch shapes
        t = load(server, clients, args.requests, args.seconds, uploads)
        ms = np.asarray(t.latencies) * 1000 if t.latencies else np.zeros(1)
        rows.append({"clients": clients, "requests": sum(t.statuses.values()), "seconds": t.seconds,
                     "rps": len(t.latencies) / t.seconds, "p50": float(np.percentile(ms, 50)),
                     "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99)),
                     "ok": t.count(200, 300), "4xx": t.count(400, 500), "5xx": t.count(500, 600),
                     "503": t.statuses.get(503, 0), "transport_errors": t.transport_errors})
        print(f"{clients:>2} clients: {rows[-1]['rps']:.1f} req/s, p50 {rows[-1]['p50']:.0f} ms, "
              f"p99 {rows[-1]['p99']:.0f} ms, statuses {t.statuses}", flush=True)
    return rows


def bad_requests(server: Server, args: argparse.Namespace, uploads: list[bytes]) -> dict[str, Any]:
    """Every bad kind ``repeats`` times from 4 threads while 2 clients keep sending good images."""
    bad = bad_uploads(args.size)
    answers: dict[str, dict[int, int]] = {name: {} for name in bad}
    lock = threading.Lock()

    def sender(names: list[str]) -> None:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            for name in names:
                status = c.post("/predict", content=bad[name]).status_code
                with lock:
                    answers[name][status] = answers[name].get(status, 0) + 1

    names = [name for name in bad for _ in range(args.bad_repeats)]
    threads = [threading.Thread(target=sender, args=(names[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    good = load(server, 2, max(20, args.bad_repeats * 2), args.seconds, uploads)
    for t in threads:
        t.join()
    alive = server.alive() and httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    return {"answers": answers, "good_ok": good.count(200, 300), "good_sent": sum(good.statuses.values()),
            "good_5xx": good.count(500, 600), "alive_after": alive}


def memory(server: Server, args: argparse.Namespace, uploads: list[bytes]) -> dict[str, Any]:
    """The server's RSS sampled every tenth of ``memory_requests`` answered requests (4 clients)."""
    step = max(1, args.memory_requests // 10)
    samples: list[tuple[int, float]] = [(0, server.rss_mib())]
    lock = threading.Lock()

    def progress(n: int) -> None:
        if n % step == 0:
            with lock:
                samples.append((n, server.rss_mib()))

    t = load(server, 4, args.memory_requests, args.memory_seconds, uploads, progress)
    samples.append((sum(t.statuses.values()), server.rss_mib()))
    ref = samples[min(2, len(samples) - 1)][1]  # after a fifth of the run: the allocator has settled
    growth = max(s for _, s in samples[2:] or samples) - ref
    return {"samples": sorted(samples), "requests": sum(t.statuses.values()), "5xx": t.count(500, 600),
            "growth_mib": growth, "flat": growth <= max(16.0, 0.03 * ref), "seconds": t.seconds}


# ------------------------------------------------------------------------------------------ report
def section(res: dict[str, Any]) -> str:
    facts = res["machine"]
    setup = (f"`benchmarks/serve_load.py`: a fresh `unetseg serve` process on loopback (queue "
             f"{res['queue']}, micro-batches of up to {res['max_batch']}, bearer token), a random-weight "
             f"U-Net (base 8, depth 3) on {res['size']}x{res['size']} PNGs of synthetic cells (one tile "
             "each); client threads in another process on the same machine, one keep-alive connection each. "
             f"{facts['CPU']}; {facts['GPU']}; {facts['versions']}; {facts['date']}.")
    lines = ["## HTTP serving under load (issue 23)", "", setup, "",
             "| clients | requests | seconds | requests/s | p50 ms | p95 ms | p99 ms | 200 | 4xx | 5xx "
             "| 503 |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["throughput"]:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['seconds']:.1f} | {r['rps']:.1f} "
                     f"| {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['ok']} | {r['4xx']} "
                     f"| {r['5xx']} | {r['503']} |")
    bad = res["bad"]
    alive = "yes" if bad["alive_after"] else "NO"
    lines += ["", "Bad uploads, sent from 4 threads while 2 clients kept sending good images "
              f"({bad['good_ok']}/{bad['good_sent']} answered 200; server alive after: {alive}):", "",
              "| upload | answers |", "| --- | --- |"]
    for name, statuses in bad["answers"].items():
        lines.append(f"| {name} | {', '.join(f'{n} x {s}' for s, n in sorted(statuses.items()))} |")
    mem = res["memory"]
    points = ", ".join(f"{n}: {rss:.0f}" for n, rss in mem["samples"])
    verdict = "flat" if mem["flat"] else "NOT flat"
    lines += ["", f"Server RSS over {mem['requests']} requests (4 clients, {mem['seconds']:.0f} s), MiB "
              f"after N requests: {points}. Growth after the first fifth: {mem['growth_mib']:+.1f} MiB "
              f"({verdict}). "
              f"Server errors (5xx) in all phases: {res['errors']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="per concurrency level")
    ap.add_argument("--seconds", type=float, default=120.0, help="at most, per concurrency level")
    ap.add_argument("--memory-requests", type=int, default=5000)
    ap.add_argument("--memory-seconds", type=float, default=900.0)
    ap.add_argument("--bad-repeats", type=int, default=20, help="each kind of bad upload, this many times")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--checkpoint", type=Path, help="serve this model instead (2D, 1 channel)")
    ap.add_argument("--max-batch", type=int, help="the server's --max-batch (default: its own)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unetseg_serve_load")
    ap.add_argument("--smoke", action="store_true", help="50 requests a phase, 200 for memory; no writing")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.memory_requests, args.bad_repeats, args.no_write = 50, 200, 3, True
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or make_checkpoint(args.work, args.size)
    uploads = good_uploads(args.size)
    extra = ["--max-batch", str(args.max_batch)] if args.max_batch else []
    server = start_server(checkpoint, args.work, [*extra, "--device", args.device])
    try:
        model = httpx.get(f"{server.url}/model", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        limits = model["limits"]
        res: dict[str, Any] = {"size": args.size, "queue": limits["queue_size"],
                               "max_batch": limits["max_batch"]}
        res["machine"] = machine_facts(os.cpu_count() or 1)
        res["throughput"] = throughput(server, args, uploads)
        res["bad"] = bad_requests(server, args, uploads)
        res["memory"] = memory(server, args, uploads)
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(60)
    res["errors"] = (sum(r["5xx"] for r in res["throughput"]) + res["bad"]["good_5xx"] + res["memory"]["5xx"]
                     + sum(n for a in res["bad"]["answers"].values() for s, n in a.items() if s >= 500))
    res["tracebacks"] = sum("Traceback" in line for line in server.stderr)
    write_text(args.work / "results_serve.json", json.dumps(res, indent=1))
    text = section(res)
    print(text)
    if not args.no_write:
        replace_section(REPO / "BENCHMARKS.md", "serve", text)
    refused = all(400 <= s < 500 for a in res["bad"]["answers"].values() for s in a)
    if res["errors"] or res["tracebacks"] or not refused or not res["bad"]["alive_after"]:
        raise SystemExit("serve_load: server errors, a bad upload not refused with a 4xx, or a dead server")


if __name__ == "__main__":
    main()
