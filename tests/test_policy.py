"""broker.policy: the loader's validation (with file:line) and the pure decide() table.

Pure: no network, only files under tmp_path and the repository's demo ``policies/``.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from broker.auth.principal import Principal
from broker.errors import BadRequest, PolicyError
from broker.policy import (
    ApprovalFactor,
    ElevationRule,
    PolicySet,
    capabilities,
    decide,
    load_policy_dir,
    requestable,
    roles_for,
    secret_matches,
    validate_secret_name,
)

DEMO = Path(__file__).resolve().parent.parent / "policies"
ISS = "https://idp.example"


def human(subject: str, *groups: str) -> Principal:
    return Principal(subject=subject, kind="human", issuer=ISS, groups=frozenset(groups))


ALICE = human("alice", "engineering")
BOB = human("bob", "engineering", "sre-leads")
DANA = human("dana", "engineering", "sre-leads")
CAROL = human("carol", "auditors")
ERIN = human("erin", "security-admins")
SVC_ORDERS = Principal(
    subject="system:serviceaccount:orders:orders-api", kind="service", issuer=ISS
)
NOBODY = human("mallory")


@pytest.fixture(scope="module")
def demo() -> PolicySet:
    return load_policy_dir(DEMO)


# -- decide(): the whole demo table ---------------------------------------------------

Row = tuple[str, str | None, int]  # (outcome, role name, ttl)

ENGINEER_ROWS: dict[str, Row] = {
    "db/orders-ro": ("allow", "engineering", 3600),
    "stripe/test": ("allow", "engineering", 3600),
    "db/orders-admin": ("elevation_required", "orders-dba", 1800),
    "stripe/prod": ("elevation_required", "payments-prod", 900),
    "pki/internal": ("deny", None, 0),
    "ssh/prod-hosts": ("allow", "prod-shell", 1800),
}
NOTHING: dict[str, Row] = {
    s: ("deny", None, 0)
    for s in (
        "db/orders-ro",
        "stripe/test",
        "db/orders-admin",
        "stripe/prod",
        "pki/internal",
        "ssh/prod-hosts",
    )
}
TABLE: dict[str, tuple[Principal, dict[str, Row]]] = {
    "alice": (ALICE, ENGINEER_ROWS),
    "bob": (BOB, ENGINEER_ROWS),
    "dana": (DANA, ENGINEER_ROWS),
    "carol": (CAROL, NOTHING),
    "erin": (ERIN, NOTHING),
    "mallory": (NOBODY, NOTHING),
    "svc-orders": (
        SVC_ORDERS,
        {
            "db/orders-ro": ("allow", "orders-service", 900),
            "pki/internal": ("allow", "orders-service", 900),
            "stripe/test": ("deny", None, 0),
            "db/orders-admin": ("deny", None, 0),
            "stripe/prod": ("deny", None, 0),
            "ssh/prod-hosts": ("deny", None, 0),
        },
    ),
}


@pytest.mark.parametrize(
    ("who", "secret"),
    [(who, secret) for who, (_, rows) in TABLE.items() for secret in rows],
)
def test_decide_demo_table(demo: PolicySet, who: str, secret: str) -> None:
    principal, rows = TABLE[who]
    outcome, role, ttl = rows[secret]
    d = decide(demo, principal, secret)
    assert (d.outcome, d.role.name if d.role else None, d.ttl) == (outcome, role, ttl)
    assert d.secret == secret
    assert d.entry is demo.catalog[secret]
    assert d.allowed is (outcome == "allow")
    assert d.message


def test_table_covers_whole_catalog(demo: PolicySet) -> None:
    for _, rows in TABLE.values():
        assert set(rows) == set(demo.catalog)


@pytest.mark.parametrize(
    "secret",
    [
        "db/nope",
        "DB/orders-ro",
        "",
        "../etc/passwd",
        "db//orders-ro",
        "stripe/*",
        "db/orders-ro/",
        "a" * 200,
    ],
)
def test_unknown_or_invalid_secret(demo: PolicySet, secret: str) -> None:
    d = decide(demo, BOB, secret)
    assert (d.outcome, d.entry, d.role, d.ttl) == ("unknown_secret", None, None, 0)


def test_service_account_membership_is_exact(demo: PolicySet) -> None:
    other_sa = Principal("system:serviceaccount:orders:other", "service", ISS)
    # Same "ns:name" text as a plain subject is not a service account.
    lookalike = human("orders:orders-api")
    for p in (other_sa, lookalike):
        assert decide(demo, p, "db/orders-ro").outcome == "deny"
        assert roles_for(demo, p) == ()


def test_subject_membership(tmp_path: Path) -> None:
    policy = _load_ok(
        tmp_path,
        """
        roles:
          - name: by-subject
            members: {subjects: [alice]}
            secrets: [a/one]
            max_ttl: 10m
    """,
    )
    assert decide(policy, human("alice"), "a/one").outcome == "allow"
    assert decide(policy, human("alicE"), "a/one").outcome == "deny"


def test_ttl_default_explicit_and_clipped(demo: PolicySet) -> None:
    assert decide(demo, ALICE, "db/orders-ro").ttl == 3600
    assert decide(demo, ALICE, "db/orders-ro", ttl=60).ttl == 60
    clipped = decide(demo, ALICE, "db/orders-ro", ttl=7200)
    assert (clipped.outcome, clipped.ttl) == ("allow", 3600)
    assert "clipped" in clipped.message
    elevated = decide(demo, ALICE, "stripe/prod", ttl=86400)
    assert (elevated.outcome, elevated.ttl) == ("elevation_required", 900)
    # No role, no ttl, whatever was asked.
    assert decide(demo, CAROL, "db/orders-ro", ttl=60).ttl == 0


@pytest.mark.parametrize("ttl", [0, -5, True])
def test_bad_ttl_is_bad_request(demo: PolicySet, ttl: int) -> None:
    with pytest.raises(BadRequest):
        decide(demo, ALICE, "db/orders-ro", ttl=ttl)


def test_default_ttl(tmp_path: Path) -> None:
    policy = _load_ok(
        tmp_path,
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            default_ttl: 5m
    """,
    )
    g = human("x", "g")
    assert decide(policy, g, "a/one").ttl == 300
    assert decide(policy, g, "a/one", ttl=1800).ttl == 1800
    assert decide(policy, g, "a/one", ttl=7200).ttl == 3600


_CATALOG = """
    catalog:
      a/one: {engine: kv2, mount: secret, path: a/one}
      a/two: {engine: kv2, mount: secret, path: a/two}
      a/deep/three: {engine: kv2, mount: secret, path: a/deep/three}
      b/db: {engine: database, mount: database, role: b}
"""


def test_glob_grants_one_segment(tmp_path: Path) -> None:
    policy = _load_ok(
        tmp_path,
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: ["a/*"]
            max_ttl: 1h
    """,
    )
    g = human("x", "g")
    assert decide(policy, g, "a/one").outcome == "allow"
    assert decide(policy, g, "a/two").outcome == "allow"
    assert decide(policy, g, "a/deep/three").outcome == "deny"
    assert decide(policy, g, "b/db").outcome == "deny"
    assert [r["secret"] for r in requestable(policy, g)] == ["a/one", "a/two"]


def test_secret_matches() -> None:
    assert secret_matches("stripe/*", "stripe/prod")
    assert not secret_matches("stripe/*", "stripe/prod/eu")
    assert not secret_matches("stripe/*", "stripe")
    assert secret_matches("*/prod", "stripe/prod")
    assert secret_matches("db/orders-*", "db/orders-ro")
    assert not secret_matches("db/orders-ro", "db/orders-rox")


def test_role_choice_largest_ttl_then_name_and_standing_wins(tmp_path: Path) -> None:
    policy = _load_ok(
        tmp_path,
        """
        roles:
          - name: zz-long
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 2h
          - name: bb-short
            members: {groups: [g]}
            secrets: [a/one, a/two]
            max_ttl: 1h
          - name: aa-short
            members: {groups: [g]}
            secrets: ["a/*"]
            max_ttl: 1h
          - name: priv
            members: {groups: [g]}
            secrets: [a/one, b/db]
            max_ttl: 3h
            privileged: true
            elevation: {approver_groups: [leads], max_duration: 4h}
    """,
    )
    g = human("x", "g")
    # The privileged role has the longest ttl, but a standing grant always wins.
    d = decide(policy, g, "a/one")
    assert (d.outcome, d.role and d.role.name, d.ttl) == ("allow", "zz-long", 7200)
    assert decide(policy, g, "a/two").role.name == "aa-short"  # type: ignore[union-attr]
    d = decide(policy, g, "b/db")
    assert (d.outcome, d.role and d.role.name, d.ttl) == ("elevation_required", "priv", 10800)
    assert requestable(policy, g) == [
        {"secret": "a/one", "role": "zz-long", "privileged": False, "max_ttl": 7200},
        {"secret": "a/two", "role": "aa-short", "privileged": False, "max_ttl": 3600},
        {"secret": "b/db", "role": "priv", "privileged": True, "max_ttl": 10800},
    ]


def test_roles_capabilities_requestable(demo: PolicySet) -> None:
    assert [r.name for r in roles_for(demo, BOB)] == [
        "engineering",
        "orders-dba",
        "payments-prod",
        "prod-shell",
        "prod-root",
    ]
    assert capabilities(demo, CAROL) == {"audit"}
    assert capabilities(demo, ERIN) == {"admin"}
    assert capabilities(demo, ALICE) == frozenset()
    assert capabilities(demo, SVC_ORDERS) == frozenset()
    assert requestable(demo, ALICE) == [
        {"secret": "db/orders-admin", "role": "orders-dba", "privileged": True, "max_ttl": 1800},
        {"secret": "db/orders-ro", "role": "engineering", "privileged": False, "max_ttl": 3600},
        {"secret": "ssh/prod-hosts", "role": "prod-shell", "privileged": False, "max_ttl": 1800},
        {"secret": "stripe/prod", "role": "payments-prod", "privileged": True, "max_ttl": 900},
        {"secret": "stripe/test", "role": "engineering", "privileged": False, "max_ttl": 3600},
    ]
    assert requestable(demo, SVC_ORDERS) == [
        {"secret": "db/orders-ro", "role": "orders-service", "privileged": False, "max_ttl": 900},
        {"secret": "pki/internal", "role": "orders-service", "privileged": False, "max_ttl": 900},
    ]
    assert requestable(demo, CAROL) == []


# -- the demo policy as loaded ---------------------------------------------------------


def test_demo_model(demo: PolicySet) -> None:
    assert set(demo.catalog) == {
        "db/orders-ro",
        "db/orders-admin",
        "stripe/test",
        "stripe/prod",
        "pki/internal",
        "ssh/prod-hosts",
    }
    ro = demo.catalog["db/orders-ro"]
    assert (ro.engine, ro.mount, ro.path) == ("database", "database", "orders-ro")
    assert demo.catalog["stripe/prod"].path == "stripe/prod"
    assert demo.catalog["pki/internal"].engine == "pki"
    pay = demo.role("payments-prod")
    assert pay is not None and pay.privileged and pay.elevation is not None
    assert pay.elevation.ticket_required
    assert pay.elevation.approver_groups == {"sre-leads"}
    assert pay.elevation.approvals == 1
    assert pay.elevation.max_duration == 3600
    assert pay.elevation.ticket_pattern == r"^(INC|CHG)-[0-9]+$"
    assert not pay.elevation.break_glass
    assert pay.elevation.factors == (ApprovalFactor(frozenset({"sre-leads"}), 1),)
    assert pay.elevation.request_expiry == 4 * 3600
    assert pay.elevation.reason_min_length == 10
    dba = demo.role("orders-dba")
    assert dba is not None and dba.elevation is not None and not dba.elevation.ticket_required
    assert dba.elevation.factors == (ApprovalFactor(frozenset({"sre-leads"}), 1),)
    assert (dba.elevation.max_duration, dba.elevation.request_expiry) == (3600, 4 * 3600)
    # alice (engineering) may break glass on the orders DB; erin (security-admins) reviews.
    assert dba.elevation.break_glass
    assert dba.elevation.break_glass_reviewers == {"security-admins"}
    assert decide(demo, ALICE, "db/orders-admin").role is dba
    assert ERIN.groups & dba.elevation.break_glass_reviewers
    assert not ALICE.groups & dba.elevation.break_glass_reviewers
    auditors = demo.role("auditors")
    assert auditors is not None
    assert (auditors.secrets, auditors.max_ttl) == ((), 0)
    assert auditors.capabilities == {"audit"}
    assert demo.role("nope") is None
    # source points at the role's own line in roles.yaml.
    eng = demo.role("engineering")
    assert eng is not None
    file, line = eng.source.split(":")
    assert file == "roles.yaml"
    assert "- name: engineering" in (DEMO / file).read_text().splitlines()[int(line) - 1]


def test_version_is_auditor_reproducible(demo: PolicySet) -> None:
    # The recipe in PolicySet's docstring: sha256 of the sha256sum manifest, sorted by name.
    manifest = "".join(
        f"{hashlib.sha256((DEMO / n).read_bytes()).hexdigest()}  {n}\n"
        for n in sorted(p.name for p in DEMO.iterdir() if p.suffix in (".yaml", ".yml"))
    )
    assert demo.version == "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
    assert set(demo.documents) == {"catalog.yaml", "roles.yaml"}
    assert demo.documents["roles.yaml"] == (DEMO / "roles.yaml").read_text()


def test_version_stable_and_changes(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    for p in DEMO.glob("*.yaml"):
        (a / p.name).write_bytes(p.read_bytes())
    first = load_policy_dir(a)
    assert load_policy_dir(a).version == first.version == load_policy_dir(DEMO).version
    assert load_policy_dir(a).to_json() == first.to_json()
    # Any byte change, even a comment, is a new written policy.
    roles = a / "roles.yaml"
    roles.write_text(roles.read_text() + "# reviewed 2024-Q3\n")
    commented = load_policy_dir(a)
    assert commented.version != first.version
    assert commented.to_json()["roles"] == first.to_json()["roles"]
    # Renaming a file changes the version too (the manifest names files).
    roles.rename(a / "roles2.yaml")
    renamed = load_policy_dir(a).version
    assert renamed not in (first.version, commented.version)
    # Non-policy and hidden files do not count.
    (a / "README.md").write_text("hello")
    (a / ".roles.yaml").write_text("junk: [")
    assert load_policy_dir(a).version == renamed


def test_to_json_is_canonical(demo: PolicySet) -> None:
    doc = demo.to_json()
    assert json.loads(json.dumps(doc, sort_keys=True)) == doc
    assert doc["version"] == demo.version
    assert list(doc["catalog"]) == sorted(doc["catalog"])
    assert (
        doc["files"]["roles.yaml"]
        == "sha256:" + hashlib.sha256((DEMO / "roles.yaml").read_bytes()).hexdigest()
    )
    eng = next(r for r in doc["roles"] if r["name"] == "engineering")
    assert eng["members"] == {"groups": ["engineering"], "subjects": [], "service_accounts": []}
    assert eng["max_ttl"] == 3600 and eng["elevation"] is None


def test_policy_set_is_immutable(demo: PolicySet) -> None:
    with pytest.raises(TypeError):
        demo.catalog["x"] = demo.catalog["stripe/test"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        demo.version = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("db/orders-ro", True),
        ("a", True),
        ("a.b_c-d/0", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("/a", False),
        ("a/", False),
        ("a//b", False),
        ("A", False),
        ("-a", False),
        ("a/.b", False),
        ("a b", False),
        ("a/*", False),
        (None, False),
        (5, False),
    ],
)
def test_validate_secret_name(name: object, ok: bool) -> None:
    assert validate_secret_name(name) is ok


# -- validation errors, with file:line ---------------------------------------------------


def _write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(textwrap.dedent(text).lstrip("\n"))


def _load_ok(tmp_path: Path, roles: str) -> PolicySet:
    """Load ``roles`` (a roles.yaml body) next to the small test ``_CATALOG``."""
    d = tmp_path / "ok"
    _write(d, {"catalog.yaml": _CATALOG, "roles.yaml": roles})
    return load_policy_dir(d)


def _errors(tmp_path: Path, files: dict[str, str], **kw: int) -> list[str]:
    d = tmp_path / "bad"
    _write(d, files)
    with pytest.raises(PolicyError) as exc:
        load_policy_dir(d, **kw)
    n = len(exc.value.errors)
    assert exc.value.message == f"policy invalid: {n} error{'s' if n != 1 else ''}"
    return exc.value.errors


GOOD_CATALOG = """
    catalog:
      a/one:
        engine: kv2
        mount: secret
        path: a/one
      b/db:
        engine: database
        mount: database
        role: b
"""

# Each case: roles.yaml body (line 1 is "roles:"), expected error lines (prefix match).
ROLE_CASES = {
    "unknown_key": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            maxttl: 2h
        """,
        ["roles.yaml:6: role: unknown key 'maxttl'"],
    ),
    "unknown_members_key": (
        """
        roles:
          - name: r
            members:
              group: [g]
            secrets: [a/one]
            max_ttl: 1h
        """,
        ["roles.yaml:4: role 'r': members: unknown key 'group'"],
    ),
    "duplicate_key": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            max_ttl: 2h
        """,
        ["roles.yaml:6: role: duplicate key 'max_ttl' (first at line 5)"],
    ),
    "duplicate_role": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
          - name: r
            members: {groups: [h]}
            secrets: [a/one]
            max_ttl: 1h
        """,
        ["roles.yaml:6: role 'r' is already defined at roles.yaml:2"],
    ),
    "unknown_secret": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets:
              - a/one
              - a/nope
            max_ttl: 1h
        """,
        ["roles.yaml:6: role 'r': secret 'a/nope' is not in the catalog"],
    ),
    "glob_matches_nothing": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: ["a/*", "z/*"]
            max_ttl: 1h
        """,
        ["roles.yaml:4: role 'r': pattern 'z/*' matches no catalog secret"],
    ),
    "bad_glob": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: ["a/[ab]"]
            max_ttl: 1h
        """,
        ["roles.yaml:4: role 'r': secrets item 'a/[ab]' is not valid"],
    ),
    "no_members": (
        """
        roles:
          - name: r
            members: {}
            secrets: [a/one]
            max_ttl: 1h
        """,
        ["roles.yaml:3: role 'r': members: at least one group, subject or service account"],
    ),
    "missing_members_and_name": (
        """
        roles:
          - secrets: [a/one]
            max_ttl: 1h
        """,
        [
            "roles.yaml:2: role: missing required key 'members'",
            "roles.yaml:2: role: missing required key 'name'",
        ],
    ),
    "bad_service_account": (
        """
        roles:
          - name: r
            members:
              service_accounts: [orders-api]
            secrets: [a/one]
            max_ttl: 1h
        """,
        ["roles.yaml:4: role 'r': members.service_accounts item 'orders-api' is not valid"],
    ),
    "group_not_string": (
        """
        roles:
          - name: r
            members:
              groups: [on]
            secrets: [a/one]
            max_ttl: 1h
        """,
        ["roles.yaml:4: role 'r': members.groups item must be a string, got a boolean"],
    ),
    "missing_max_ttl": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
        """,
        ["roles.yaml:2: role 'r': 'max_ttl' is required"],
    ),
    "bad_duration": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1 hour
        """,
        ["roles.yaml:5: role 'r': max_ttl: invalid duration"],
    ),
    "default_over_max": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            default_ttl: 2h
        """,
        ["roles.yaml:6: role 'r': default_ttl is longer than max_ttl"],
    ),
    "privileged_without_elevation": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            privileged: true
        """,
        ["roles.yaml:6: role 'r': a privileged role needs an 'elevation' rule"],
    ),
    "elevation_without_privileged": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            elevation: {approver_groups: [l], max_duration: 1h}
        """,
        ["roles.yaml:6: role 'r': 'elevation' needs 'privileged: true'"],
    ),
    "bad_elevation": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            privileged: yes please
            elevation:
              approver_groups: []
              approvals: 0
              max_duration: 1h
              ticket_pattern: "(INC"
              break_glass: maybe
              quorum: 2
        """,
        [
            "roles.yaml:6: role 'r': privileged must be true or false, got a string",
            "roles.yaml:8: role 'r': elevation.approver_groups must not be empty",
            "roles.yaml:9: role 'r': elevation.approvals must be at least 1",
            "roles.yaml:11: role 'r': elevation.ticket_pattern: bad regex",
            "roles.yaml:12: role 'r': elevation.break_glass must be true or false",
            "roles.yaml:13: role 'r': elevation: unknown key 'quorum'",
        ],
    ),
    "elevation_missing_required": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            privileged: true
            elevation:
              approvals: 2
        """,
        [
            "roles.yaml:7: role 'r': elevation: missing required key 'approver_groups' (or give"
            " 'factors')",
            "roles.yaml:7: role 'r': elevation: missing required key 'max_duration'",
        ],
    ),
    "ttl_outlives_elevation": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 2h
            privileged: true
            elevation: {approver_groups: [l], max_duration: 1h}
        """,
        ["roles.yaml:5: role 'r': max_ttl is longer than elevation.max_duration"],
    ),
    "privileged_capabilities": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            secrets: [a/one]
            max_ttl: 1h
            privileged: true
            elevation: {approver_groups: [l], max_duration: 1h}
            capabilities: [admin]
        """,
        ["roles.yaml:8: role 'r': a privileged role cannot carry capabilities"],
    ),
    "unknown_capability": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            capabilities:
              - audit
              - root
        """,
        ["roles.yaml:6: role 'r': capabilities: unknown capability 'root'"],
    ),
    "grants_nothing": (
        """
        roles:
          - name: r
            members: {groups: [g]}
        """,
        ["roles.yaml:2: role 'r' grants nothing"],
    ),
    "ttl_without_secrets": (
        """
        roles:
          - name: r
            members: {groups: [g]}
            capabilities: [audit]
            max_ttl: 1h
        """,
        ["roles.yaml:5: role 'r': 'max_ttl' only applies to roles with secrets"],
    ),
    "bad_role_name": (
        """
        roles:
          - name: Admins!
            members: {groups: [g]}
            capabilities: [audit]
        """,
        ["roles.yaml:2: role name 'Admins!' is not valid"],
    ),
    "roles_not_list": (
        """
        roles:
          name: r
        """,
        ["roles.yaml:2: roles must be a list"],
    ),
}


@pytest.mark.parametrize("case", sorted(ROLE_CASES))
def test_role_validation_errors(tmp_path: Path, case: str) -> None:
    body, expected = ROLE_CASES[case]
    errors = _errors(tmp_path, {"catalog.yaml": GOOD_CATALOG, "roles.yaml": body})
    assert len(errors) == len(expected), errors
    for got, want in zip(errors, expected, strict=True):
        assert got.startswith(want), (got, want)


# -- elevation rules: both forms, defaults, validation ------------------------------------

_PRIV = """
    roles:
      - name: r
        members: {groups: [g]}
        secrets: [a/one]
        max_ttl: 1h
        privileged: true
        elevation:
"""  # the elevation mapping's keys start on line 8


def _priv(elevation: str) -> str:
    return textwrap.dedent(_PRIV) + textwrap.indent(
        textwrap.dedent(elevation).lstrip("\n"), "      "
    )


def _elevation(tmp_path: Path, elevation: str) -> ElevationRule:
    tmp_path.mkdir(exist_ok=True)
    rule = _load_ok(tmp_path, _priv(elevation)).role("r").elevation  # type: ignore[union-attr]
    assert rule is not None
    return rule


def test_elevation_shorthand_and_factors_parse_alike(tmp_path: Path) -> None:
    short = _elevation(
        tmp_path / "s",
        """
        approver_groups: [leads, sre]
        approvals: 2
        max_duration: 1h
        """,
    )
    general = _elevation(
        tmp_path / "g",
        """
        max_duration: 1h
        factors:
          - approver_groups: [sre, leads]
            approvals: 2
        """,
    )
    assert short == general
    assert short.factors == (ApprovalFactor(frozenset({"leads", "sre"}), 2),)
    assert short.to_json() == general.to_json()
    # approvals defaults to 1 in both forms.
    assert _elevation(tmp_path / "d1", "{approver_groups: [l], max_duration: 1h}") == _elevation(
        tmp_path / "d2", "{factors: [{approver_groups: [l]}], max_duration: 1h}"
    )


def test_elevation_factors(tmp_path: Path) -> None:
    rule = _elevation(
        tmp_path,
        """
        factors:
          - {approver_groups: [sre-leads], approvals: 1}
          - {approver_groups: [security-admins, security-eng], approvals: 2}
          - {approver_groups: [sre-leads]}
        max_duration: 2h
        """,
    )
    assert rule.factors == (
        ApprovalFactor(frozenset({"sre-leads"}), 1),
        ApprovalFactor(frozenset({"security-admins", "security-eng"}), 2),
        ApprovalFactor(frozenset({"sre-leads"}), 1),
    )
    # The one-factor view kept for older callers: union of groups, sum of approvals.
    assert rule.approver_groups == {"sre-leads", "security-admins", "security-eng"}
    assert rule.approvals == 4
    # Break-glass reviewers default to every approver group.
    assert rule.break_glass_reviewers == rule.approver_groups


def test_elevation_defaults(tmp_path: Path) -> None:
    rule = _elevation(tmp_path, "{approver_groups: [l], max_duration: 90m}")
    assert rule == ElevationRule(
        factors=(ApprovalFactor(frozenset({"l"}), 1),),
        max_duration=5400,
        request_expiry=86400,
        reason_min_length=10,
        ticket_required=False,
        ticket_pattern=r"^(INC|CHG)-[0-9]+$",
        break_glass=False,
        break_glass_reviewers=frozenset({"l"}),
    )
    # The same defaults when constructed by hand.
    assert rule == ElevationRule((ApprovalFactor(frozenset({"l"})),), 5400)


def test_elevation_all_fields_and_to_json(tmp_path: Path) -> None:
    rule = _elevation(
        tmp_path,
        """
        factors:
          - {approver_groups: [sre-leads, dba-leads], approvals: 2}
          - {approver_groups: [security-admins], approvals: 1}
        max_duration: 1h
        request_expiry: 90m
        reason_min_length: 25
        ticket_required: true
        ticket_pattern: "^SEC-[0-9]{3,}$"
        break_glass: true
        break_glass_reviewers: [security-admins, auditors]
        """,
    )
    assert rule.to_json() == {
        "factors": [
            {"approver_groups": ["dba-leads", "sre-leads"], "approvals": 2},
            {"approver_groups": ["security-admins"], "approvals": 1},
        ],
        "max_duration": 3600,
        "request_expiry": 5400,
        "reason_min_length": 25,
        "ticket_required": True,
        "ticket_pattern": "^SEC-[0-9]{3,}$",
        "break_glass": True,
        "break_glass_reviewers": ["auditors", "security-admins"],
    }
    assert json.loads(json.dumps(rule.to_json())) == rule.to_json()
    # Round trip: the JSON form rebuilds an equal rule.
    doc = rule.to_json()
    rebuilt = ElevationRule(
        factors=tuple(
            ApprovalFactor(frozenset(f["approver_groups"]), f["approvals"]) for f in doc["factors"]
        ),
        max_duration=doc["max_duration"],
        request_expiry=doc["request_expiry"],
        reason_min_length=doc["reason_min_length"],
        ticket_required=doc["ticket_required"],
        ticket_pattern=doc["ticket_pattern"],
        break_glass=doc["break_glass"],
        break_glass_reviewers=frozenset(doc["break_glass_reviewers"]),
    )
    assert rebuilt == rule
    assert rule.ticket_matches("SEC-123")
    assert not rule.ticket_matches("SEC-12")
    assert not rule.ticket_matches("SEC-123\n")  # fullmatch: '$' alone would allow this


def test_demo_to_json_elevation(demo: PolicySet) -> None:
    roles = {r["name"]: r for r in demo.to_json()["roles"]}
    assert roles["orders-dba"]["elevation"] == {
        "factors": [{"approver_groups": ["sre-leads"], "approvals": 1}],
        "max_duration": 3600,
        "request_expiry": 14400,
        "reason_min_length": 10,
        "ticket_required": False,
        "ticket_pattern": "^(INC|CHG)-[0-9]+$",
        "break_glass": True,
        "break_glass_reviewers": ["security-admins"],
    }
    assert roles["payments-prod"]["elevation"]["ticket_required"] is True
    assert roles["payments-prod"]["elevation"]["break_glass"] is False


# Each case: the elevation mapping's body (its first line is roles.yaml line 8), and the
# expected error lines (prefix match), all under "role 'r': ".
ELEVATION_CASES: dict[str, tuple[str, list[str]]] = {
    "both_forms": (
        """
        approver_groups: [l]
        max_duration: 1h
        factors:
          - {approver_groups: [s]}
        """,
        ["10: elevation: give either 'factors' or the shorthand"],
    ),
    "both_forms_approvals_only": (
        """
        approvals: 2
        factors: [{approver_groups: [s]}]
        max_duration: 1h
        """,
        ["9: elevation: give either 'factors' or the shorthand"],
    ),
    "no_factors": (
        """
        max_duration: 1h
        approvals: 2
        """,
        ["7: elevation: missing required key 'approver_groups' (or give 'factors')"],
    ),
    "empty_factors": (
        """
        max_duration: 1h
        factors: []
        """,
        ["9: elevation.factors must not be empty"],
    ),
    "factors_not_list": (
        """
        max_duration: 1h
        factors: {approver_groups: [l]}
        """,
        ["9: elevation.factors must be a list"],
    ),
    "factor_problems": (
        """
        max_duration: 1h
        factors:
          - {approver_groups: [], approvals: 1}
          - {approver_groups: [l], approvals: 0}
          - {approver_groups: [l], approvals: 11}
          - {approvals: 1}
          - {approver_groups: [l], quorum: 2}
          - sre-leads
          - {approver_groups: [l], approvals: "2"}
        """,
        [
            "10: elevation.factors[0].approver_groups must not be empty",
            "11: elevation.factors[1].approvals must be at least 1",
            "12: elevation.factors[2].approvals must be at most 10",
            "13: elevation.factors[3]: missing required key 'approver_groups'",
            "14: elevation.factors[4]: unknown key 'quorum'",
            "15: elevation.factors[5] must be a mapping",
            "16: elevation.factors[6].approvals must be an integer, got a string",
        ],
    ),
    "shorthand_approvals_over_cap": (
        """
        approver_groups: [l]
        approvals: 11
        max_duration: 1h
        """,
        ["9: elevation.approvals must be at most 10"],
    ),
    "request_expiry_too_short": (
        """
        approver_groups: [l]
        max_duration: 1h
        request_expiry: 59s
        """,
        ["10: elevation.request_expiry must be between 1m and 7d"],
    ),
    "request_expiry_too_long": (
        """
        approver_groups: [l]
        max_duration: 1h
        request_expiry: 8d
        """,
        ["10: elevation.request_expiry must be between 1m and 7d"],
    ),
    "request_expiry_not_duration": (
        """
        approver_groups: [l]
        max_duration: 1h
        request_expiry: soon
        """,
        ["10: elevation.request_expiry: invalid duration"],
    ),
    "reason_min_length_zero": (
        """
        approver_groups: [l]
        max_duration: 1h
        reason_min_length: 0
        """,
        ["10: elevation.reason_min_length must be at least 1"],
    ),
    "reason_min_length_too_long": (
        """
        approver_groups: [l]
        max_duration: 1h
        reason_min_length: 501
        """,
        ["10: elevation.reason_min_length must be at most 500"],
    ),
    "reason_min_length_not_int": (
        """
        approver_groups: [l]
        max_duration: 1h
        reason_min_length: true
        """,
        ["10: elevation.reason_min_length must be an integer, got a boolean"],
    ),
    "ticket_pattern_unanchored_start": (
        """
        approver_groups: [l]
        max_duration: 1h
        ticket_pattern: "INC-[0-9]+$"
        """,
        ["10: elevation.ticket_pattern: 'INC-[0-9]+$' must be anchored"],
    ),
    "ticket_pattern_unanchored_end": (
        """
        approver_groups: [l]
        max_duration: 1h
        ticket_pattern: "^INC-[0-9]+"
        """,
        ["10: elevation.ticket_pattern: '^INC-[0-9]+' must be anchored"],
    ),
    "ticket_pattern_escaped_dollar": (
        """
        approver_groups: [l]
        max_duration: 1h
        ticket_pattern: '^INC-[0-9]+\\$'
        """,
        ["10: elevation.ticket_pattern: '^INC-[0-9]+\\\\$' must be anchored"],
    ),
    "ticket_pattern_invalid": (
        """
        approver_groups: [l]
        max_duration: 1h
        ticket_pattern: "^(INC-[0-9]+$"
        """,
        ["10: elevation.ticket_pattern: bad regex"],
    ),
    "reviewers_without_break_glass": (
        """
        approver_groups: [l]
        max_duration: 1h
        break_glass_reviewers: [security-admins]
        """,
        ["10: elevation: 'break_glass_reviewers' needs 'break_glass: true'"],
    ),
    "reviewers_with_break_glass_false": (
        """
        approver_groups: [l]
        max_duration: 1h
        break_glass: false
        break_glass_reviewers: [security-admins]
        """,
        ["11: elevation: 'break_glass_reviewers' needs 'break_glass: true'"],
    ),
    "reviewers_empty": (
        """
        approver_groups: [l]
        max_duration: 1h
        break_glass: true
        break_glass_reviewers: []
        """,
        ["11: elevation.break_glass_reviewers must not be empty"],
    ),
    "unknown_key": (
        """
        approver_groups: [l]
        max_duration: 1h
        request_timeout: 4h
        """,
        ["10: elevation: unknown key 'request_timeout'"],
    ),
}


@pytest.mark.parametrize("case", sorted(ELEVATION_CASES))
def test_elevation_validation_errors(tmp_path: Path, case: str) -> None:
    body, expected = ELEVATION_CASES[case]
    errors = _errors(tmp_path, {"catalog.yaml": GOOD_CATALOG, "roles.yaml": _priv(body)})
    assert len(errors) == len(expected), errors
    for got, want in zip(errors, expected, strict=True):
        assert got.startswith(f"roles.yaml:{want.split(': ', 1)[0]}: role 'r': "), (got, want)
        assert got.split(": ", 1)[1].startswith(f"role 'r': {want.split(': ', 1)[1]}"), (got, want)


def test_elevation_ttl_rule_kept_with_factors(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        {
            "catalog.yaml": GOOD_CATALOG,
            "roles.yaml": _priv(
                """
                factors: [{approver_groups: [l]}, {approver_groups: [s]}]
                max_duration: 30m
                """
            ),
        },
    )
    assert errors == ["roles.yaml:5: role 'r': max_ttl is longer than elevation.max_duration"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factors": ()}, "at least one approval factor"),
        ({"request_expiry": 59}, "request_expiry"),
        ({"request_expiry": 7 * 86400 + 1}, "request_expiry"),
        ({"reason_min_length": 0}, "reason_min_length"),
        ({"reason_min_length": 501}, "reason_min_length"),
        ({"ticket_pattern": "INC-1"}, "anchored"),
        ({"ticket_pattern": "^(x$"}, "bad regex"),
        ({"max_duration": 0}, "max_duration"),
    ],
)
def test_elevation_rule_checks_invariants(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"factors": (ApprovalFactor(frozenset({"l"})),), "max_duration": 60}
    with pytest.raises(ValueError, match=message):
        ElevationRule(**{**args, **kwargs})  # type: ignore[arg-type]


@pytest.mark.parametrize(("groups", "approvals"), [(frozenset(), 1), ({"l"}, 0), ({"l"}, 11)])
def test_approval_factor_checks_invariants(groups: frozenset[str], approvals: int) -> None:
    with pytest.raises(ValueError):
        ApprovalFactor(frozenset(groups), approvals)
    with pytest.raises(AttributeError):
        ApprovalFactor(frozenset({"l"})).approvals = 2  # type: ignore[misc]


CATALOG_CASES = {
    "unknown_engine": (
        """
        catalog:
          x/y:
            engine: nomad
            mount: nomad
            role: r
        """,
        ["catalog.yaml:3: catalog 'x/y': engine 'nomad' is not one of"],
    ),
    "kv2_with_role": (
        """
        catalog:
          x/y:
            engine: kv2
            mount: secret
            role: r
        """,
        [
            "catalog.yaml:2: catalog 'x/y': engine 'kv2' requires 'path'",
            "catalog.yaml:5: catalog 'x/y': 'role' is not used by engine 'kv2'",
        ],
    ),
    "bad_name": (
        """
        catalog:
          Stripe/Prod:
            engine: kv2
            mount: secret
            path: p
        """,
        ["catalog.yaml:2: catalog: invalid secret name 'Stripe/Prod'"],
    ),
    "dotdot_path": (
        """
        catalog:
          x/y:
            engine: kv2
            mount: secret
            path: a/../../sys/raw
        """,
        ["catalog.yaml:5: catalog 'x/y': path 'a/../../sys/raw' is not valid"],
    ),
    "missing_mount_unknown_key": (
        """
        catalog:
          x/y:
            engine: database
            role: r
            ttl: 1h
        """,
        [
            "catalog.yaml:2: catalog 'x/y': missing required key 'mount'",
            "catalog.yaml:5: catalog 'x/y': unknown key 'ttl'",
        ],
    ),
    "duplicate_entry": (
        """
        catalog:
          x/y: {engine: kv2, mount: secret, path: p}
          x/y: {engine: kv2, mount: secret, path: q}
        """,
        ["catalog.yaml:3: catalog: duplicate key 'x/y'"],
    ),
    "unknown_top_level": (
        """
        catalog: {}
        role: []
        """,
        ["catalog.yaml:2: policy file: unknown key 'role'"],
    ),
    "not_a_mapping": (
        """
        - catalog
        """,
        ["catalog.yaml:1: policy file must be a mapping"],
    ),
    "yaml_syntax": (
        """
        catalog:
          x/y: {engine: kv2
        """,
        ["catalog.yaml:3: invalid YAML"],
    ),
    "alias": (
        """
        catalog:
          x/y: &e {engine: kv2, mount: secret, path: p}
          x/z: *e
        """,
        ["catalog.yaml:3: invalid YAML: YAML aliases are not allowed"],
    ),
    "python_tag": (
        """
        catalog:
          x/y:
            engine: !!python/name:os.system kv2
            mount: secret
            path: p
        """,
        ["catalog.yaml:3: catalog 'x/y': engine must be a string, got a value tagged"],
    ),
}


@pytest.mark.parametrize("case", sorted(CATALOG_CASES))
def test_catalog_validation_errors(tmp_path: Path, case: str) -> None:
    body, expected = CATALOG_CASES[case]
    errors = _errors(tmp_path, {"catalog.yaml": body})
    assert len(errors) == len(expected), errors
    for got, want in zip(errors, expected, strict=True):
        assert got.startswith(want), (got, want)


def test_catalog_name_in_two_files(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        {
            "a.yaml": GOOD_CATALOG,
            "b.yml": """
            # second copy
            catalog:
              a/one: {engine: kv2, mount: secret, path: other}
        """,
        },
    )
    assert errors == ["b.yml:3: catalog: secret 'a/one' is already defined at a.yaml:2"]


def test_role_defined_in_two_files(tmp_path: Path) -> None:
    role = """
        roles:
          - name: r
            members: {groups: [g]}
            capabilities: [audit]
    """
    errors = _errors(tmp_path, {"a.yaml": role, "b.yaml": role})
    assert errors == ["b.yaml:2: role 'r' is already defined at a.yaml:2"]


def test_roles_may_reference_catalog_from_later_file(tmp_path: Path) -> None:
    d = tmp_path / "p"
    _write(
        d,
        {
            "a-roles.yaml": """
            roles:
              - name: r
                members: {groups: [g]}
                secrets: [a/one]
                max_ttl: 1h
        """,
            "z-catalog.yaml": GOOD_CATALOG,
        },
    )
    policy = load_policy_dir(d)
    assert policy.role("r") is not None
    assert policy.role("r").source == "a-roles.yaml:2"  # type: ignore[union-attr]


def test_errors_collected_across_files_sorted(tmp_path: Path) -> None:
    errors = _errors(
        tmp_path,
        {
            "b.yaml": """
            catalog:
              x/y: {engine: nope, mount: m, path: p}
        """,
            "a.yaml": """
            roles:
              - name: r
                members: {groups: [g]}
                secrets: [x/y]
                max_ttl: forever
                colour: blue
        """,
        },
    )
    assert [e.split(": ")[0] for e in errors] == ["a.yaml:5", "a.yaml:6", "b.yaml:2"]


def test_size_limit(tmp_path: Path) -> None:
    body = GOOD_CATALOG + "# " + "x" * 2000 + "\n"
    errors = _errors(tmp_path, {"big.yaml": body}, max_file_bytes=1024)
    assert errors == ["big.yaml:1: file is larger than 1024 bytes"]
    d = tmp_path / "bad"
    assert load_policy_dir(d, max_file_bytes=4096).catalog.keys() == {"a/one", "b/db"}


def test_non_utf8(tmp_path: Path) -> None:
    d = tmp_path / "p"
    d.mkdir()
    (d / "p.yaml").write_bytes(b"catalog:\n  # caf\xe9\n")
    with pytest.raises(PolicyError) as exc:
        load_policy_dir(d)
    assert exc.value.errors == ["p.yaml:2: file is not valid UTF-8"]


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a policy")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "roles.yaml").write_text("roles: []\n")
    with pytest.raises(PolicyError) as exc:
        load_policy_dir(tmp_path)
    assert exc.value.errors == [f"{tmp_path}:0: no policy files (*.yaml, *.yml) in directory"]


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy_dir(tmp_path / "missing")
    assert exc.value.errors[0].endswith(":0: not a directory")


def test_too_many_files(tmp_path: Path) -> None:
    for i in range(201):
        (tmp_path / f"f{i:03}.yaml").write_text("")
    with pytest.raises(PolicyError) as exc:
        load_policy_dir(tmp_path)
    assert exc.value.errors == [f"{tmp_path}:0: 201 policy files, more than the limit of 200"]


def test_empty_and_comment_only_files_contribute_nothing(tmp_path: Path) -> None:
    d = tmp_path / "p"
    _write(d, {"catalog.yaml": GOOD_CATALOG, "empty.yaml": "", "notes.yml": "# todo\n"})
    policy = load_policy_dir(d)
    assert set(policy.documents) == {"catalog.yaml", "empty.yaml", "notes.yml"}
    assert policy.roles == ()
