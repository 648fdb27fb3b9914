"""Count the faces each face detector finds on real photos that ship in registry packages.

Usage (from the repository root; the README's "Face detectors" section shows the output):

    export FER_MEDIAPIPE_PYTHON=$(.ci/mediapipe-env)
    uv run --frozen --with scikit-image==0.26.0 \
        python packages/fer-export/benchmarks/measure_detectors.py [--json out.json]

Haar runs in the interpreter that runs this script (the workspace venv: numpy 2, OpenCV from
the lock); mediapipe's BlazeFace (short and full range) runs in FER_MEDIAPIPE_PYTHON
(``--mediapipe-python``), the venv ``.ci/mediapipe-env`` builds, where this same script is
started with ``--worker``. Where mediapipe is importable here, it runs here instead. Both
sides load the same images:

* scikit-image's sample data (in its wheel, no download): ``astronaut`` (one frontal face),
  ``camera`` (one face turned to the side), the LFW subset (100 face crops of 25 x 25 px, as
  they are and scaled up 4x, and 100 crops of non-faces), and 14 photos with no face
  (a cat, a coffee cup, a rocket, coins, a retina, text...);
* matplotlib's ``grace_hopper.jpg`` (one frontal face);
* two arrangements of those photos: a 2 x 2 collage (astronaut, camera, Grace Hopper, coffee:
  3 faces of about 90-180 px in 1024 x 1024) and a 4 x 4 grid of LFW faces at 128 px
  (16 faces in 512 x 512).

A face counts as found when a box overlaps the face's box (read off the photo by eye) with
IoU >= 0.5, or, for an LFW crop, when a box's centre lies in the crop and the box covers at
least an eighth of it. Every other box is a false positive. Not part of ``nox -s bench``: it
needs scikit-image, which the workspace lock does not hold, and the mediapipe venv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

DETECTORS = ("haar", "mediapipe:short", "mediapipe:full")
#: Face boxes (x, y, w, h) read off the photos: cheek to cheek (ear to nose tip for the
#: camera operator's profile), hairline or hat brim to chin. tests/test_detectors.py uses
#: the same boxes.
REFERENCE_FACES = {
    "astronaut": (185, 75, 85, 102),
    "grace_hopper": (172, 145, 180, 175),
    "camera": (185, 122, 72, 73),
}
NO_FACE_PHOTOS = (
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "coins",
    "retina",
    "moon",
    "page",
    "text",
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
    "motorcycle_left",
)
TIMING_REPEATS = 5


@dataclass(frozen=True)
class Face:
    """An expected face: ``box`` with rule ``"iou"`` (IoU >= 0.5) or ``"inside"`` (an LFW
    crop: the box's centre inside it and the box at least 1/8 of its area)."""

    box: tuple[int, int, int, int]
    rule: str = "iou"


@dataclass(frozen=True)
class Case:
    """A row of the table: images with the faces each holds."""

    name: str
    images: list[tuple[np.ndarray, list[Face]]]

    @property
    def expected(self) -> int:
        return sum(len(faces) for _, faces in self.images)


def _rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as RGB uint8 (grayscale replicated, floats in [0, 1] scaled, alpha dropped)."""
    if image.dtype != np.uint8:
        image = np.clip(np.round(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def load_cases() -> list[Case]:
    """The images and their faces (see the module docstring)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise SystemExit(
            "measure_detectors.py needs scikit-image's sample data: run it with "
            "`uv run --frozen --with scikit-image==0.26.0 python ...` (not in the lock)"
        ) from exc
    import matplotlib
    from PIL import Image

    grace_path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    grace = _rgb(np.asarray(Image.open(grace_path).convert("RGB")))
    astronaut, camera = _rgb(data.astronaut()), _rgb(data.camera())
    lfw = data.lfw_subset()  # (200, 25, 25) float: 100 faces, then 100 non-faces
    crop = (0, 0, 25, 25)
    lfw_faces = [_rgb(lfw[i]) for i in range(100)]

    def no_face(name: str) -> np.ndarray:
        if name == "motorcycle_left":
            return _rgb(data.stereo_motorcycle()[0])
        return _rgb(getattr(data, name)())

    collage = np.zeros((1024, 1024, 3), np.uint8)
    collage[:512, :512] = astronaut
    collage[:512, 512:] = camera
    collage[512:, :512] = grace[:512]
    collage[512:, 512:] = cv2.resize(_rgb(data.coffee()), (512, 512), interpolation=cv2.INTER_AREA)
    shift = {"astronaut": (0, 0), "camera": (512, 0), "grace_hopper": (0, 512)}
    collage_faces = [
        Face((x + dx, y + dy, w, h))
        for name, (dx, dy) in shift.items()
        for x, y, w, h in [REFERENCE_FACES[name]]
    ]
    grid = np.zeros((512, 512, 3), np.uint8)
    grid_faces = []
    for i in range(16):
        x, y = (i % 4) * 128, (i // 4) * 128
        grid[y : y + 128, x : x + 128] = cv2.resize(
            lfw_faces[i], (128, 128), interpolation=cv2.INTER_CUBIC
        )
        grid_faces.append(Face((x, y, 128, 128), "inside"))

    return [
        Case("astronaut (skimage)", [(astronaut, [Face(REFERENCE_FACES["astronaut"])])]),
        Case("grace_hopper.jpg (matplotlib)", [(grace, [Face(REFERENCE_FACES["grace_hopper"])])]),
        Case("camera, turned face (skimage)", [(camera, [Face(REFERENCE_FACES["camera"])])]),
        Case("LFW faces, 25 x 25 px", [(face, [Face(crop, "inside")]) for face in lfw_faces]),
        Case(
            "LFW faces scaled 4x (100 px)",
            [
                (
                    cv2.resize(face, (100, 100), interpolation=cv2.INTER_CUBIC),
                    [Face((0, 0, 100, 100), "inside")],
                )
                for face in lfw_faces
            ],
        ),
        Case("LFW non-faces, 25 x 25 px", [(_rgb(lfw[i]), []) for i in range(100, 200)]),
        Case(
            f"{len(NO_FACE_PHOTOS)} photos without faces",
            [(no_face(n), []) for n in NO_FACE_PHOTOS],
        ),
        Case("2 x 2 collage, 3 faces (1024 px)", [(collage, collage_faces)]),
        Case("4 x 4 grid of LFW faces (512 px)", [(grid, grid_faces)]),
    ]


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _matches(box: Sequence[int], face: Face) -> bool:
    """Whether ``box`` finds ``face`` under the face's rule."""
    if face.rule == "iou":
        return _iou(box, face.box) >= 0.5
    fx, fy, fw, fh = face.box
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return fx <= cx < fx + fw and fy <= cy < fy + fh and box[2] * box[3] >= fw * fh / 8


def score(boxes: Sequence[Sequence[int]], faces: Sequence[Face]) -> tuple[int, int]:
    """(faces found, false positives): each face takes at most one box, greedily."""
    left = list(boxes)
    found = 0
    for face in faces:
        hit = next((b for b in left if _matches(b, face)), None)
        if hit is not None:
            found += 1
            left.remove(hit)
    return found, len(left)


def _make(spec: str) -> Callable[[np.ndarray], Sequence[Sequence[int]]]:
    """The detector named by a :data:`DETECTORS` entry."""
    from fer_export.detectors import make_detector

    name, _, model = spec.partition(":")
    return make_detector(name, model=model or "short")


def run_here(specs: Sequence[str]) -> dict[str, Any]:
    """Results of ``specs`` in this interpreter: per detector, per case, found / FP / expected."""
    import fer_export.detectors

    cases = load_cases()
    results: dict[str, Any] = {}
    for spec in specs:
        detector = _make(spec)
        rows = {}
        for case in cases:
            found = false_positives = 0
            for image, faces in case.images:
                f, fp = score(detector(image), faces)
                found, false_positives = found + f, false_positives + fp
            rows[case.name] = {
                "found": found,
                "expected": case.expected,
                "false_positives": false_positives,
            }
        timings = []
        for case in cases[:3]:
            image = case.images[0][0]
            for _ in range(TIMING_REPEATS):
                start = time.perf_counter()
                detector(image)
                timings.append(time.perf_counter() - start)
        results[spec] = {
            "cases": rows,
            "median_ms_photo": round(1000 * statistics.median(timings), 1),
            "detector": detector.describe(),  # type: ignore[attr-defined]
        }
    try:
        import mediapipe

        mediapipe_version = mediapipe.__version__
    except Exception:
        mediapipe_version = None
    return {
        "environment": {
            "python": sys.executable,
            "python_version": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "mediapipe": mediapipe_version,
            "fer_export": fer_export.detectors.__file__,
        },
        "detectors": results,
        "cases": [case.name for case in cases],
    }


def _mediapipe_here() -> bool:
    """Whether mediapipe's face detector can be built in this interpreter."""
    from fer_export.detectors import MediaPipeUnavailableError, make_detector

    try:
        make_detector("mediapipe")
    except MediaPipeUnavailableError:
        return False
    return True


def run_elsewhere(python: str, specs: Sequence[str]) -> dict[str, Any]:
    """``run_here(specs)`` in another interpreter (this script with ``--worker``)."""
    proc = subprocess.run(
        [python, str(Path(__file__).resolve()), "--worker", "--detectors", *specs],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd="/",  # the installed fer-export there, never this checkout's sources
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{python} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def table(runs: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: a row per case, a column per detector (found/expected, FP)."""
    columns = [(spec, res) for run in runs for spec, res in run["detectors"].items()]
    cases = runs[0]["cases"]
    header = ["images"] + [spec.replace(":", " ") for spec, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for case in cases:
        cells = [case]
        for _, res in columns:
            row = res["cases"][case]
            found = f"{row['found']}/{row['expected']}" if row["expected"] else "-"
            cells.append(f"{found}, FP {row['false_positives']}")
        lines.append("| " + " | ".join(cells) + " |")
    timing = [f"{res['median_ms_photo']} ms" for _, res in columns]
    lines.append("| median time per 512-600 px photo | " + " | ".join(timing) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    parser.add_argument(
        "--mediapipe-python",
        default=os.environ.get("FER_MEDIAPIPE_PYTHON"),
        help="python of a venv with mediapipe 0.10.18 (default: $FER_MEDIAPIPE_PYTHON)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        json.dump(run_here(args.detectors), sys.stdout)
        return 0

    here = [d for d in args.detectors if not d.startswith("mediapipe")]
    there = [d for d in args.detectors if d.startswith("mediapipe")]
    if there and _mediapipe_here():
        here, there = args.detectors, []
    if there and not args.mediapipe_python:
        raise SystemExit(
            "mediapipe is not importable here: pass --mediapipe-python (or set "
            "FER_MEDIAPIPE_PYTHON) to the venv .ci/mediapipe-env builds, or --detectors haar"
        )
    runs = []
    if here:
        runs.append(run_here(here))
    if there:
        runs.append(run_elsewhere(args.mediapipe_python, there))
    for run in runs:
        env = run["environment"]
        print(
            f"# {', '.join(run['detectors'])}: Python {env['python_version']}, numpy "
            f"{env['numpy']}, OpenCV {env['opencv']}, mediapipe {env['mediapipe'] or '-'}"
        )
    print(table(runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
