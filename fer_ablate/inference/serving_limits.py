"""What one request to the served photo model may cost: the limits, read from the server's environment.

MLflow's scoring server (uvicorn, MLflow 3.x) runs each request's ``predict`` in a pool of ~6 threads and
has no limit on a body's size or on the work it buys; a request it times out (``--timeout``,
``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, 60 s) goes on computing in its thread. So the model keeps one
budget per request, each part a setting (``FER_ABLATE_<NAME>``, a whole number; seconds may be a fraction):

| setting | default | what it bounds | checked |
|---|---|---|---|
| ``MAX_IMAGE_BYTES`` | 20 MB | one ``image`` (decoded bytes, from the base64 length) | before decoding the base64 |
| ``MAX_PIXELS_CHARS`` | 20,000 | one ``pixels`` string (2,304 values of 0-255 need <= 9,215) | before splitting it |
| ``MAX_REQUEST_BYTES`` | 100 MB | all ``image`` bytes and ``pixels`` characters together | before decoding any row |
| ``MAX_REQUEST_PIXELS`` | 25 M | decoded pixels of all images together (a 24 MP photo fits) | from their headers |
| ``MAX_FACES_PER_IMAGE`` | 100 | faces detected in one photo | after detection, before classifying |
| ``MAX_FACES_PER_REQUEST`` | 1,000 | faces and crops classified in one request | crops: before any work |
| ``MAX_REQUEST_SECONDS`` | 10 | wall time (never above MLflow's request timeout) | before each row |

A limit broken by one row alone is that row's error (the other rows are answered); one broken only by the
rows together (bytes, pixels, crops in all) refuses the whole request (HTTP 400) before the expensive step.
Rows the time budget does not reach are answered with that reason; a row already started finishes (one
image's search: ~2 s for 25 M pixels, up to ~5 s under load), so a request may end that much past its budget.

Large images (over ``LARGE_PIXELS``) are decoded and searched for faces ``LARGE_SLOTS`` at a time (one
per two cores), each request waiting at most until its deadline: four requests of large images then take
turns on the CPU instead of sharing it with the small requests that arrive meanwhile (a one-face request:
0.44 s median beside 4 such requests, 0.12 s idle; ``benchmarks/serving_abuse.py``). Costs behind the
defaults, measured on a 2-core Xeon (AVX-512): Haar detection 1.7 s for 16 M pixels (~2.6 s for the 25 M
budget), the paper CNN ~300 crops/s batched (1,000 crops ~3.5 s); a 25 M pixel image decodes in ~100 MB.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from fer_ablate.inference.faces import ImageError

PREFIX = "FER_ABLATE_"
MLFLOW_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
MLFLOW_TIMEOUT_DEFAULT = 60.0  # MLflow 3.x's default for MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT


@dataclass(frozen=True)
class ServingLimits:
    """The per-request limits (module docstring); ``from_env`` reads them from the server's environment."""

    max_image_bytes: int = 20_000_000  # a 40 M pixel phone JPEG is 10-15 MB
    max_pixels_chars: int = 20_000  # ~2x the longest plain spelling of 2,304 values ("255 " x 2304)
    max_request_bytes: int = 100_000_000
    max_request_pixels: int = 25_000_000  # a 6000x4000 (24 MP) photo; a 6300x6300 flat PNG (52 kB) is refused
    max_faces_per_image: int = 100  # a class photo has ~30; a 0.3 MB PNG of tiled faces gave 581
    max_faces_per_request: int = 1_000  # ~3.5 s of the paper CNN on 2 cores
    max_request_seconds: float = 10.0  # under common client timeouts (15 s in issue 21): no work for no one
    mlflow_timeout: float = field(default=MLFLOW_TIMEOUT_DEFAULT, repr=False)

    @staticmethod
    def env_name(name: str) -> str:
        """The environment variable of the limit ``name`` (``max_image_bytes`` -> FER_ABLATE_MAX_IMAGE_BYTES)."""
        return PREFIX + name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServingLimits:
        """The limits in force: each ``FER_ABLATE_<NAME>`` set in ``environ`` (default ``os.environ``), else the
        default. Raises ImageError naming the variable for a value that is not a positive number."""
        environ = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for f in fields(cls):
            env = MLFLOW_TIMEOUT_ENV if f.name == "mlflow_timeout" else cls.env_name(f.name)
            raw = (environ.get(env) or "").strip()
            if not raw:
                continue
            kind = int if f.type == "int" else float
            try:
                value = kind(raw.replace("_", ""))
            except ValueError:
                value = 0
            if not value > 0:
                raise ImageError(f"{env}={raw!r} is not a positive {'whole ' if kind is int else ''}number")
            values[f.name] = value
        return cls(**values)

    @property
    def seconds(self) -> float:
        """The time budget: ``max_request_seconds``, at most MLflow's own request timeout (after which the
        client has its 504 and more work would be wasted)."""
        return min(self.max_request_seconds, self.mlflow_timeout)


LARGE_PIXELS = 2_000_000  # ~0.2 s of Haar detection on 2 cores; a phone photo is 12 M
LARGE_SLOTS = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))


class RequestBudget:
    """One request's running account: its deadline and the faces it has classified so far."""

    def __init__(self, limits: ServingLimits, clock=time.monotonic):
        self.limits, self.clock = limits, clock
        self.deadline = clock() + limits.seconds
        self.faces = 0

    def out_of_time(self, name: str) -> str | None:
        """The reason ``name`` (a row) is not processed, once the deadline has passed; None before."""
        if self.clock() < self.deadline:
            return None
        return (f"{name}: not processed: the request's {self.limits.seconds:g} s budget ran out "
                f"({ServingLimits.env_name('max_request_seconds')}); send this row again in a smaller request")

    def remaining(self) -> float:
        """Seconds left before the deadline (0 once past it)."""
        return max(0.0, self.deadline - self.clock())

    def take_faces(self, n: int, name: str) -> None:
        """Count ``n`` faces found in one image; ImageError (that row's error) when the image has more than
        the per-image limit or they would take the request past its face budget."""
        limits = self.limits
        if n > limits.max_faces_per_image:
            raise ImageError(f"{name}: {n} faces found, over the limit of {limits.max_faces_per_image} per image "
                             f"({ServingLimits.env_name('max_faces_per_image')}): send a crop of the photo")
        if self.faces + n > limits.max_faces_per_request:
            raise ImageError(f"{name}: its {n} faces would take the request past its budget of "
                             f"{limits.max_faces_per_request} faces ({ServingLimits.env_name('max_faces_per_request')},"
                             f" {self.faces} used by earlier rows): send this row in another request")
        self.faces += n
