"""Each DVC stage's code deps, derived from what the stage imports: `python -m tools.stage_deps [--write]`.

A stage `cmd: python -m stages.<name> ...` runs `stages/<name>.py` and every project module it imports,
transitively: module-level and function-level (lazy) imports alike, relative imports, `from pkg import mod`,
the package `__init__.py` files an import runs, and project files named by path (`"pyfunc_model.py"`, the MLflow
models-from-code entry). Project modules are those of `PACKAGES`; the Ray trainable is one of them, imported by
name (pipeline.search.tuner), so the modules trials run are in the search stage's closure.

`--check` (the default) exits 1 naming, per stage, each code file the stage runs that its `deps:` do not list
(with the import chain that reaches it) and each listed code file it does not run; `--write` rewrites only the
code entries of each `deps:` list in place (data deps, outs, params, plots and comments are left as they are;
a comment on a code entry goes with it).
A dynamic import (`importlib.import_module`, `__import__`) in project code is an error: it cannot be followed.
The one import by a runtime value the pipeline makes is the user's own CNN: `pretrain.backbone` in params.yaml
may name a builder `package.module:function` (pipeline.core.own_model), imported by every stage that builds the
model (those that load a model file: their closure holds `BUILDS_MODEL`). It is read from params.yaml: the
builder's module, and what it imports from its own top package, are deps of those stages when they are files in
the project (`builder_code`); an installed package is not DVC's to track.
tests/test_stage_deps.py runs the check on this project, so a stage can no longer run code DVC does not track.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path
from typing import Iterable, Optional

import yaml

from pipeline.core.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("prernn", "pipeline", "stages")
DYNAMIC_IMPORTS = {"import_module", "__import__", "spec_from_file_location", "run_module", "run_path"}
_CMD_MODULE = re.compile(r"\bpython3?\s+-m\s+([\w.]+)")
BUILDS_MODEL = "pipeline.core.checkpoint"  # a stage that imports it loads a model file: it builds pretrain.backbone


class DepsError(ValueError):
    """Project code the scanner cannot follow, or a dvc.yaml it cannot read."""


def module_file(root: Path, name: str) -> Optional[Path]:
    """The file of project module `name` under `root` (`a/b.py` or `a/b/__init__.py`), None when there is none."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _candidates(node: ast.AST, name: str, is_package: bool) -> Iterable[str]:
    """Module names an import node may load (each with its parent packages added later); `name`: importer."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = name.split(".") if is_package else name.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def _dynamic_import(node: ast.AST) -> Optional[str]:
    """The called name when `node` is a call that imports by a runtime value (importlib, __import__, runpy)."""
    if isinstance(node, ast.Call):
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if called in DYNAMIC_IMPORTS:
            return called
    return None


def direct_imports(root: Path, name: str, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Project modules that module `name` (a file under `root`) imports anywhere in its body, or names by path."""
    path = module_file(root, name)
    if path is None:
        raise DepsError(f"{name}: no such module under {root}")
    rel = path.relative_to(root).as_posix()
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as err:
        raise DepsError(f"{rel}:{err.lineno}: cannot parse: {err.msg}") from None
    found: set[str] = set()
    for node in ast.walk(tree):
        called = _dynamic_import(node)
        if called:
            raise DepsError(f"{rel}:{node.lineno}: {called}(...) imports by a runtime value, which "
                            "tools.stage_deps cannot follow; import the module by name")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py"):
            found.update(_modules_named(root, node.value, packages))
        for cand in _candidates(node, name, _is_package(path)):
            parts = cand.split(".")
            if parts[0] not in packages:
                continue
            for i in range(1, len(parts) + 1):  # `import a.b.c` runs a/__init__, a/b/__init__, a/b/c
                prefix = ".".join(parts[:i])
                if module_file(root, prefix) is not None:
                    found.add(prefix)
                elif i == len(parts) and cand not in _from_names(node, name, _is_package(path)):
                    raise DepsError(f"{rel}:{node.lineno}: imports {cand}, which is not a module under {root}")
    found.discard(name)
    return found


def _from_names(node: ast.AST, name: str, is_package: bool) -> set[str]:
    """The `base.x` candidates of `from base import x` (x may be a function, not a module: no error for it)."""
    if not isinstance(node, ast.ImportFrom):
        return set()
    return set(list(_candidates(node, name, is_package))[1:])


def _modules_named(root: Path, filename: str, packages: tuple[str, ...]) -> set[str]:
    """Project modules whose file is named `filename` (a path string such as "pyfunc_model.py" in the code)."""
    base = Path(filename).name
    if not re.fullmatch(r"\w+\.py", base) or base == "__init__.py":  # a module name, not a pattern ("*.py")
        return set()
    return {".".join(p.relative_to(root).with_suffix("").parts)
            for pkg in packages if (root / pkg).is_dir() for p in (root / pkg).rglob(base)}


def closure(root: Path, module: str, packages: tuple[str, ...] = PACKAGES) -> dict[str, Optional[str]]:
    """Every project module running `module` may import, each mapped to the module that first imports it
    (None for `module` and the packages above it), breadth first."""
    parents = module.split(".")
    seen: dict[str, Optional[str]] = {".".join(parents[:i]): None for i in range(1, len(parents) + 1)
                                      if module_file(root, ".".join(parents[:i])) is not None}
    queue = list(seen)
    while queue:
        current = queue.pop(0)
        for dep in sorted(direct_imports(root, current, packages)):
            if dep not in seen:
                seen[dep] = current
                queue.append(dep)
    return seen


def chain(via: dict[str, Optional[str]], module: str) -> str:
    """`stages.search -> pipeline.search.tuner -> pipeline.core.storage`: how the closure reached `module`."""
    steps = [module]
    while via.get(steps[-1]):
        steps.append(via[steps[-1]])
    return " -> ".join(reversed(steps))


def code_files(root: Path, module: str, packages: tuple[str, ...] = PACKAGES,
               builder: Optional[dict] = None) -> list[str]:
    """The files (posix, relative to `root`) of `module`'s closure (with the builder's, `stage_code`): its own file
    first, then sorted."""
    names = stage_code(root, module, packages, builder or {})
    files = {name: module_file(root, name).relative_to(root).as_posix() for name in names}
    own = files.pop(module)
    return [own] + sorted(files.values())


def builder_code(root: Path, params_yaml: Optional[Path] = None) -> tuple[tuple[str, ...], dict[str, Optional[str]]]:
    """(the builder's top package, its closure {module: importer}) for a `pretrain.backbone`
    `package.module:function` in `params_yaml` whose module is a file under `root`; ((), {}) otherwise."""
    params_yaml = params_yaml or root / "params.yaml"
    try:
        params = yaml.safe_load(params_yaml.read_text()) or {} if params_yaml.is_file() else {}
    except yaml.YAMLError as err:
        raise DepsError(f"{params_yaml}: cannot read: {err}") from None
    backbone = str(((params.get("pretrain") or {}) if isinstance(params, dict) else {}).get("backbone") or "")
    module = backbone.partition(":")[0]
    if ":" not in backbone or not module or module_file(root, module) is None:
        return (), {}
    top = (module.split(".")[0],)
    return top, closure(root, module, top)


def stage_code(root: Path, module: str, packages: tuple[str, ...], builder: dict) -> dict[str, Optional[str]]:
    """`closure(root, module)`, plus the builder's closure (`builder_code`) when the stage builds the model."""
    via = closure(root, module, packages)
    return {**builder, **via} if BUILDS_MODEL in via else via


def stage_modules(dvc_yaml: Path) -> dict[str, str]:
    """{stage: the module its `cmd` runs with `python -m`} for the stages of `dvc_yaml` that run one."""
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError) as err:
        raise DepsError(f"{dvc_yaml}: cannot read: {err}") from None
    out = {}
    for stage, spec in stages.items():
        cmd = spec.get("cmd", "") if isinstance(spec, dict) else ""
        match = _CMD_MODULE.search(" ".join(cmd) if isinstance(cmd, list) else str(cmd))
        if match:
            out[stage] = match.group(1)
    return out


def is_code(dep: str, packages: tuple[str, ...] = PACKAGES) -> bool:
    """Whether a dvc.yaml dep is project code (a path inside one of `packages`, or the package folder)."""
    return Path(dep).parts[:1] in [(p,) for p in packages]


def listed_deps(dvc_yaml: Path) -> dict[str, list[str]]:
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    return {stage: [d if isinstance(d, str) else next(iter(d)) for d in (spec.get("deps") or [])]
            for stage, spec in stages.items() if isinstance(spec, dict)}


def _covers(dep: str, path: str) -> bool:
    """Whether dvc.yaml dep `dep` (a file or a folder) tracks file `path`."""
    return path == dep or path.startswith(dep + "/")


def check(root: Path = ROOT, dvc_yaml: Optional[Path] = None, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """One line per problem: a code file a stage runs that no dep covers (a folder dep, e.g. `prernn`, covers
    the files in it), or a code dep the stage runs nothing of."""
    dvc_yaml = dvc_yaml or root / "dvc.yaml"
    listed = listed_deps(dvc_yaml)
    top, builder = builder_code(root)
    packages = packages + top
    problems = []
    for stage, module in stage_modules(dvc_yaml).items():
        via = stage_code(root, module, packages, builder)
        files = {module_file(root, name).relative_to(root).as_posix(): name for name in via}
        have = [d.rstrip("/") for d in listed.get(stage, []) if is_code(d, packages)]
        for path, name in sorted(files.items()):
            if not any(_covers(dep, path) for dep in have):
                problems.append(f"{dvc_yaml.name}: stage {stage}: runs {path} ({chain(via, name)}) "
                                "but does not list it in deps")
        for dep in have:
            if not any(_covers(dep, path) for path in files):
                problems.append(f"{dvc_yaml.name}: stage {stage}: lists {dep} in deps, but {module} "
                                "imports nothing there")
    return problems


_STAGE = re.compile(r"^  ([\w-]+):\s*(#.*)?$")
_DEPS = re.compile(r"^    deps:\s*(#.*)?$")
_ITEM = re.compile(r"^      - ([^#\s]+)\s*(#.*)?$")


def rewrite(text: str, code: dict[str, list[str]], packages: tuple[str, ...] = PACKAGES) -> str:
    """`text` (a dvc.yaml) with each stage's code deps replaced by `code[stage]`, in place of the first code
    entry (or first in the list); every other line is kept as it is."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _STAGE.match(line)
        if m:
            stage = m.group(1)
        if stage in code and _DEPS.match(line):
            out.append(line)
            i += 1
            items = []
            while i < len(lines) and _ITEM.match(lines[i]):
                items.append(lines[i])
                i += 1
            kept = [it for it in items if not is_code(_ITEM.match(it).group(1), packages)]
            first = next((k for k, it in enumerate(items) if is_code(_ITEM.match(it).group(1), packages)), 0)
            at = sum(1 for it in items[:first] if not is_code(_ITEM.match(it).group(1), packages))
            new = [f"      - {path}\n" for path in code[stage]]
            out.extend(kept[:at] + new + kept[at:])
            continue
        out.append(line)
        i += 1
    return "".join(out)


def write(root: Path = ROOT, dvc_yaml: Optional[Path] = None, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Rewrite the code deps of `dvc_yaml`; returns the stages whose deps changed."""
    dvc_yaml = dvc_yaml or root / "dvc.yaml"
    text = dvc_yaml.read_text()
    modules = stage_modules(dvc_yaml)
    missing = [s for s, deps in listed_deps(dvc_yaml).items() if s in modules and not deps]
    if missing:
        raise DepsError(f"{dvc_yaml}: stages {missing} have no deps: list; add `deps:` with the stage's file first")
    top, builder = builder_code(root)
    packages = packages + top
    code = {stage: code_files(root, module, packages, builder) for stage, module in modules.items()}
    new = rewrite(text, code, packages)
    before = listed_deps(dvc_yaml)
    write_text(dvc_yaml, new)
    after = listed_deps(dvc_yaml)
    return [s for s in modules if before.get(s) != after.get(s)]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dvc-yaml", type=Path, default=None, help="default: dvc.yaml in --root")
    ap.add_argument("--root", type=Path, default=ROOT, help="the project root (default: this checkout)")
    ap.add_argument("--write", action="store_true", help="rewrite the code deps instead of checking them")
    args = ap.parse_args(argv)
    try:
        if args.write:
            changed = write(args.root, args.dvc_yaml)
            print(f"stage_deps: code deps rewritten for {changed or 'no stage (already derived)'}")
            return 0
        problems = check(args.root, args.dvc_yaml)
    except DepsError as err:
        print(f"stage_deps: {err}", file=sys.stderr)
        return 2
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("stage_deps: run `python -m tools.stage_deps --write` to derive them", file=sys.stderr)
        return 1
    print("stage_deps: every stage's code deps are the modules it imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
