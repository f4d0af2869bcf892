"""The package's shape: stage packages, no import cycle (lazy imports count), every module importable on its
own, modules of about 400 lines, a thin command line."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "facesynth"
STAGES = ["recipe", "plan", "generation", "checks", "folder", "dataset_card", "review", "evaluate", "audit", "cli"]
TOP = ["__init__", "__main__", "builder", "errors", "hub_names", "publish", "reproduce", "tiny", "validate"]
LONGEST = 420  # lines: "about 400"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        name = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every facesynth module ``name`` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in known else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on:
                low[node] = min(low[node], index[child])
    return out


def test_the_tree_reads_like_the_pipeline():
    top = sorted(p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.name != "__pycache__")
    assert top == sorted([*STAGES, *TOP])
    for stage in STAGES:
        assert (SRC / stage / "__init__.py").is_file(), stage


def test_the_import_graph_has_no_cycle_lazy_imports_included():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check itself works


def test_every_import_names_a_module_that_exists_lazy_ones_too():
    """A lazy import inside a function is checked here, not when the function first runs."""
    known = modules()
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                assert target in known, f"{name}: line {node.lineno} imports {target}, which does not exist"


def test_every_module_imports_on_its_own():
    """Each module imported first, in a process of its own (forked after the third-party libraries loaded, so this
    takes seconds): an import-time cycle between packages would fail here whichever module comes first."""
    script = (
        "import os, sys, importlib\n"
        "import torch, diffusers, transformers, datasets, pyarrow.parquet, PIL.Image, click, pydantic, jinja2, yaml\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except BaseException as exc:\n"
        "            print(name, type(exc).__name__, exc, flush=True)\n"
        "            os._exit(1)\n"
        "        os._exit(0)\n"
        "    if os.waitpid(pid, 0)[1]:\n"
        "        failed.append(name)\n"
        "print('FAILED', failed)\n"
    )
    names = [n for n in modules() if not n.endswith("__main__")]
    got = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip().endswith("FAILED []"), got.stdout[-3000:]


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_about_400_lines(name):
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= LONGEST, f"{name}: {lines} lines; split it along its seams"


def test_the_command_line_is_thin():
    """Command modules import only the CLI's core at the top; the library loads inside each command (lazily)."""
    for path in sorted((SRC / "cli").glob("*.py")):
        if path.stem in ("__init__", "__main__", "core"):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.module == "core", f"{path.name}: imports .{'.' * (node.level - 1)}{node.module} at the top"
