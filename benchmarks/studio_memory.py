"""Memory of the studio over a long session: shots in a row with rewinds (issue 15).

One story, driven through the studio's HTTP API with a live WebSocket client
attached (so every frame is JPEG-encoded and sent, as for the page): each shot
gets a new prompt; whenever the story reaches 4 shots it is rewound to 1, so
its length cycles 1..4 and anything a rewound shot leaves behind would show up
as growth. After each shot: process RSS (after gc) and, where the backend has
them, device memory stats. One line per shot, then the growth per shot over
the second half (least-squares slope) and a ratio of the last to the
first-cycle RSS.

Usage: python benchmarks/studio_memory.py [--model DIR] [--shots 20] [--json out.json]
"""
import argparse
import gc
import json
import pathlib
import sys
import threading
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from shotstream_jax import ShotStream  # noqa: E402
from shotstream_jax.studio import create_app  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def device_mb():
    """The backend's bytes in use where it reports them (GPU, TPU), else None (CPU)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("bytes_in_use", 0) / 2**20


def live_array_mb() -> float:
    """Bytes of all live jax arrays (on CPU the only device-side figure there is)."""
    return sum(a.nbytes for a in jax.live_arrays()) / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the bundled toy model)")
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--keep", type=int, default=1, help="shots kept by each rewind")
    ap.add_argument("--max_len", type=int, default=4, help="rewind when the story has this many shots")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    pipe = ShotStream.load(args.model)
    app = create_app(pipe)
    rows = []
    with TestClient(app) as client:
        sid = client.post("/api/stories", json={"global_caption": "A long walk through a city.", "seed": 0}).json()["id"]
        received = {"frames": 0}
        stop = threading.Event()

        def watch():  # a live client, as the page is
            with client.websocket_connect(f"/api/stories/{sid}/live") as ws:
                while not stop.is_set():
                    m = ws.receive()
                    if m.get("bytes") is not None:
                        received["frames"] += 1
                    elif m.get("text") and json.loads(m["text"])["type"] == "deleted":
                        return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.5)
        for i in range(args.shots):
            t = time.perf_counter()
            client.post(f"/api/stories/{sid}/shots", json={"prompt": f"Shot number {i}: the walk goes on."})
            while True:
                s = client.get(f"/api/stories/{sid}").json()
                if not s["busy"] and all(x["done"] for x in s["shots"]):
                    break
                time.sleep(0.01)
            seconds = time.perf_counter() - t
            rewound = len(s["shots"]) >= args.max_len
            if rewound:
                client.post(f"/api/stories/{sid}/rewind", json={"shots": args.keep})
            gc.collect()
            row = {"shot": i + 1, "story_shots": len(s["shots"]), "rewound_to": args.keep if rewound else None,
                   "rss_mb": round(rss_mb(), 1), "device_mb": device_mb(),
                   "live_arrays_mb": round(live_array_mb(), 2), "python_objects": len(gc.get_objects()), "seconds": round(seconds, 2),
                   "frames_sent": received["frames"]}
            rows.append(row)
            dev = "n/a" if row["device_mb"] is None else f"{row['device_mb']:.1f}"
            print(f"shot {row['shot']:3d}  story {row['story_shots']} shots"
                  f"{' -> rewound to %d' % args.keep if rewound else '':18s}  rss {row['rss_mb']:8.1f} MB  "
                  f"device {dev} MB  live arrays {row['live_arrays_mb']:7.2f} MB  "
                  f"objects {row['python_objects']:7d}  {seconds:6.2f} s", flush=True)
        client.delete(f"/api/stories/{sid}")
        stop.set()
        watcher.join(10)
    half = rows[len(rows) // 2:]
    slope = np.polyfit([r["shot"] for r in half], [r["rss_mb"] for r in half], 1)[0]
    first_cycle = rows[args.max_len - 1]["rss_mb"]
    print(f"rss growth per shot over shots {half[0]['shot']}-{half[-1]['shot']}: {slope:+.2f} MB/shot")
    print(f"rss after shot {rows[-1]['shot']} / after shot {args.max_len}: {rows[-1]['rss_mb'] / first_cycle:.3f}")
    print(f"device: {jax.devices()[0].device_kind}, backend {jax.default_backend()}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "rss_slope_mb_per_shot": slope}, indent=1))


if __name__ == "__main__":
    main()
