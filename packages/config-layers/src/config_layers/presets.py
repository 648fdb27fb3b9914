"""Named configuration files shipped inside a package (``--preset NAME``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from config_layers.errors import ConfigError, did_you_mean


class Presets:
    """The ``*.yaml`` files of the package ``package``, each a preset named after its file.

    >>> presets = Presets("bandpo_train.presets")  # doctest: +SKIP
    >>> presets.files("paper_band")  # doctest: +SKIP
    [PosixPath('.../bandpo_train/presets/paper_band.yaml')]
    """

    def __init__(self, package: str) -> None:
        self.package = package

    def names(self) -> list[str]:
        """Returns the names of the presets, sorted."""
        root = resources.files(self.package)
        return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))

    def path(self, name: str) -> Path:
        """Returns the file of preset ``name``.

        Raises ``ConfigError`` (a ``ValueError``) for an unknown name, with the closest valid
        one and the list of valid names.
        """
        names = self.names()
        if name not in names:
            hint = did_you_mean(name, names, style=" (")
            raise ConfigError(f"unknown preset {name!r}{hint}; valid: {', '.join(names)}")
        return Path(str(resources.files(self.package) / f"{name}.yaml"))

    def files(self, name: str | None) -> list[Path]:
        """Returns ``[path(name)]``, or ``[]`` for None: the ``base_files`` of ``load_config``."""
        return [] if name is None else [self.path(name)]
