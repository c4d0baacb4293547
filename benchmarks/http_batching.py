"""HTTP throughput before/after request batching: requests/s and p50/p90 latency at several client counts.

"before" serves the batch-1 graph (one inference per request, today's path); "after" serves the `--batch dynamic`
graph with server-side batching (`--max-batch`, `--batch-window-ms`). Each variant runs in its own `sfdeploy serve`
subprocess (so the load generator does not share the server's GIL); closed-loop clients (httpx, one thread each)
post 320 px JPEGs (square, portrait and landscape, so the letterbox path is exercised). Variants are interleaved
(A B, then B A, ...) because the shared machine's load varies; the table pools every round's latencies.

    python benchmarks/http_batching.py --pair retinanet R.onnx R.batched.onnx --pair fcos F.onnx F.batched.onnx \
        --clients 1,8,32 --rounds 2 --json docs/benchmarks/http_batching.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def _jpegs() -> list[bytes]:
    from sfdeploy.data import build_dataset

    ds = build_dataset("synthetic:8", split="val", seed=0)
    out = []
    for i, size in enumerate([(320, 320), (240, 320), (320, 240), (320, 320)]):
        buf = io.BytesIO()
        Image.fromarray(ds.load_image(i)).resize(size, Image.Resampling.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(onnx: str, max_batch: int, window_ms: float) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "sfdeploy", "serve", onnx, "--port", str(port), "--max-batch", str(max_batch),
           "--batch-window-ms", str(window_ms), "--max-queue", "256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {' '.join(cmd)}")
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become ready")


def batch_counts(url: str) -> tuple[float, float]:
    """(inferences, images) so far from the server's sfdeploy_batch_size histogram (0, 0 without batching)."""
    from prometheus_client.parser import text_string_to_metric_families

    count = total = 0.0
    for fam in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for sample in fam.samples:
            if sample.name == "sfdeploy_batch_size_count":
                count += sample.value
            elif sample.name == "sfdeploy_batch_size_sum":
                total += sample.value
    return count, total


def load(url: str, clients: int, requests: int, jpegs: list[bytes]) -> dict[str, float | int]:
    """`requests` requests from `clients` closed-loop clients -> rps, latencies (ms), errors."""
    per = [requests // clients + (1 if k < requests % clients else 0) for k in range(clients)]

    def client(k: int) -> tuple[list[float], int]:
        lat, errors = [], 0
        with httpx.Client(base_url=url, timeout=300) as c:
            for j in range(per[k]):
                t0 = time.perf_counter()
                r = c.post("/v1/detect", files={"image": ("a.jpg", jpegs[(k + j) % len(jpegs)], "image/jpeg")})
                lat.append((time.perf_counter() - t0) * 1000.0)
                errors += r.status_code != 200
        return lat, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        parts = list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    return {"rps": requests / wall, "latencies_ms": [x for p in parts for x in p[0]],
            "errors": sum(p[1] for p in parts), "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=3, action="append", metavar=("NAME", "BATCH1_ONNX", "BATCHED_ONNX"),
                    required=True)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests-per-client", type=int, default=4, help="requests per client count: max(16, c x this)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--window-ms", type=float, default=5.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    jpegs = _jpegs()
    runs = []
    for rnd in range(args.rounds):
        for name, before, after in args.pair:
            variants = [("before", before, 1), ("after", after, args.max_batch)]
            for variant, onnx, max_batch in (variants if rnd % 2 == 0 else variants[::-1]):
                proc, url = start_server(onnx, max_batch, args.window_ms)
                try:
                    load(url, 2, 8, jpegs)  # warm-up
                    for c in clients:
                        n0, i0 = batch_counts(url)
                        res = load(url, c, max(16, c * args.requests_per_client), jpegs)
                        n1, i1 = batch_counts(url)
                        res["mean_batch"] = (i1 - i0) / (n1 - n0) if n1 > n0 else 1.0
                        res.update(model=name, variant=variant, clients=c, round=rnd,
                                   load_avg=os.getloadavg()[0])
                        runs.append(res)
                        lat = res["latencies_ms"]
                        print(f"round {rnd} {name} {variant} c={c}: {res['rps']:.2f} req/s, p50 "
                              f"{statistics.median(lat):.0f} ms, p90 {np.percentile(lat, 90):.0f} ms, "
                              f"errors {res['errors']}, mean batch {res['mean_batch']:.2f}, load {res['load_avg']:.1f}", file=sys.stderr, flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
    rows = []
    for name, _, _ in args.pair:
        for c in clients:
            for variant in ("before", "after"):
                sel = [r for r in runs if r["model"] == name and r["variant"] == variant and r["clients"] == c]
                lat = [x for r in sel for x in r["latencies_ms"]]
                rows.append({"model": name, "variant": variant, "clients": c,
                             "rps_median": round(statistics.median(r["rps"] for r in sel), 2),
                             "rps_per_round": [round(r["rps"], 2) for r in sel],
                             "p50_ms": round(float(np.percentile(lat, 50)), 1),
                             "p90_ms": round(float(np.percentile(lat, 90)), 1),
                             "requests": len(lat), "errors": sum(r["errors"] for r in sel),
                             "mean_batch": round(statistics.mean(r["mean_batch"] for r in sel), 2),
                             "load_avg": [round(r["load_avg"], 1) for r in sel]})
    print("| model | clients | variant | requests/s (median of rounds) | p50 ms | p90 ms | images per inference |"
          " errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_round = ", ".join(map(str, r["rps_per_round"]))
        print(f"| {r['model']} | {r['clients']} | {r['variant']} | {r['rps_median']} ({per_round}) "
              f"| {r['p50_ms']} | {r['p90_ms']} | {r['mean_batch']} | {r['errors']} |")
    if args.json:
        from sfdeploy.io import atomic_write_text

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
