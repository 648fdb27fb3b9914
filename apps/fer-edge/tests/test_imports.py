"""Every fer_edge module imports with torch and capsnet_model blocked (the edge box has neither)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import fer_edge


def test_no_torch_needed() -> None:
    found = pkgutil.iter_modules(fer_edge.__path__)
    modules = sorted(f"fer_edge.{m.name}" for m in found if m.name != "__main__")
    wanted = {"fer_edge.cli", "fer_edge.server", "fer_edge.pipeline", "fer_edge.sources"}
    assert wanted <= set(modules)
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['capsnet_model'] = None\n"
        f"import {', '.join(modules)}\n"
        "import fer_export.runtime\n"
        "from fer_edge.cli import build_parser; build_parser()\n"
        "assert sys.modules['torch'] is None and sys.modules['capsnet_model'] is None\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
