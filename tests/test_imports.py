"""Imports sit at module top, so a reader (or a tool) sees each module's dependencies in one place.

The one exception is `mergeguard.lazy.HEAVY_MODULES`: those are imported inside the function that needs them,
and must never be imported at the top of a package module (they would slow every command's start).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mergeguard.lazy import is_heavy

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("mergeguard", "auditor", "merge", "benchmarks", "db")


def _package_files() -> list[Path]:
    return sorted(path for folder in PACKAGE_DIRS for path in (ROOT / folder).rglob("*.py"))


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative import: first-party
        return [f".{node.module or ''}"]
    return [node.module or ""]


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def import_problems(path: Path) -> list[str]:
    """`file:line module (why)` for each import that breaks the rule."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    name = path.relative_to(ROOT)
    for top in tree.body:
        if _type_checking_block(top):
            continue
        for node in ast.walk(top):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            inside = node is not top and not isinstance(top, ast.If | ast.Try)
            for module in _imported(node):
                if inside and not is_heavy(module):
                    problems.append(f"{name}:{node.lineno} {module} (inside a function: move to the top)")
                if not inside and is_heavy(module):
                    problems.append(f"{name}:{node.lineno} {module} (heavy: import it where it is used)")
    return problems


@pytest.mark.parametrize("path", _package_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_follow_the_rule(path: Path) -> None:
    assert import_problems(path) == []


def test_the_rule_sees_both_kinds_of_mistake(tmp_path: Path) -> None:
    bad = ROOT / "mergeguard" / "_probe_for_the_import_rule.py"
    bad.write_text("import torch\n\n\ndef f():\n    import json\n    return json\n", encoding="utf-8")
    try:
        problems = import_problems(bad)
    finally:
        bad.unlink()
    assert [problem.split(" ", 2)[1] for problem in problems] == ["torch", "json"]


def _fresh_python(code: str) -> str:
    """What `code` prints in a new interpreter (this one has imported everything already)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return done.stdout.strip()


def test_each_command_module_registers_its_commands_alone() -> None:
    """`COMMAND_MODULES` is the CLI's table of contents: loading one command's module registers that
    command (so `main` may load only it), and loading all registers exactly the table's commands."""
    code = (
        "import sys, json; from mergeguard.cli import COMMAND_MODULES, load_commands; "
        "app = load_commands(sys.argv[1:]); "
        "names = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]; "
        "print(json.dumps(names))"
    )
    from mergeguard.cli import COMMAND_MODULES

    every = json.loads(_fresh_python(code.replace("sys.argv[1:]", "None")))
    assert sorted(every) == sorted(COMMAND_MODULES)
    for command in ("merge", "audit", "leaderboard", "benchmarks"):
        alone = json.loads(_fresh_python(code.replace("sys.argv[1:]", repr([command, "--help"]))))
        assert command in alone and len(alone) < len(every)


def test_the_merge_command_loads_neither_the_scanner_nor_rich() -> None:
    """A merge that runs no audit and draws nothing (`--no-audit -q`, the merge benchmark's command) must
    not pay for the auditor's scanning modules, the probe or rich: they load when used."""
    code = (
        "import sys; from mergeguard.cli import load_commands; load_commands(['merge']); "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'rich' "
        "or m.startswith(('mergeguard.auditor.engines', 'mergeguard.auditor.detect', "
        "'mergeguard.auditor.probe', 'mergeguard.auditor.audit', 'mergeguard.demo')))))"
    )
    assert _fresh_python(code) == ""
