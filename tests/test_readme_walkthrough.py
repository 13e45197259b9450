"""The README's walkthrough, run command block by command block against a real ``broker dev``.

How README.md marks what runs (section ``## Walkthrough`` up to the next ``## `` heading):

- Every fenced ```` ```sh ```` block is a *command block*. All of them run, in README order,
  in one ``bash`` (variables carry over), so a new block cannot be forgotten by the test.
- The fenced block that directly follows a command block (nothing but blank lines or HTML
  comments between) and is not itself ``sh`` is its *expected output*: what the commands
  print on stdout and stderr together.
- Every command of a block must succeed, except as an HTML comment right before the block
  says: ``<!-- walkthrough: exit=N -->`` (the block's last command exits N: the README
  shows a refusal). Nothing else in the README is read by this test.

How output is compared (the README shows one run; ids, times and secrets differ in yours):

- ```` ```json ```` output is a stream of JSON values: the same number of them, the same
  field names at every level, list lengths, and values — except the fields in ``_VARYING``
  (only their type is compared). In strings, ids, times and hashes match any id, time or
  hash (``_NORMALIZE``), and ``…`` matches any text.
- Any other output is compared line by line, with whitespace ignored and the same
  normalization and ``…`` wildcard; a README line of only ``…`` stands for any number of
  lines, and the lines ``_SOMETIMES`` names may be printed any number of times.
- An id printed in the README where this run printed another (a UUID or its 8-character
  prefix) is learned and replaced in every later command (``_Substitutions``), as a reader
  types the id their own run printed.

Where the run differs from a reader's terminal (the one place, ``_workspace`` and
``_dev_env``): the working directory is a scratch directory laid out like the repository
(``.venv`` and ``policies`` link to this checkout, ``.broker`` is ``broker dev``'s state
directory), ``broker dev`` runs with ``--port 0`` (the commands read the URLs from
``.broker/dev.json``, as the README's do; a command naming ``http://127.0.0.1:8080`` or
``localhost:8080`` gets the real address, ``_run``), ``BROKER_HEARTBEAT_SECONDS`` is an hour so the
ledger row counts the README prints do not depend on how long the run took, and
``BROKER_CHECKPOINT_INTERVAL`` is a second: a reader pauses longer than the default 10 s
between steps, so the checkpoint ``verify --trusted-checkpoint`` reads back is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.paths import REPO
from tests.support.processes import interrupt

README = REPO / "README.md"

_SECTION = "## Walkthrough"
_MARKER = re.compile(r"<!--\s*walkthrough:\s*(.*?)\s*-->", re.S)
_MARKER_BEFORE = re.compile(r"<!--\s*walkthrough:\s*(.*?)\s*-->\s*\Z", re.S)
_FENCE = re.compile(r"^```(\S*)\s*$")

# Fields whose values depend on the run (only their JSON type is compared).
_VARYING = frozenset(
    {
        "lease_id",  # Vault's random lease suffix
        "username",  # the database login Vault made up
        "head_hash",  # hash of the ledger head: times are in the rows
        "checkpoints",  # signed every 10 s: how many depends on how long the run took
        "latest_checkpoint",
        "unsigned_tail",
        "partitions",  # monthly partitions: this month and the ones created ahead
        "bytes",  # the evidence zip's size (times and ids inside)
        "seconds",
    }
)

# Output lines a command prints or not depending on timing (none when the checkpoint it
# waits for is already there), matched any number of times.
_SOMETIMES = (re.compile(r"^waiting for a signed checkpoint"),)

_ELISION = "…"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_NORMALIZE = (
    (re.compile(_UUID), "<uuid>"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "<hash>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"), "<time>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"), "<time>"),
    (re.compile(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4} GMT"), "<time>"),  # openssl
    (re.compile(r"\b\d{4}-Q[1-4]\b"), "<quarter>"),  # review periods
    (re.compile(r"\b[0-9a-f]{8}\b"), "<id>"),  # the short ids tables show
)
_ID_TOKEN = re.compile(rf"{_UUID}|\b[0-9a-f]{{8}}\b")

_BLOCK_TIMEOUT = 120.0
_START_TIMEOUT = 90.0


# --- the README, parsed ------------------------------------------------------------------


@dataclass
class Step:
    """One command block, with what the README says it prints."""

    line: int  # where the block starts in README.md (1-based)
    commands: str
    expected: str | None
    expected_kind: str  # the info string of the output block ("json", "" ...)
    exit_code: int = 0


def _fences(lines: list[str], start: int, end: int) -> Iterator[tuple[int, int, str, str]]:
    """(first line, line after the closing fence, info string, body) of each fenced block."""
    i = start
    while i < end:
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        j = i + 1
        while j < end and lines[j].rstrip() != "```":
            j += 1
        assert j < end, f"README.md:{i + 1}: unclosed code fence"
        yield i, j + 1, m.group(1), "\n".join(lines[i + 1 : j])
        i = j + 1


def parse_walkthrough(text: str) -> list[Step]:
    """The walkthrough's command blocks in order (see the module docstring)."""
    lines = text.splitlines()
    start = lines.index(_SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    steps: list[Step] = []
    previous_end = start + 1
    command: Step | None = None  # the command block the previous fence was, if it was one
    for first, after, info, body in _fences(lines, start + 1, end):
        between = "\n".join(lines[previous_end:first])
        adjacent = not re.sub(r"<!--.*?-->", "", between, flags=re.S).strip()
        marker = _MARKER_BEFORE.search(between)
        assert len(_MARKER.findall(between)) == (1 if marker and info == "sh" else 0), (
            f"README.md:{first + 1}: a walkthrough marker belongs right before a ```sh block"
        )
        if info == "sh":
            command = Step(first + 1, body, None, "")
            for option in (marker.group(1) if marker else "").split():
                name, _, value = option.partition("=")
                assert name == "exit" and value.isdigit(), (
                    f"README.md:{first + 1}: unknown walkthrough option {option!r}"
                )
                command.exit_code = int(value)
            steps.append(command)
        else:
            if command is not None and adjacent:
                command.expected, command.expected_kind = body, info
            command = None
        previous_end = after
    return steps


# --- comparing output --------------------------------------------------------------------


def _normalize(text: str) -> str:
    for pattern, placeholder in _NORMALIZE:
        text = pattern.sub(placeholder, text)
    return text


def _pattern(expected: str) -> re.Pattern[str]:
    """An expected string as a regex: normalized, whitespace-free, ``…`` matching anything."""
    parts = [re.escape(re.sub(r"\s+", "", _normalize(p))) for p in expected.split("…")]
    return re.compile(".*".join(parts), re.S)


def _matches(expected: str, actual: str) -> bool:
    return _pattern(expected).fullmatch(re.sub(r"\s+", "", _normalize(actual))) is not None


class _Substitutions:
    """What the README shows -> what this run has, applied to every later command: the ids
    learned from output, and ``fixed`` ones (the broker's address, for a command that
    names ``make dev``'s 8080 instead of reading dev.json)."""

    def __init__(self, fixed: dict[str, str] | None = None) -> None:
        self.ids: dict[str, str] = dict(fixed or {})

    def learn(self, expected: str, actual: str) -> None:
        shown, got = _ID_TOKEN.findall(expected), _ID_TOKEN.findall(actual)
        if len(shown) != len(got):
            return
        for a, b in zip(shown, got, strict=True):
            if a != b and len(a) == len(b):
                self.ids[a] = b
                if len(a) > 8:
                    self.ids[a[:8]] = b[:8]

    def apply(self, commands: str) -> str:
        for shown in sorted(self.ids, key=len, reverse=True):
            commands = commands.replace(shown, self.ids[shown])
        return commands


def _json_stream(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    values, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return values
        value, i = decoder.raw_decode(text, i)
        values.append(value)


def _compare_json(expected: Any, actual: Any, path: str, learn: _Substitutions) -> list[str]:
    """Differences between an expected and an actual JSON value (empty: they agree)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        if set(expected) != set(actual):
            return [f"{path}: fields {sorted(expected)} in the README, {sorted(actual)} here"]
        problems: list[str] = []
        for key, value in expected.items():
            where = f"{path}.{key}"
            if key in _VARYING:
                if type(value) is not type(actual[key]):
                    problems.append(f"{where}: {value!r} in the README, {actual[key]!r} here")
                continue
            problems += _compare_json(value, actual[key], where, learn)
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return [f"{path}: {expected!r} in the README, {actual!r} here"]
        return [
            p
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for p in _compare_json(e, a, f"{path}[{i}]", learn)
        ]
    if isinstance(expected, str) and isinstance(actual, str):
        if not _matches(expected, actual):
            return [f"{path}: {expected!r} in the README, {actual!r} here"]
        learn.learn(expected, actual)
        return []
    if expected != actual or type(expected) is not type(actual):
        return [f"{path}: {expected!r} in the README, {actual!r} here"]
    return []


def _line_problems(expected: str, actual: str, learn: _Substitutions) -> list[str]:
    """A line is compared as JSON values if the README's parses as such, else as text."""
    if expected.lstrip().startswith(("{", "[")):
        try:
            want = _json_stream(expected)
        except ValueError:
            pass
        else:
            try:
                got = _json_stream(actual)
            except ValueError:
                return [f"{expected!r} in the README, {actual!r} here"]
            return _compare_json(want, got, "", learn)
    if not _matches(expected, actual):
        return [f"{expected!r} in the README, {actual!r} here"]
    learn.learn(expected, actual)
    return []


def _compare_lines(expected: str, actual: str, learn: _Substitutions) -> list[str]:
    """Line by line; a README line of only ``…`` stands for any number of lines."""
    want = [line for line in expected.splitlines() if line.strip()]
    got = [line for line in actual.replace("\r", "\n").splitlines() if line.strip()]
    j = 0
    for n, line in enumerate(want):
        if line.strip() == _ELISION:
            following = want[n + 1] if n + 1 < len(want) else None
            if following is None:
                return []
            while j < len(got) and _line_problems(following, got[j], _Substitutions()):
                j += 1
            continue
        if any(r.match(line) for r in _SOMETIMES):
            while j < len(got) and _matches(line, got[j]):
                j += 1
            continue
        if j >= len(got):
            return [f"line {n + 1}: {line!r} in the README, nothing here"]
        problems = _line_problems(line, got[j], learn)
        if problems:
            return [f"line {n + 1}: {p}" for p in problems]
        j += 1
    return [f"extra output: {line!r}" for line in got[j:]]


def compare(step: Step, actual: str, learn: _Substitutions) -> list[str]:
    """Differences between what the README shows for ``step`` and what it printed."""
    assert step.expected is not None
    if step.expected_kind == "json":
        try:
            want = _json_stream(step.expected)
        except ValueError as e:
            return [f"the README's JSON does not parse: {e}"]
        try:
            got = _json_stream(actual)
        except ValueError:
            return [f"expected JSON, got {actual[:2000]!r}"]
        if len(want) != len(got):
            return [f"{len(want)} JSON value(s) in the README, {len(got)} here: {actual[:2000]}"]
        return [p for i, (w, g) in enumerate(zip(want, got, strict=True))
                for p in _compare_json(w, g, f"[{i}]", learn)]  # fmt: skip
    return _compare_lines(step.expected, actual, learn)


# --- running it --------------------------------------------------------------------------


@dataclass
class Outcome:
    output: str
    exit_code: int
    failed: list[str] = field(default_factory=list)  # commands that exited non-zero


class Shell:
    """One bash for the whole walkthrough: each block's output to a file, then a sentinel."""

    def __init__(self, proc: asyncio.subprocess.Process, workdir: Path) -> None:
        self._proc = proc
        self._dir = workdir
        self._n = 0

    @classmethod
    async def start(cls, cwd: Path, env: dict[str, str], scratch: Path) -> Shell:
        proc = await asyncio.create_subprocess_exec(
            "bash", "--noprofile", "--norc",
            cwd=cwd, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # close() ends the commands it started too
        )  # fmt: skip
        shell = cls(proc, scratch)
        # pipefail: `curl | jq` fails if either does; the ERR trap lists each failing command.
        await shell._send(
            'set -o pipefail\ntrap \'printf "%s\\n" "$BASH_COMMAND" >> "$__FAILED"\' ERR\n'
        )
        return shell

    async def _send(self, text: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(text.encode())
        await self._proc.stdin.drain()

    async def run(self, commands: str) -> Outcome:
        self._n += 1
        out, failed = self._dir / f"{self._n}.out", self._dir / f"{self._n}.failed"
        sentinel = f"__walkthrough_done_{self._n}__"
        failed.write_text("")
        await self._send(
            f"__FAILED={failed}\n{{\n{commands}\n}} < /dev/null > {out} 2>&1\necho {sentinel} $?\n"
        )
        assert self._proc.stdout is not None
        async with asyncio.timeout(_BLOCK_TIMEOUT):
            while True:
                line = (await self._proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"the shell exited running:\n{commands}")
                if line.startswith(sentinel):
                    code = int(line.split()[1])
                    break
        failures = [c for c in failed.read_text().splitlines() if c]
        return Outcome(out.read_text(errors="replace"), code, failures)

    async def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        await self._proc.wait()


def _clean_env() -> dict[str, str]:
    """The user's environment without settings that would change what `broker dev` does."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "VAULT_", "BAO_"))}


def _dev_env() -> dict[str, str]:
    """How the test's ``broker dev`` differs from a reader's (see the module docstring)."""
    return {**_clean_env(), "BROKER_HEARTBEAT_SECONDS": "3600", "BROKER_CHECKPOINT_INTERVAL": "1"}


@contextlib.contextmanager
def _workspace() -> Iterator[Path]:
    """A directory laid out as the README assumes: .venv and policies/ of this checkout."""
    # Not tmp_path: embedded PostgreSQL runs as a system user under root and needs the
    # path traversable (see stack_state_dir in conftest).
    root = Path(tempfile.mkdtemp(prefix="jitbroker-readme-"))
    root.chmod(0o755)
    try:
        (root / ".venv").symlink_to(REPO / ".venv")
        (root / "policies").symlink_to(REPO / "policies")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def broker_dev(workdir: Path) -> AsyncIterator[dict[str, Any]]:
    """``broker dev --port 0`` in ``workdir`` (state in ``.broker``); its dev.json, then stop."""
    log = workdir / "broker-dev.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(workdir / ".venv" / "bin" / "broker"), "dev", "--port", "0",
            cwd=workdir, env=_dev_env(), stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    children: set[int] = set()
    try:
        dev_json = workdir / ".broker" / "dev.json"
        for _ in range(int(_START_TIMEOUT / 0.2)):
            if dev_json.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.2)
        assert dev_json.exists(), f"broker dev did not start:\n{log.read_text()[-3000:]}"
        children = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        yield json.loads(dev_json.read_text())
    finally:
        await interrupt(proc, timeout=30)
        for pid in children:  # whatever a hard stop left behind
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


# --- the tests ---------------------------------------------------------------------------


def test_walkthrough_markup_is_what_the_test_expects() -> None:
    """The parser sees every sh block of the walkthrough, and a broken marker fails."""
    steps = parse_walkthrough(README.read_text())
    text = README.read_text()
    section = text[text.index(_SECTION) :]
    section = section[: section.find("\n## ", 1) if "\n## " in section[1:] else len(section)]
    assert len(steps) == section.count("```sh\n")
    assert all(s.commands.strip() for s in steps)
    with pytest.raises(AssertionError, match="unknown walkthrough option"):
        parse_walkthrough(f"{_SECTION}\n<!-- walkthrough: exit=x -->\n```sh\ntrue\n```\n")
    with pytest.raises(AssertionError, match="belongs right before"):
        parse_walkthrough(f"{_SECTION}\n<!-- walkthrough: exit=2 -->\ntext\n```sh\nx\n```\n")
    parsed = parse_walkthrough(
        f"{_SECTION}\n```sh\na\n```\n\n<!-- note -->\n```json\n{{}}\n```\n"
        "```sh\nb\n```\nprose\n```\nnot b's\n```\n"
        "text\n<!-- walkthrough: exit=2 -->\n```sh\nc\n```\n```\nc's\n```\n## Next\n```sh\nd\n```\n"
    )
    assert [(s.commands, s.expected, s.exit_code) for s in parsed] == [
        ("a", "{}", 0),
        ("b", None, 0),
        ("c", "c's", 2),
    ]


def test_the_row_count_the_prose_names_is_the_one_the_walkthrough_prints() -> None:
    """ "The N rows are the walkthrough so far": N is what verify prints, one event a row."""
    text = README.read_text()
    said = re.search(r"The (\d+) rows are the walkthrough so far", text)
    assert said is not None
    steps = parse_walkthrough(text)
    verify = next(s for s in steps if "/v1/audit/verify" in s.commands)
    events = next(s for s in steps if "broker audit events" in s.commands)
    assert verify.expected is not None and events.expected is not None
    assert json.loads(verify.expected)["rows"] == int(said.group(1))
    assert len(events.expected.splitlines()) == 1 + int(said.group(1))


def test_comparison_rules() -> None:
    learn = _Substitutions()
    step = Step(1, "", '{"id": "9d4f4654-b3c3-4eee-a429-97387ffa8413", "n": 1}', "json")
    assert compare(step, '{"id": "11111111-2222-4333-8444-555555555555", "n": 1}', learn) == []
    assert learn.apply("approve 9d4f4654") == "approve 11111111"
    fixed = _Substitutions({"http://127.0.0.1:8080": "http://127.0.0.1:4242"})
    assert fixed.apply("curl http://127.0.0.1:8080/v1/me") == "curl http://127.0.0.1:4242/v1/me"
    assert compare(step, '{"id": "x", "n": 1}', learn)
    assert compare(step, '{"id": "11111111-2222-4333-8444-555555555555", "n": 2}', learn)
    assert compare(step, '{"ident": "11111111-2222-4333-8444-555555555555", "n": 1}', learn)
    text = Step(1, "", "offboarded alice: 2 grants revoked … (deadline 2026-11-27 18:14:20Z)", "")
    good = "offboarded  alice: 2 grants revoked, x (deadline 2027-01-01 00:00:00Z)"
    assert compare(text, good, learn) == []
    assert compare(text, good.replace("2 grants", "1 grants"), learn)


async def _run(
    steps: list[Step], workdir: Path, dev: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """Run every step in one shell; return (problems, what each step printed)."""
    url = str(dev["url"])
    learn = _Substitutions({"http://127.0.0.1:8080": url, "http://localhost:8080": url})
    problems: list[str] = []
    printed: list[str] = []
    scratch = workdir / ".walkthrough"
    scratch.mkdir()
    shell = await Shell.start(workdir, _clean_env(), scratch)
    try:
        for step in steps:
            where = f"README.md:{step.line}"
            commands = learn.apply(step.commands)
            outcome = await shell.run(commands)
            printed.append(f"{where}\n{commands}\n--- printed:\n{outcome.output}")
            tail = outcome.output[-2000:]
            if outcome.exit_code != step.exit_code:
                problems.append(
                    f"{where}: exit {outcome.exit_code}, expected {step.exit_code}:\n"
                    f"{commands}\n{tail}"
                )
            # With exit=N the last command fails on purpose; no other may.
            unexpected = outcome.failed[: -1 if step.exit_code else None]
            if unexpected:
                problems.append(f"{where}: these commands failed: {unexpected}\n{tail}")
            if step.expected is not None:
                problems += [f"{where}: {p}" for p in compare(step, outcome.output, learn)]
    finally:
        await shell.close()
    return problems, printed


@pytest.mark.stack
async def test_readme_walkthrough_runs_as_written() -> None:
    """Every command block, in order, against ``broker dev``; output as the README shows.

    Set ``WALKTHROUGH_DUMP=FILE`` to get what every block printed (to update the README).
    """
    steps = parse_walkthrough(README.read_text())
    with _workspace() as workdir:
        async with broker_dev(workdir) as dev:
            problems, printed = await _run(steps, workdir, dev)
    dump = os.environ.get("WALKTHROUGH_DUMP")
    if dump:
        await asyncio.to_thread(Path(dump).write_text, "\n\n".join(printed))
    assert not problems, "\n\n".join(problems)
