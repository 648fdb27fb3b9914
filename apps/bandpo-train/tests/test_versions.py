"""The versions recorded by runs and studies: one function, distribution names as keys."""

from __future__ import annotations

import platform
from importlib import metadata

from bandpo_train.versions import STACK, versions


def test_versions_names_python_and_every_distribution_of_the_stack() -> None:
    found = versions()
    assert found["python"] == platform.python_version()
    assert set(found) == {"python", *STACK}
    assert found["band-ops"] == metadata.version("band-ops")
    assert found["bandpo-train"] == metadata.version("bandpo-train")
