"""Checker for the dependency rules of ARCHITECTURE.md (stdlib only).

The rules themselves, and what counts as a violation, are documented in
``test_dependency_rules.py``; this module only implements them.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

MEMBER_GLOBS: dict[str, str] = {
    "package": "packages/*/pyproject.toml",
    "app": "apps/*/pyproject.toml",
}

OPENCV = (
    "opencv-python",
    "opencv-python-headless",
    "opencv-contrib-python",
    "opencv-contrib-python-headless",
)
ONNXRUNTIME = ("onnxruntime", "onnxruntime-gpu")

# Top-level import name -> the distributions that may provide it, for every import whose
# distribution is not simply the import name with "_" -> "-" (the default). Workspace members
# are mapped automatically from their src/ directories.
IMPORT_TO_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "cv2": OPENCV,
    "onnxruntime": ONNXRUNTIME,
    "yaml": ("pyyaml",),
    "PIL": ("pillow",),
    "sklearn": ("scikit-learn",),
    "skimage": ("scikit-image",),
    "attr": ("attrs",),
    "dateutil": ("python-dateutil",),
    "dotenv": ("python-dotenv",),
    "multipart": ("python-multipart",),
    "bs4": ("beautifulsoup4",),
    "jwt": ("pyjwt",),
    "zmq": ("pyzmq",),
    "pkg_resources": ("setuptools",),
}


@dataclass(frozen=True)
class Rule:
    """What one package may depend on and import (one row of ARCHITECTURE.md's table).

    runtime: distributions allowed in ``[project].dependencies`` and importable anywhere.
    extras: extra name -> distributions that only that extra may add.
    extra_modules: extra name -> dotted modules (and their submodules) that are that extra's
        side of the package: there, the extra's distributions may be imported at module level.
    """

    runtime: frozenset[str]
    extras: Mapping[str, frozenset[str]] = field(default_factory=dict)
    extra_modules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def allowed(self) -> frozenset[str]:
        return self.runtime.union(*self.extras.values())


# ARCHITECTURE.md, "Dependency rules" (tests/test_architecture.py compares the two). Apps have
# no row: they may import anything they declare.
RULES: dict[str, Rule] = {
    "band-ops": Rule(
        runtime=frozenset({"torch"}),
        extras={"trl": frozenset({"trl"})},
        extra_modules={"trl": ("band_ops.trl",)},
    ),
    # Configuration: plain dataclasses validated by pydantic, YAML files and overrides.
    "config-layers": Rule(runtime=frozenset({"pydantic", "pyyaml"})),
    "rl-trainer": Rule(
        # tqdm (progress bar) and tokenizers (local character tokenizers)
        # are already required by transformers;
        # declaring them keeps the imports honest without adding an install.
        runtime=frozenset(
            {
                "band-ops",
                "config-layers",
                "torch",
                "transformers",
                "accelerate",
                "peft",
                "safetensors",
                "datasets",
                "tqdm",
                "tokenizers",
            }
        ),
        extras={"math": frozenset({"math-verify"})},
    ),
    # Decoding with a pixel limit, shared by the training loaders and the edge runtime.
    "fer-images": Rule(runtime=frozenset({"numpy", *OPENCV})),
    # safetensors: checkpoints (ARCHITECTURE.md conventions); tqdm: the training progress bar.
    "capsnet-model": Rule(
        runtime=frozenset(
            {
                "torch",
                "numpy",
                "albumentations",
                *OPENCV,
                "safetensors",
                "tqdm",
                "fer-images",
                "config-layers",
            }
        )
    ),
    "fer-export": Rule(
        runtime=frozenset({*ONNXRUNTIME, "onnx", "numpy", *OPENCV, "fer-images"}),
        extras={"export": frozenset({"torch", "onnxscript", "capsnet-model"})},
        extra_modules={"export": ("fer_export.export",)},
    ),
}


def normalize(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQ_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    match = _REQ_NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return normalize(match.group(1))


@dataclass(frozen=True)
class Member:
    name: str
    kind: str  # "package" or "app"
    root: Path
    import_names: frozenset[str]
    dependencies: frozenset[str]
    extras: Mapping[str, frozenset[str]]
    problems: tuple[str, ...] = ()  # pyproject problems found while loading


def load_member(pyproject: Path, kind: str) -> Member:
    with pyproject.open("rb") as fh:
        project = tomllib.load(fh).get("project", {})
    root = pyproject.parent
    problems: list[str] = []
    name = normalize(project.get("name", root.name))
    if "dependencies" in project.get("dynamic", ()):
        problems.append("[project].dependencies is dynamic; declare it statically")
    deps = frozenset(requirement_name(r) for r in project.get("dependencies", ()))
    extras = {
        normalize(extra): frozenset(requirement_name(r) for r in reqs)
        for extra, reqs in project.get("optional-dependencies", {}).items()
    }
    src = root / "src"
    import_names = frozenset(
        p.parent.name if p.name == "__init__.py" else p.stem
        for p in [*src.glob("*/__init__.py"), *src.glob("*.py")]
    )
    if not import_names:
        problems.append(f"no importable package under {src}")
    return Member(name, kind, root, import_names, deps, extras, tuple(problems))


def discover(root: Path) -> list[Member]:
    """Every workspace member under ``root`` (packages/*, apps/*), sorted by name."""
    members = [
        load_member(pyproject, kind)
        for kind, pattern in MEMBER_GLOBS.items()
        for pyproject in root.glob(pattern)
    ]
    return sorted(members, key=lambda m: m.name)


@dataclass(frozen=True)
class ImportSite:
    """One imported module, where it is imported, and how."""

    target: str  # absolute dotted module name
    owner: str  # dotted name of the module containing the import
    path: Path
    line: int
    in_function: bool  # executed only when a function runs
    guarded: bool  # in a try whose handlers catch ImportError, or under `if TYPE_CHECKING:`

    @property
    def top(self) -> str:
        return self.target.partition(".")[0]

    @property
    def lazy(self) -> bool:
        return self.in_function or self.guarded


# Exception types whose handler catches a failed import.
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:  # bare `except:`
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    for node in types:
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        if name in _IMPORT_ERRORS:
            return True
    return False


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, path: Path, owner: str, is_package: bool) -> None:
        self.path = path
        self.owner = owner
        # The package relative imports are resolved against.
        self.package = owner if is_package else owner.rpartition(".")[0]
        self.function_depth = 0
        self.guard_depth = 0
        self.sites: list[ImportSite] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        self.sites.append(
            ImportSite(
                target=target,
                owner=self.owner,
                path=self.path,
                line=node.lineno,
                in_function=self.function_depth > 0,
                guarded=self.guard_depth > 0,
            )
        )

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.function_depth += 1
        self.generic_visit(node)
        self.function_depth -= 1

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def _visit_guarded(self, nodes: Iterable[ast.AST]) -> None:
        self.guard_depth += 1
        for child in nodes:
            self.visit(child)
        self.guard_depth -= 1

    def _visit_try(self, node: ast.Try | ast.TryStar) -> None:
        if any(_catches_import_error(h) for h in node.handlers):
            self._visit_guarded(node.body)
        else:
            for stmt in node.body:
                self.visit(stmt)
        for handler in node.handlers:
            self.visit(handler)
        for stmt in [*node.orelse, *node.finalbody]:
            self.visit(stmt)

    visit_Try = _visit_try
    visit_TryStar = _visit_try

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._visit_guarded(node.body)
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0:
            assert node.module is not None
            base = node.module
        else:
            parts = self.package.split(".") if self.package else []
            keep = len(parts) - (node.level - 1)
            if keep <= 0:
                return  # relative import beyond the top-level package: Python rejects it too
            base = ".".join([*parts[:keep], *([node.module] if node.module else [])])
        self._add(base, node)
        # `from pkg import sub` may import the submodule pkg.sub.
        for alias in node.names:
            if alias.name != "*":
                self._add(f"{base}.{alias.name}", node)


def module_name(src: Path, path: Path) -> tuple[str, bool]:
    """Dotted module name of ``path`` below ``src`` and whether it is a package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def collect_imports(member: Member) -> Iterator[ImportSite | str]:
    """Every import in the member's src/ (ImportSite), or an error string for unparsable files."""
    src = member.root / "src"
    for path in sorted(src.rglob("*.py")):
        owner, is_package = module_name(src, path)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError) as exc:
            yield f"{path}: cannot parse: {exc}"
            continue
        collector = _ImportCollector(path, owner, is_package)
        collector.visit(tree)
        yield from collector.sites


@dataclass(frozen=True)
class Violation:
    member: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"[{self.member}] {self.kind}: {self.message}"


def _in_modules(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


class Checker:
    """Checks members against RULES, resolving imports across the given workspace."""

    def __init__(self, members: Iterable[Member], rules: Mapping[str, Rule] = RULES) -> None:
        self.members = list(members)
        self.rules = rules
        self.member_by_import = {imp: m for m in self.members for imp in m.import_names}
        self.apps = {m.name for m in self.members if m.kind == "app"}

    def distributions(self, top: str) -> tuple[str, ...]:
        """The distributions that may provide top-level import ``top``."""
        if top in self.member_by_import:
            return (self.member_by_import[top].name,)
        return IMPORT_TO_DISTRIBUTIONS.get(top, (normalize(top),))

    def check(self, member: Member) -> list[Violation]:
        out = [Violation(member.name, "pyproject", p) for p in member.problems]
        rule = self.rules.get(member.name)
        if member.kind == "package" and rule is None:
            out.append(
                Violation(
                    member.name,
                    "no-rule",
                    "package has no row in ARCHITECTURE.md's dependency table "
                    "(add one there and to RULES in tests/dependency_rules.py)",
                )
            )
        if rule is not None:
            out += self._check_declared(member, rule)
        out += self._check_imports(member, rule)
        return out

    def _check_declared(self, member: Member, rule: Rule) -> list[Violation]:
        out = []
        declared = [("[project].dependencies", "", member.dependencies)]
        declared += [(f"extra [{e}]", e, deps) for e, deps in sorted(member.extras.items())]
        for where, extra, deps in declared:
            allowed = rule.runtime | rule.extras.get(extra, frozenset())
            for dist in sorted(deps - allowed - {member.name}):
                what = "an app" if dist in self.apps else dist
                out.append(
                    Violation(
                        member.name,
                        "forbidden-dependency",
                        f"{where} declares {what} ({dist}); allowed there: {sorted(allowed)}",
                    )
                )
        return out

    def _check_imports(self, member: Member, rule: Rule | None) -> list[Violation]:
        out = []
        extra_modules = rule.extra_modules if rule else {}
        seen: set[tuple[Path, int, str]] = set()
        for site in collect_imports(member):
            if isinstance(site, str):
                out.append(Violation(member.name, "unparsable", site))
                continue
            top = site.top
            if top in sys.stdlib_module_names:
                continue
            where = f"{site.path}:{site.line}: imports {site.target}"
            if top in member.import_names:
                for violation in self._check_internal(member, site, extra_modules, where):
                    if (site.path, site.line, violation.kind) not in seen:
                        seen.add((site.path, site.line, violation.kind))
                        out.append(violation)
                continue
            if (site.path, site.line, top) in seen:
                continue  # `from x import a, b` is one import of x
            seen.add((site.path, site.line, top))
            where = f"{site.path}:{site.line}: imports {top}"
            dists = set(self.distributions(top))
            if member.kind == "package" and dists & self.apps:
                out.append(
                    Violation(member.name, "imports-app", f"{where}: packages never import apps")
                )
                continue
            if rule is not None and not dists & rule.allowed:
                out.append(
                    Violation(
                        member.name,
                        "forbidden-import",
                        f"{where} ({'/'.join(sorted(dists))}); {member.name} may import only "
                        f"{sorted(rule.allowed)}",
                    )
                )
                continue
            if dists & member.dependencies:
                continue
            extras = sorted(e for e, deps in member.extras.items() if dists & deps)
            if not extras:
                out.append(
                    Violation(
                        member.name,
                        "undeclared-import",
                        f"{where}: {'/'.join(sorted(dists))} is not declared in "
                        "[project].dependencies or an optional-dependencies extra "
                        "(if the import name differs from the distribution, add it to "
                        "IMPORT_TO_DISTRIBUTIONS)",
                    )
                )
                continue
            sides = [m for e in extras for m in extra_modules.get(e, ())]
            if site.lazy or _in_modules(site.owner, sides):
                continue
            places = "inside a function, under try/except ImportError"
            if sides:
                places += f", or in {' / '.join(sides)}"
            out.append(
                Violation(
                    member.name,
                    "unguarded-optional-import",
                    f"{where}: {'/'.join(sorted(dists))} is only in extra "
                    f"{', '.join(f'[{e}]' for e in extras)}; import it {places}",
                )
            )
        return out

    @staticmethod
    def _check_internal(
        member: Member, site: ImportSite, extra_modules: Mapping[str, tuple[str, ...]], where: str
    ) -> list[Violation]:
        """A module outside an extra's side must not import that side at module level."""
        if site.lazy:
            return []
        out = []
        for extra, sides in extra_modules.items():
            if _in_modules(site.target, sides) and not _in_modules(site.owner, sides):
                out.append(
                    Violation(
                        member.name,
                        "unguarded-optional-import",
                        f"{where}: {site.owner} imports the [{extra}] side at module level; "
                        "import it inside a function or under try/except ImportError",
                    )
                )
        return out
