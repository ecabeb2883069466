"""The rooms (docs/architecture.md) and the size limits, checked on the source.

The import contracts live in pyproject.toml's [tool.importlinter] and are run here
with import-linter's `lint-imports`; what it cannot express (the engine must not use
aiohttp's server side, a subpackage of an external package) is checked with `ast`.
No product module over 400 lines, no function over 60."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def engine_modules() -> list[Path]:
    """mailtalk/ without the command's wiring (mailtalk/cli/)."""
    cli = ROOT / "mailtalk" / "cli"
    return sorted(p for p in (ROOT / "mailtalk").rglob("*.py") if cli not in p.parents)


def product_modules() -> list[Path]:
    return sorted([*(ROOT / "mailtalk").rglob("*.py"), *(ROOT / "milter").glob("*.py"),
                   *(ROOT / "presence_api").glob("*.py")])


def is_aiohttp_web(module: str) -> bool:
    """aiohttp's server side: aiohttp.web and its aiohttp.web_* modules."""
    return module == "aiohttp.web" or module.startswith(("aiohttp.web.", "aiohttp.web_"))


def aiohttp_web_imports(source: str, name: str) -> list[str]:
    """`name:line: statement` for each import of aiohttp's server side in `source`."""
    out = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        if any(is_aiohttp_web(m) for m in modules):
            out.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return out


def long_functions(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}() "
                           f"{lines} lines")
    return out


def test_import_contracts_hold() -> None:
    """cli -> adapters -> engine, as pyproject.toml's [tool.importlinter] contracts."""
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing (pip install import-linter)"
    r = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_engine_does_not_import_aiohttp_web() -> None:
    """The engine may be an HTTP client (aiohttp), never a server (aiohttp.web)."""
    for spelling in ("import aiohttp.web", "from aiohttp import web", "import aiohttp.web as w",
                     "from aiohttp import ClientSession, web_request",
                     "from aiohttp.web import Application", "from aiohttp.web_response import x"):
        assert aiohttp_web_imports(spelling, "probe"), spelling     # the check can fail
    assert aiohttp_web_imports("import aiohttp\nfrom aiohttp import ClientTimeout\n"
                               "from . import web\n", "probe") == []
    modules = engine_modules()
    assert ROOT / "mailtalk" / "lookup.py" in modules              # the walk finds the engine
    assert not any("cli" in p.relative_to(ROOT).parts for p in modules)
    offenders = [line for p in modules
                 for line in aiohttp_web_imports(p.read_text(), str(p.relative_to(ROOT)))]
    assert offenders == [], "the engine imports aiohttp's server side:\n" + "\n".join(offenders)


def test_no_product_module_over_400_lines_and_no_function_over_60() -> None:
    modules = product_modules()
    assert len(modules) > 20, modules                              # the globs found the code
    too_long = [f"{p.relative_to(ROOT)}: {n} lines" for p in modules
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    functions = [line for p in modules for line in long_functions(p)]
    problems = ([f"modules over {MAX_MODULE_LINES} lines:", *too_long] if too_long else []) + \
        ([f"functions over {MAX_FUNCTION_LINES} lines:", *functions] if functions else [])
    assert problems == [], "\n".join(problems)
