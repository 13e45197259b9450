"""The broker serving TLS, driven by real clients: curl, hvac, the ``bao`` CLI, OpenSSL.

``broker serve`` runs as a real subprocess on the session stack, with a certificate from
the dev CA (``broker.tls.devca``) for 127.0.0.1 and localhost, both listeners (native API
and the Vault front door) on free loopback ports. Nothing is mocked: every handshake is a
real one, and the rotation test rewrites the files on disk while the process keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import hvac
import pytest
from cryptography import x509

from broker.settings import Settings, SettingsError, from_env
from broker.stack.devstack import DevStack
from broker.stack.openbao import _bao_binary
from broker.tls.devca import DevCA, IssuedCert
from broker.tls.loopback import is_loopback
from broker.tls.serving import ServingTLS, plaintext_refusal
from tests.support.commands import subprocess_env
from tests.support.paths import BROKER_BIN
from tests.support.polling import poll
from tests.support.processes import BrokerProcess, serve_env, start_serve
from tests.support.tokens import fresh_subject, mint

_HOSTS = ["localhost", "127.0.0.1"]
# A configured listen address the refusal is judged on; these tests never bind it.
_ALL = "0.0.0.0"  # noqa: S104


# --- the pure rule and the settings -------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        (_ALL, False),
        ("::", False),
        ("", False),
        ("10.0.0.7", False),
        ("broker.internal", False),
    ],
)
def test_loopback_is_decided_by_the_address(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    refused = plaintext_refusal(host, tls=False, tls_disable=False)
    assert (refused is None) is loopback
    # TLS, or an explicit tls_disable, always allows listening.
    assert plaintext_refusal(host, tls=True, tls_disable=False) is None
    assert plaintext_refusal(host, tls=False, tls_disable=True) is None


def test_certificate_and_key_are_set_together(tmp_path: Path) -> None:
    issued = DevCA.load_or_create(tmp_path).issue("server", _HOSTS)
    with pytest.raises(SettingsError, match=r"tls_cert_file .* is set without tls_key_file"):
        from_env({"BROKER_TLS_CERT_FILE": str(issued.cert_path)})
    with pytest.raises(SettingsError, match=r"tls_key_file .* is set without tls_cert_file"):
        from_env({"BROKER_TLS_KEY_FILE": str(issued.key_path)})
    with pytest.raises(SettingsError, match=r"tls_client_ca_file .* needs tls_cert_file"):
        from_env({"BROKER_TLS_CLIENT_CA_FILE": str(issued.cert_path)})
    with pytest.raises(SettingsError, match=r"tls_disable .* is true but tls_cert_file"):
        from_env(
            {
                "BROKER_TLS_CERT_FILE": str(issued.cert_path),
                "BROKER_TLS_KEY_FILE": str(issued.key_path),
                "BROKER_TLS_DISABLE": "true",
            }
        )
    with pytest.raises(SettingsError, match="BROKER_TLS_KEY_FILE must be a readable file"):
        from_env(
            {
                "BROKER_TLS_CERT_FILE": str(issued.cert_path),
                "BROKER_TLS_KEY_FILE": str(tmp_path / "missing.pem"),
            }
        )
    ok = from_env(
        {
            "BROKER_TLS_CERT_FILE": str(issued.cert_path),
            "BROKER_TLS_KEY_FILE": str(issued.key_path),
            "BROKER_TLS_RELOAD_INTERVAL": "2",
        }
    )
    assert (ok.tls_cert_file, ok.tls_reload_seconds, ok.tls_disable) == (
        issued.cert_path,
        2.0,
        False,
    )


# --- the context and its reloads, on a real socket -----------------------------------------


def _serial(issued: IssuedCert) -> int:
    return x509.load_pem_x509_certificates(issued.cert_path.read_bytes())[0].serial_number


async def _served_serial(port: int, client: ssl.SSLContext) -> int:
    """The serial of the certificate a new connection to ``port`` is shown."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client, server_hostname="localhost"
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def test_a_bad_pair_keeps_the_old_certificate_and_a_good_one_replaces_it(
    tmp_path: Path,
) -> None:
    ca = DevCA.load_or_create(tmp_path / "ca")
    first = ca.issue("server", _HOSTS, directory=tmp_path / "live")
    old_serial = _serial(first)  # the files change below
    outcomes: list[str] = []
    tls = ServingTLS(
        first.cert_path, first.key_path, on_reload=lambda outcome, _: outcomes.append(outcome)
    )
    assert tls.load().serial == old_serial
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_2

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    try:
        assert await _served_serial(port, client) == old_serial
        assert tls.reload_if_changed() is None  # nothing changed

        # A half-rotated pair: the new certificate is on disk, its key is not (yet).
        other = ca.issue("other", _HOSTS, directory=tmp_path / "other")
        first.cert_path.write_bytes(other.cert_path.read_bytes())
        assert tls.reload_if_changed() == "error"
        assert await _served_serial(port, client) == old_serial
        # A truncated key: still the old certificate.
        first.key_path.write_bytes(other.key_path.read_bytes()[:40])
        assert tls.reload_if_changed() == "error"
        assert await _served_serial(port, client) == old_serial

        # The key arrives: the next look loads the pair, on the same context.
        first.key_path.write_bytes(other.key_path.read_bytes())
        assert tls.reload_if_changed() == "ok"
        assert await _served_serial(port, client) == _serial(other)
        assert tls.current.serial == _serial(other)
        # Touched, same contents: not a reload.
        os.utime(first.cert_path)
        assert tls.reload_if_changed() is None
        assert outcomes == ["error", "error", "ok"]
    finally:
        server.close()
        await server.wait_closed()


# --- broker serve over TLS -------------------------------------------------------------------


def _ca_client(ca: DevCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_path))


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
async def tls_ca(tls_dir: Path) -> DevCA:
    return DevCA.load_or_create(tls_dir / "ca")


@pytest.fixture(scope="module")
async def tls_broker(
    broker_settings: Settings, tls_ca: DevCA, tls_dir: Path
) -> AsyncIterator[BrokerProcess]:
    """``broker serve`` with both listeners on TLS, checking its files every 0.2 s."""
    issued = tls_ca.issue("server", _HOSTS, directory=tls_dir / "serving")
    env = serve_env(
        broker_settings,
        "tls-1",
        BROKER_TLS_CERT_FILE=str(issued.cert_path),
        BROKER_TLS_KEY_FILE=str(issued.key_path),
        BROKER_TLS_RELOAD_INTERVAL="0.2",
        BROKER_VAULT_API_PORT="0",
    )
    proc = await start_serve(env, "tls-1", tls_dir)
    try:
        yield proc
    finally:
        await proc.kill()


async def _run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env if env is not None else subprocess_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_curl_with_the_ca_reaches_health_and_issues(
    tls_broker: BrokerProcess, tls_ca: DevCA, broker_settings: Settings
) -> None:
    assert tls_broker.url.startswith("https://127.0.0.1:")
    ca = str(tls_ca.cert_path)
    rc, out, err = await _run(
        "curl", "-sS", "--fail-with-body", "--cacert", ca, f"{tls_broker.url}/v1/health"
    )
    assert rc == 0, err
    assert json.loads(out)["status"] == "ok"

    token = mint(broker_settings, fresh_subject("tls-curl"), ["engineering"])
    rc, out, err = await _run(
        "curl", "-sS", "--fail-with-body", "--cacert", ca,
        "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json",
        "-d", json.dumps({"secret": "stripe/test", "reason": "tls test"}),
        f"{tls_broker.url}/v1/credentials",
    )  # fmt: skip
    assert rc == 0, out + err
    assert json.loads(out)["secret"] == "stripe/test"

    # Without the CA curl refuses the certificate (it is not a public one).
    rc, _, err = await _run("curl", "-sS", f"{tls_broker.url}/v1/health")
    assert rc == 60, err  # CURLE_PEER_FAILED_VERIFICATION


async def test_hvac_through_the_front_door_verifies_the_ca(
    tls_broker: BrokerProcess, tls_ca: DevCA, tokens: dict[str, str], stack: DevStack
) -> None:
    url = tls_broker.vault_api_url
    assert url.startswith("https://127.0.0.1:")
    client = hvac.Client(url=url, verify=str(tls_ca.cert_path))
    await asyncio.to_thread(client.auth.jwt.jwt_login, role="demo", jwt=tokens["alice"])
    out = await asyncio.to_thread(
        client.secrets.kv.v2.read_secret_version,
        path="stripe/test",
        mount_point="secret",
        raise_on_deleted_version=True,
    )
    assert out["data"]["data"] == dict(stack.demo.secret_values["stripe/test"])
    # The default trust store does not know the dev CA.
    import requests

    with pytest.raises(requests.exceptions.SSLError):
        await asyncio.to_thread(hvac.Client(url=url).sys.read_health_status, method="GET")


async def test_bao_cli_with_vault_cacert(
    tls_broker: BrokerProcess,
    tls_ca: DevCA,
    broker_settings: Settings,
    stack: DevStack,
    tmp_path: Path,
) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "BAO_ADDR": tls_broker.vault_api_url,
        "VAULT_ADDR": tls_broker.vault_api_url,
        "VAULT_CACERT": str(tls_ca.cert_path),
    }
    engineer = mint(broker_settings, fresh_subject("tls-bao"), ["engineering"])
    rc, out, err = await _run(
        _bao_binary(), "write", "-format=json", "auth/jwt/login", "role=demo",
        f"jwt={engineer}", env=env,
    )  # fmt: skip
    assert rc == 0, err
    token = json.loads(out)["auth"]["client_token"]
    rc, out, err = await _run(
        _bao_binary(), "kv", "get", "-format=json", "-mount=secret", "stripe/test",
        env={**env, "BAO_TOKEN": token},
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["data"]["data"] == dict(stack.demo.secret_values["stripe/test"])

    # Without the CA the CLI refuses the certificate.
    no_ca = {k: v for k, v in env.items() if k != "VAULT_CACERT"}
    rc, _, err = await _run(
        _bao_binary(), "kv", "get", "-mount=secret", "stripe/test",
        env={**no_ca, "BAO_TOKEN": token},
    )  # fmt: skip
    assert rc != 0 and "certificate" in err, err


@pytest.mark.parametrize("listener", ["api", "vault_api"])
async def test_tls_1_0_and_1_1_are_refused(
    tls_broker: BrokerProcess, tls_ca: DevCA, listener: str
) -> None:
    url = tls_broker.url if listener == "api" else tls_broker.vault_api_url
    port = urlsplit(url).port
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        old = _ca_client(tls_ca)
        # Let this client offer TLS 1.0/1.1 at all (OpenSSL 3 refuses them at its default
        # security level), so the refusal seen is the server's: it reads the client's
        # hello and ends the connection.
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the point of the test
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = version
        with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
            await asyncio.open_connection("127.0.0.1", port, ssl=old, server_hostname="localhost")
        assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value).upper(), refused.value
    modern = _ca_client(tls_ca)
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=modern, server_hostname="localhost"
    )
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
    writer.close()


@pytest.mark.parametrize("listener", ["api", "vault_api"])
async def test_a_plaintext_request_is_refused(tls_broker: BrokerProcess, listener: str) -> None:
    url = tls_broker.url if listener == "api" else tls_broker.vault_api_url
    reader, writer = await asyncio.open_connection("127.0.0.1", urlsplit(url).port)
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    await writer.drain()
    try:
        answer = await asyncio.wait_for(reader.read(4096), timeout=10)
    except ConnectionError:
        answer = b""
    writer.close()
    assert not answer.startswith(b"HTTP/"), answer
    async with aiohttp.ClientSession() as http:
        plain = url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"{plain}/v1/health") as r:
                await r.read()


def _metric(text: str, series: str) -> float:
    """The value of ``series`` (name and labels, as exposed) in a Prometheus text page."""
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(series + " ")]
    assert len(values) == 1, f"{series} not exposed once: {values}"
    return float(values[0])


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    """One keep-alive HTTP/1.1 GET on an open connection; the status line."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


async def test_a_rotated_certificate_reaches_new_connections_without_a_restart(
    tls_broker: BrokerProcess, tls_ca: DevCA, tls_dir: Path
) -> None:
    client = _ca_client(tls_ca)
    api_port, door_port = urlsplit(tls_broker.url).port, urlsplit(tls_broker.vault_api_url).port
    assert api_port and door_port
    before = await _served_serial(api_port, client)
    # A connection opened before the rotation, kept alive across it.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", api_port, ssl=client, server_hostname="localhost"
    )
    assert await _get(reader, writer, "/v1/health") == b"HTTP/1.1 200 OK"

    rotated = tls_ca.issue("server", _HOSTS, directory=tls_dir / "serving")  # same files
    new = _serial(rotated)
    assert new != before

    async def served() -> set[int]:
        return {await _served_serial(api_port, client), await _served_serial(door_port, client)}

    assert await poll(served, lambda seen: seen == {new}, timeout=15) == {new}
    assert tls_broker.proc.returncode is None  # never restarted
    # The old connection was not dropped.
    assert await _get(reader, writer, "/v1/health") == b"HTTP/1.1 200 OK"
    writer.close()

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{tls_broker.url}/metrics", ssl=client) as r,
    ):
        text = await r.text()
    not_after = x509.load_pem_x509_certificates(rotated.cert_path.read_bytes())[0]
    expiry = not_after.not_valid_after_utc.timestamp()
    assert _metric(text, "broker_tls_certificate_expiry_timestamp_seconds") == expiry
    assert _metric(text, 'broker_tls_certificate_reloads_total{outcome="ok"}') >= 1
    assert _metric(text, "broker_tls_disabled") == 0


async def test_mtls_requires_a_client_certificate_from_the_ca(
    broker_settings: Settings, tls_ca: DevCA, tls_dir: Path
) -> None:
    issued = tls_ca.issue("mtls-server", _HOSTS, directory=tls_dir / "mtls")
    env = serve_env(
        broker_settings,
        "tls-mtls",
        BROKER_TLS_CERT_FILE=str(issued.cert_path),
        BROKER_TLS_KEY_FILE=str(issued.key_path),
        BROKER_TLS_CLIENT_CA_FILE=str(tls_ca.cert_path),
    )
    proc = await start_serve(env, "tls-mtls", tls_dir)
    try:
        port = urlsplit(proc.url).port
        # No client certificate: the server ends the handshake (TLS 1.3 reports it on read).
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=_ca_client(tls_ca), server_hostname="localhost"
            )
            await _get(reader, writer, "/v1/health")
        # A client certificate from another CA: refused too.
        stranger_ca = DevCA.load_or_create(tls_dir / "stranger")
        stranger = stranger_ca.issue("stranger", ["stranger"], client=True)
        wrong = _ca_client(tls_ca)
        wrong.load_cert_chain(stranger.cert_path, stranger.key_path)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=wrong, server_hostname="localhost"
            )
            await _get(reader, writer, "/v1/health")
        # A client certificate the CA signed: admitted.
        mine = tls_ca.issue("client", ["tests"], client=True, directory=tls_dir / "mtls")
        with_cert = _ca_client(tls_ca)
        with_cert.load_cert_chain(mine.cert_path, mine.key_path)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=with_cert, server_hostname="localhost"
        )
        assert await _get(reader, writer, "/v1/health") == b"HTTP/1.1 200 OK"
        writer.close()
    finally:
        await proc.kill()


# --- plaintext is a decision -------------------------------------------------------------


@pytest.mark.parametrize("host", [_ALL, "10.11.12.13"])
async def test_broker_serve_refuses_plaintext_off_loopback(
    broker_settings: Settings, host: str
) -> None:
    env = serve_env(broker_settings, "tls-refused", BROKER_HOST=host)
    rc, out, err = await _run(str(BROKER_BIN), "serve", env=env)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "refusing to serve plaintext HTTP on non-loopback host" in lines[0]
    assert "BROKER_TLS_DISABLE" in lines[0]
    assert "listening" not in out


async def test_broker_serve_refuses_a_certificate_without_its_key(tmp_path: Path) -> None:
    issued = DevCA.load_or_create(tmp_path).issue("server", _HOSTS)
    env = subprocess_env(BROKER_TLS_CERT_FILE=str(issued.cert_path))
    rc, _, err = await _run(str(BROKER_BIN), "serve", env=env)
    assert rc == 2, err
    assert "tls_cert_file (BROKER_TLS_CERT_FILE) is set without tls_key_file" in err


async def test_tls_disable_off_loopback_warns_and_shows_in_metrics(
    broker_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Bound to 127.0.0.1 (the tests' port rules) but configured as a 0.0.0.0 deployment.
    from tests.support.brokers import running_broker

    with caplog.at_level("WARNING", logger="broker.app"):
        async with (
            running_broker(broker_settings, host=_ALL, tls_disable=True) as b,
            aiohttp.ClientSession() as http,
            http.get(f"{b.url}/metrics") as r,
        ):
            text = await r.text()
    assert _metric(text, "broker_tls_disabled") == 1
    assert any("TLS is disabled" in r.getMessage() for r in caplog.records), caplog.text
