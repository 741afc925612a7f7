"""The map in docs/architecture.md holds: import rules (checked by import-linter, a maintained tool),
one home for the key layout and for the mode decision, and no oversized class without a reason."""

import ast
import io
import os
import pathlib
import re
import subprocess
import sys
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "persistjob"


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _strings(path):
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.STRING:
            yield tok.start[0], ast.literal_eval(tok.string) if not tok.string.startswith(("f", "F")) else tok.string


def test_import_rules_hold():
    """lint-imports reads the contracts in setup.cfg: layers, a worker side free of HTCondor and Work
    Queue, and the three independent parts of wq/."""
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    # --config: the only form import-linter 2.5 (the last for Python 3.9) knows; 2.17 still takes it
    r = subprocess.run([exe, "--config", "setup.cfg"], cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"Contracts: 3 kept, 0 broken", r.stdout), r.stdout


def test_key_layout_is_spelled_in_one_module():
    layout = PACKAGE / "repo" / "layout.py"
    pattern = re.compile(r"(^|/)(log|manifests|chunks|runs|fenced|summary)/|^head$")
    found = {}
    for path in _sources():
        for line, text in _strings(path):
            if isinstance(text, str) and pattern.search(text):
                found.setdefault(path, []).append((line, text))
    assert set(found) == {layout}, {str(p.relative_to(ROOT)): v for p, v in found.items() if p != layout}


def test_the_mode_is_decided_in_one_place():
    """Mode names appear only where they are declared (options.MODE_NAMES and its default) and in the
    mode classes; no code compares a mode string."""
    allowed = {PACKAGE / "options.py", PACKAGE / "worker" / "modes.py"}
    for path in _sources():
        src = path.read_text()
        assert not re.search(r"mode\s*(==|!=)", src), path
        if path in allowed:
            continue
        for line, text in _strings(path):
            assert text not in ("freeze", "signal", "exit-code"), "%s:%d names a mode" % (path, line)


def test_no_class_over_250_lines_without_a_reason():
    for path in _sources():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                above = "\n".join(lines[max(0, node.lineno - 4):node.lineno - 1])
                assert "# Size:" in above, "%s: class %s has %d lines and no '# Size:' reason above it" % (
                    path.relative_to(ROOT), node.name, node.end_lineno - node.lineno + 1)


def test_every_module_is_on_the_map():
    """docs/architecture.md names every module and package of persistjob."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py":
            rel = rel[:-len("__init__.py")]
        if path.name == "__main__.py":
            continue
        assert rel in text, "%s is missing from docs/architecture.md" % rel


def test_sql_of_the_work_queue_executor_lives_only_in_its_job_table():
    table = PACKAGE / "wq" / "manager" / "table.py"
    sql = re.compile(r"\b(SELECT|UPDATE|INSERT|DELETE FROM|BEGIN|COMMIT|ROLLBACK)\b|\bIS (NOT )?NULL\b|\.execute\(|\.db\b")
    for path in _sources():
        if path == table or "wq" not in path.parts:
            continue
        for line, text in _strings(path):
            assert not (isinstance(text, str) and sql.search(text)), "%s:%d: SQL outside the job table" % (path, line)
        assert ".execute(" not in path.read_text() and ".db." not in path.read_text(), path
