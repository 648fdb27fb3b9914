"""Without ONNX Runtime (fer-export leaves it out on linux aarch64) the error says what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fer_export._ort import JETSON_HINT, OnnxRuntimeMissingError, install_hint


@pytest.mark.parametrize(
    "module", ["fer_export.session", "fer_export.providers", "fer_export.bench"]
)
def test_import_without_onnxruntime_names_what_to_install(module: str) -> None:
    # sys.modules[name] = None makes `import name` raise ImportError, as on a box without it.
    code = (
        "import sys\n"
        "sys.modules['onnxruntime'] = None\n"
        "from fer_export._ort import OnnxRuntimeMissingError\n"
        "try:\n"
        f"    import {module}\n"
        "except OnnxRuntimeMissingError as exc:\n"
        "    assert isinstance(exc, ModuleNotFoundError) and exc.name == 'onnxruntime'\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without onnxruntime')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("fer-export needs ONNX Runtime, which is not installed")
    assert install_hint() in done.stdout


def test_hint_per_platform() -> None:
    assert install_hint("linux", "aarch64") == JETSON_HINT
    assert "Jetson_Zoo" in JETSON_HINT and 'pip install "fer-export[cpu]"' in JETSON_HINT
    assert install_hint("linux", "x86_64").startswith("pip install onnxruntime-gpu")
    assert "onnxruntime-gpu[cuda,cudnn]" in install_hint("linux", "x86_64")
    assert install_hint("darwin", "arm64") == "pip install onnxruntime"
    assert install_hint("win32", "AMD64") == "pip install onnxruntime"
    assert issubclass(OnnxRuntimeMissingError, ModuleNotFoundError)
