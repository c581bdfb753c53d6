"""Serving under abuse: a one-face request's latency against a real ``mlflow models serve`` while 4 abusive
requests run at once, against the same request on the idle server (the baseline, same run, same server).

Abusive requests, each what issue 21 measured (before its fix a one-face photo sent after them took 14.6 s
instead of 0.2 s, the server holding one detector lock for ~43 s):
- ``tiled``: 4 rows, each a 0.86 MB JPEG of 24x24 tiled 100 px faces (576 faces, 5.8 M pixels: within the
  request's pixel budget, over the 100 faces per image): detection runs, classification is refused per image;
- ``flat``: a 6300x6300 flat PNG (~39 kB, 39.7 M pixels), refused from its header;
- ``pixels``: a 20 MB ``pixels`` row, refused from its length;
- ``overflow``: a good row and a ``pixels`` row holding 99999999999999999999 (the good row is answered).
``--abuse KIND`` sends one kind, ``--abuse mixed`` cycles through the four; each of the 4 abusive clients
sends its next request as soon as the last is answered, for the whole measurement.

Usage:
    python benchmarks/serving_abuse.py [--abuse tiled|flat|pixels|overflow|mixed] [--requests 20]
                                       [--model models:/fer-ablate@champion]

Without ``--model`` the served model is the paper CNN freshly built (5.9 M parameters, untrained): right
for latency, meaningless for labels. The server runs with its default limits (``serving_limits``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

CLIENT_TIMEOUT = 15.0  # the client gave up at 15 s
ABUSE = ("tiled", "flat", "pixels", "overflow")


def photo_model(folder: Path, model_uri: str | None) -> str:
    """A servable photo model: ``model_uri`` as given, or the untrained paper CNN saved as one in ``folder``."""
    if model_uri:
        return model_uri
    import mlflow

    from fer_ablate.config.settings import resolve_config
    from fer_ablate.inference import pyfunc_entry
    from fer_ablate.inference.registered import photo_signature
    from fer_ablate.training.loop import build_models

    inference, _, _ = build_models(resolve_config("paper"))
    keras_file = folder / "model.keras"
    inference.save(keras_file)
    mlflow.pyfunc.save_model(folder / "photo_model", python_model=pyfunc_entry.__file__,
                             artifacts={"keras_model": str(keras_file)}, signature=photo_signature())
    return str(folder / "photo_model")


def serve(model_uri: str, log: Path) -> tuple[subprocess.Popen, int]:
    """``mlflow models serve`` on a free loopback port (its output to ``log``), once ``/ping`` answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                               "local", "-p", str(port), "-h", "127.0.0.1"], stdout=subprocess.DEVNULL,
                              stderr=log.open("w"))
    deadline = time.time() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server, port
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"the server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)


def post(port: int, body: bytes) -> tuple[int, float, str]:
    """(HTTP status, seconds, first message or '') of one request; status 0 for a client timeout."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as response:
            rows = json.loads(response.read())["predictions"]
            return response.status, time.perf_counter() - start, next((r["message"] for r in rows if r["message"]), "")
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - start, json.loads(exc.read()).get("message", "")[-160:]
    except TimeoutError:
        return 0, time.perf_counter() - start, "client timeout"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _body(records: list[dict]) -> bytes:
    return json.dumps({"dataframe_records": records}).encode()


def bodies() -> dict[str, bytes]:
    """The one-face request and the abusive ones (module docstring)."""
    from skimage import data

    astronaut = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    face = cv2.resize(astronaut[0:220, 150:370], (100, 100))
    tiled = cv2.imencode(".jpg", np.tile(face, (24, 24)), [cv2.IMWRITE_JPEG_QUALITY, 60])[1].tobytes()
    flat = cv2.imencode(".png", np.zeros((6300, 6300), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
    good = " ".join(map(str, np.random.default_rng(0).integers(0, 256, 2304)))
    return {"one-face": _body([{"image": _b64(cv2.imencode(".jpg", astronaut)[1].tobytes())}]),
            "tiled": _body([{"image": _b64(tiled)}] * 4),
            "flat": _body([{"image": _b64(flat)}]),
            "pixels": _body([{"pixels": "1 " * 10_000_000}]),
            "overflow": _body([{"pixels": good}, {"pixels": "99999999999999999999 " + good.split(" ", 1)[1]}])}


def latencies(port: int, body: bytes, n: int) -> list[float]:
    """Seconds of ``n`` requests in a row (a failed one counts as the client's timeout, and is said)."""
    out = []
    for _ in range(n):
        status, seconds, message = post(port, body)
        if status != 200:
            print(f"one-face request failed: {status} {message}", flush=True)
            seconds = max(seconds, CLIENT_TIMEOUT)
        out.append(seconds)
    return out


def summary(times: list[float]) -> str:
    times = sorted(times)
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    return f"median {statistics.median(times):.3f} s, p90 {p90:.3f} s, max {times[-1]:.3f} s (n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--abuse", choices=[*ABUSE, "mixed"], default="tiled",
                        help="the abusive requests' kind, or mixed: each of them in turn")
    parser.add_argument("--requests", type=int, default=20, help="one-face requests per phase")
    parser.add_argument("--model", default=None, help="a model URI to serve (default: an untrained paper CNN)")
    args = parser.parse_args()
    from machine_header import print_header  # benchmarks/ is sys.path[0] when run as a script

    print_header("serving under abuse")
    payloads = bodies()
    kinds = list(ABUSE) if args.abuse == "mixed" else [args.abuse]
    print("request sizes: " + ", ".join(f"{k} {len(payloads[k]) / 1e6:.2f} MB" for k in ["one-face", *kinds]))
    with tempfile.TemporaryDirectory() as tmp:
        server, port = serve(photo_model(Path(tmp), args.model), Path(tmp) / "server.log")
        try:
            latencies(port, payloads["one-face"], 3)  # warm-up: the model's first calls, the threads' cascades
            idle = latencies(port, payloads["one-face"], args.requests)
            stop, abusive = threading.Event(), []

            def abuser(k: int) -> None:
                i = k
                while not stop.is_set():
                    kind = kinds[i % len(kinds)]
                    abusive.append((kind, *post(port, payloads[kind])))
                    i += 1

            threads = [threading.Thread(target=abuser, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            try:
                time.sleep(1.0)  # the 4 abusive requests are in the server before the first measured one
                loaded = latencies(port, payloads["one-face"], args.requests)
            finally:
                stop.set()
                for t in threads:
                    t.join()
        except OSError:
            print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"one-face request, idle server:           {summary(idle)}")
    print(f"one-face request, 4 abusive requests on: {summary(loaded)}")
    print(f"ratio (median, abused / idle): {statistics.median(loaded) / statistics.median(idle):.2f}x; "
          f"goal < 1 s: {'met' if max(loaded) < 1.0 else 'NOT met'} (max {max(loaded):.3f} s)")
    for kind in kinds:
        done = [(s, t, m) for k, s, t, m in abusive if k == kind]
        statuses = sorted({s for s, _, _ in done})
        print(f"abusive {kind:8s}: {len(done)} answered, status {statuses}, {summary([t for _, t, _ in done])}; "
              f"e.g. {done[0][2][:150]!r}")


if __name__ == "__main__":
    main()
