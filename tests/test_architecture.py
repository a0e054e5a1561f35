"""The code's architecture stays as documented: folders by kind, one-way imports, one home per concern, SQL shipped.

Reads the import statements of every module under ``tasks/`` and ``flows/`` (with
``ast``, top level and inside functions), folds them into a graph of folders and
checks it against the order written at the top of ``tasks/__init__.py``.

The folder graph as it is (an arrow: "imports"; every arrow points down the levels)::

    6  flows ---------------------------------------------> every folder below
    5  tasks.steps -----------------------------------------> run, datasets, descriptions, store,
        |  (infer commits rollups with store.rollups)            defaults (never results)
    4  tasks.results ---> run (report's gallery, lazily), store, defaults
    3  tasks.run -------> datasets, descriptions, store, defaults
    2  tasks.descriptions -> datasets, store, defaults;  tasks.datasets -> store
    1  tasks.store    tasks.defaults                     (nothing else of tasks)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The folders (and the two single modules) of the pipeline in import order, lowest first:
#: a folder imports only folders of lower levels (and, within a level, what SAME_LEVEL allows).
LEVELS: tuple[tuple[str, ...], ...] = (
    ("tasks.store", "tasks.defaults"),
    ("tasks.datasets", "tasks.descriptions"),
    ("tasks.run",),
    ("tasks.results",),
    ("tasks.steps",),
    ("flows",),
)
#: Imports within a level: descriptions may use the datasets' name helpers, never the reverse.
SAME_LEVEL = {"tasks.descriptions": {"tasks.datasets"}}
FOLDERS = tuple(f for level in LEVELS for f in level)
LEVEL_OF = {f: n for n, level in enumerate(LEVELS, start=1) for f in level}
LEVEL_1, LEVEL_2 = LEVELS[0], LEVELS[1]
#: What the read side may not load when it is imported (tasks/results/__init__.py says why).
READ_SIDE = (
    "tasks.results.catalog",
    "tasks.results.runs",
    "tasks.results.report",
    "tasks.results.export",
    "tasks.results.formatting",
    "tasks.results.progress",
)


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


def _folder(name: str) -> str | None:
    """The documented folder a module (or an imported name) belongs to; None for ``tasks`` itself."""
    return next((f for f in FOLDERS if _under(name, (f,))), None)


def _folder_graph() -> dict[str, dict[str, set[str]]]:
    """``{folder: {imported folder: {"module -> imported name", ...}}}`` over tasks/ and flows/."""
    graph: dict[str, dict[str, set[str]]] = {f: {} for f in FOLDERS}
    for mod, imps in {**_modules("tasks"), **_modules("flows")}.items():
        a = _folder(mod)
        for imp in _ours(imps):
            b = _folder(imp)
            if a is not None and b is not None and a != b:
                graph[a].setdefault(b, set()).add(f"{mod} -> {imp}")
    return graph


def _drawn(graph: dict[str, dict[str, set[str]]]) -> str:
    return "\n".join(f"  {LEVEL_OF[a]} {a} -> {', '.join(sorted(graph[a])) or '(nothing)'}" for a in FOLDERS)


def test_every_module_of_tasks_lives_in_a_documented_folder():
    """``tasks/`` holds its folders, ``defaults.py`` and ``__init__.py``; no module sits loose beside them."""
    loose = sorted(m for m in _modules("tasks") if m != "tasks" and _folder(m) is None)
    assert not loose, f"modules outside the documented folders: {loose}"
    folders = {p.name for p in (REPO / "tasks").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {f"tasks.{name}" for name in folders} == {f for f in FOLDERS if f.startswith("tasks.")} - {"tasks.defaults"}


def test_the_folder_graph_is_acyclic_and_follows_the_documented_order():
    graph = _folder_graph()
    wrong = {
        f"{a} -> {b}": sorted(why)[:3]
        for a, targets in graph.items()
        for b, why in targets.items()
        if not (LEVEL_OF[b] < LEVEL_OF[a] or b in SAME_LEVEL.get(a, set()))
    }
    assert not wrong, f"imports against the order of tasks/__init__.py: {wrong}\nthe folder graph:\n{_drawn(graph)}"

    # acyclic (implied by the order above; checked on its own so a change to SAME_LEVEL cannot hide a cycle)
    done: set[str] = set()
    stack: list[str] = []

    def visit(f: str) -> None:
        assert f not in stack, f"folder import cycle: {' -> '.join(stack[stack.index(f) :] + [f])}\n{_drawn(graph)}"
        if f in done:
            return
        stack.append(f)
        for g in graph[f]:
            visit(g)
        stack.pop()
        done.add(f)

    for f in FOLDERS:
        visit(f)


def test_the_documented_order_is_the_one_tasks_init_writes():
    """The numbered list in tasks/__init__.py names the folders in the order LEVELS checks."""
    import tasks

    doc = tasks.__doc__ or ""
    for n, level in enumerate(LEVELS, start=1):
        start = doc.index(f"\n{n}. ")
        end = doc.index(f"\n{n + 1}. ") if n < len(LEVELS) else len(doc)
        for folder in level:
            assert f"``{folder}``" in doc[start:end], f"tasks/__init__.py does not name {folder} at level {n}"


def test_store_and_defaults_import_nothing_else_of_the_pipeline():
    for mod, imps in _modules("tasks").items():
        if _under(mod, LEVEL_1):
            bad = {i for i in _ours(imps) if not _under(i, (_folder(mod) or "",)) and i != "tasks"}
            assert not bad, f"{mod} imports {bad}"


def test_datasets_and_descriptions_stand_on_the_store_only():
    for mod, imps in _modules("tasks").items():
        if _under(mod, ("tasks.datasets",)):
            bad = {i for i in _ours(imps) if not _under(i, LEVEL_1 + ("tasks.datasets",)) and i != "tasks"}
            assert not bad, f"{mod} imports {bad}"
        if _under(mod, ("tasks.descriptions",)):
            bad = {i for i in _ours(imps) if not _under(i, LEVEL_1 + LEVEL_2) and i != "tasks"}
            assert not bad, f"{mod} imports {bad}"


def test_the_steps_write_through_the_store_never_the_read_side():
    """The pipeline's steps (writers) import nothing of ``tasks.results``: what they commit, the prediction
    rollups included (``tasks.store.rollups``), is committed through the store."""
    for mod, imps in _modules("tasks").items():
        if _under(mod, ("tasks.steps",)):
            assert not {i for i in _ours(imps) if _under(i, ("tasks.results",))}, mod


def test_nothing_in_tasks_imports_flows():
    for mod, imps in _modules("tasks").items():
        assert not {i for i in imps if i.split(".")[0] == "flows"}, mod


def test_only_the_steps_the_run_context_and_flows_talk_to_prefect():
    """Prefect in tasks/: the steps' ``@task`` lines, ``run.context``'s prepare task and the retry policy."""
    talk = sorted(m for m, imps in _modules("tasks").items() if any(i.split(".")[0] == "prefect" for i in imps))
    allowed = ("tasks.steps", "tasks.run.context", "tasks.run.retries")
    assert talk and all(_under(m, allowed) for m in talk), talk


def test_the_read_side_imports_without_torch_or_prefect():
    """``import tasks.results.catalog`` (or ``runs``, ``report``) loads no torch, model library or Prefect:
    reading a root costs a DuckDB import, not a model stack. (``tasks.run.evalspec`` likewise: the
    CLI's checks of a job read it before anything heavy.)"""
    code = (
        "import sys\n"
        f"for name in {READ_SIDE + ('tasks.run.evalspec',)!r}:\n"
        "    __import__(name)\n"
        "    heavy = sorted(m for m in ('torch', 'prefect', 'open_clip', 'timm', 'flows') if m in sys.modules)\n"
        "    print(name, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:-1] == [f"{name} []" for name in READ_SIDE + ("tasks.run.evalspec",)], out.stdout


def test_analyze_and_the_shared_prediction_helpers_import_without_prefect():
    """``abs-eval analyze`` is a plain function (``flows/analyze.py`` says why): importing it and the variants
    step loads no Prefect, because what they share with inference (which parts are committed, logits to score
    columns) lives in ``tasks.store.predictions``, which loads neither Prefect nor torch."""
    code = (
        "import sys\n"
        "for name in ('tasks.store.predictions', 'tasks.steps.variants', 'flows.analyze'):\n"
        "    __import__(name)\n"
        "    print(name, sorted(m for m in ('torch', 'prefect') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:-1] == [
        "tasks.store.predictions []",
        "tasks.steps.variants ['torch']",
        "flows.analyze ['torch']",
    ], out.stdout


def test_the_sub_packages_say_what_they_hold_and_import_nothing():
    """Each folder's ``__init__.py`` has a docstring and no import of its own (importing a package
    must not load its modules: shard workers import ``tasks.store.images`` and nothing more)."""
    for folder in ("steps", "run", "results"):
        path = REPO / "tasks" / folder / "__init__.py"
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path} has no docstring"
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not imports, f"{path} imports {[ast.unparse(n) for n in imports]}"


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
            cycle = stack[stack.index(m) :] + [m]
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
    """A non-editable wheel holds every view and query (tasks.results.catalog finds them there), the
    tiny model configs, and every module of tasks/ and flows/."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode != 0 and "setuptools" in res.stderr and "No module named" in res.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert res.returncode == 0, res.stderr[-2000:]
    import zipfile

    wheel = next(tmp_path.glob("abs_eval-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"sql/{p.relative_to(REPO / 'sql').as_posix()}" for p in (REPO / "sql").rglob("*.sql")}
    assert want and want <= names, sorted(want - names)
    configs = {
        f"abs_model/{p.relative_to(REPO / 'abs_model').as_posix()}"
        for p in (REPO / "abs_model" / "model_configs").rglob("*.json")
    }
    assert configs and configs <= names, sorted(configs - names)  # the shipped tiny models
    modules = {p.relative_to(REPO).as_posix() for top in ("tasks", "flows") for p in (REPO / top).rglob("*.py")}
    assert modules <= names, sorted(modules - names)  # every folder of tasks/ is a package that ships
