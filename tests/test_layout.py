"""The code's layout stays as documented: one-way imports, one home per concern, SQL shipped.

Reads the import statements of every module under ``tasks/`` and ``flows/`` (with
``ast``, top level and inside functions) and checks the order written at the top
of ``tasks/__init__.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEVEL_1 = ("tasks.store", "tasks.defaults")
LEVEL_2 = ("tasks.datasets", "tasks.descriptions")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def _modules(folder: str) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in (REPO / folder).rglob("*.py")}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _ours(imports: set[str]) -> set[str]:
    return {i for i in imports if i.split(".")[0] in ("tasks", "flows")}


def test_store_and_defaults_import_nothing_else_of_the_pipeline():
    for mod, imps in _modules("tasks").items():
        if _under(mod, LEVEL_1):
            bad = {i for i in _ours(imps) if not _under(i, LEVEL_1) and i != "tasks"}
            assert not bad, f"{mod} imports {bad}"


def test_datasets_and_descriptions_stand_on_the_store_only():
    for mod, imps in _modules("tasks").items():
        if _under(mod, ("tasks.datasets",)):
            bad = {i for i in _ours(imps) if not _under(i, LEVEL_1 + ("tasks.datasets",)) and i != "tasks"}
            assert not bad, f"{mod} imports {bad}"
        if _under(mod, ("tasks.descriptions",)):
            bad = {i for i in _ours(imps) if not _under(i, LEVEL_1 + LEVEL_2) and i != "tasks"}
            assert not bad, f"{mod} imports {bad}"


def test_nothing_in_tasks_imports_flows():
    for mod, imps in _modules("tasks").items():
        assert not {i for i in imps if i.split(".")[0] == "flows"}, mod


def test_only_task_modules_and_flows_talk_to_prefect():
    for mod, imps in _modules("tasks").items():
        if any(i.split(".")[0] == "prefect" for i in imps):
            assert not _under(mod, LEVEL_1 + LEVEL_2), f"{mod} imports prefect"


def test_one_home_for_schemas_paths_and_markers():
    """Arrow schemas are built only in tasks/store/tables.py; commit markers are named only
    through tasks/store (no literal '_commits' and no 'removesuffix(".parquet")' keys elsewhere)."""
    for path in list((REPO / "tasks").rglob("*.py")) + list((REPO / "flows").rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(REPO).as_posix()
        if rel != "tasks/store/tables.py":
            assert "pa.schema(" not in text, f"{rel} defines an Arrow schema"
        if not rel.startswith("tasks/store/"):
            assert '"_commits' not in text and "'_commits" not in text, rel
            assert 'removesuffix(".parquet")' not in text, rel


def test_no_import_cycles_between_modules():
    mods = {**_modules("tasks"), **_modules("flows")}
    graph = {m: {i for i in _ours(imps) if i in mods and i != m} for m, imps in mods.items()}
    # packages import their own submodules; a cycle through an __init__ re-export is not a real one
    packages = {m for m in mods if (REPO / Path(*m.split("."))).is_dir()}
    seen, stack = set(), []

    def visit(m):
        if m in stack:
            cycle = stack[stack.index(m):] + [m]
            assert any(c in packages for c in cycle), f"import cycle: {' -> '.join(cycle)}"
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for n in graph[m]:
            visit(n)
        stack.pop()

    for m in graph:
        visit(m)


def test_a_regular_install_ships_the_sql(tmp_path):
    """A non-editable wheel holds every view and query, and tasks.catalog finds them there."""
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and "setuptools" in res.stderr and "No module named" in res.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert res.returncode == 0, res.stderr[-2000:]
    import zipfile

    wheel = next(tmp_path.glob("abs_eval-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"sql/{p.relative_to(REPO / 'sql').as_posix()}" for p in (REPO / "sql").rglob("*.sql")}
    assert want and want <= names, sorted(want - names)
    configs = {f"abs_model/{p.relative_to(REPO / 'abs_model').as_posix()}"
               for p in (REPO / "abs_model" / "model_configs").rglob("*.json")}
    assert configs and configs <= names, sorted(configs - names)  # the shipped tiny models
