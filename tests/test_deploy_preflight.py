"""``fedsim doctor`` and the submit preflight against local sockets, no SuperLink: each problem a
node can have (unreachable, CA not trusted, name not in the certificate, not TLS, a key others
can read) is one line naming it; and scripts/make_certs.sh makes owner-only keys outside git."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.deploy import connection_settings
from fedsim.errors import ConfigError
from fedsim.preflight import (
    PreflightError,
    check_reachable,
    check_tls,
    doctor,
    load_node_key,
    split_address,
    supernode_command,
)

REPO = Path(__file__).resolve().parents[1]
needs_tools = pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
    reason="openssl and ssh-keygen make the certificates",
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("openssl and ssh-keygen make the certificates")
    out = tmp_path_factory.mktemp("pf") / "certs"
    subprocess.run([str(REPO / "scripts/make_certs.sh"), str(out), "1"], check=True)
    other = out.parent / "other"
    subprocess.run([str(REPO / "scripts/make_certs.sh"), str(other), "0"], check=True)
    return out


def _serve(sock: socket.socket, ctx: ssl.SSLContext | None) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        try:
            if ctx is not None:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            else:
                conn.recv(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


@pytest.fixture
def server(certs: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    """A TLS server (or plain TCP with param "plain") on 127.0.0.1 with make_certs' server.crt."""
    ctx = None
    if getattr(request, "param", "tls") == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs / "server.crt", certs / "server.key")
    socks = [socket.socket(), socket.socket()]
    socks[0].bind(("127.0.0.1", 0))
    port = socks[0].getsockname()[1]
    socks[1].bind(("127.0.0.2", port))  # the same server under an address its certificate lacks
    for sock in socks:
        sock.listen(8)
        threading.Thread(target=_serve, args=(sock, ctx), daemon=True).start()
    yield port
    for sock in socks:
        sock.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_certificate_is_verified_with_the_ca_and_the_name(certs: Path, server: int) -> None:
    names = check_tls("127.0.0.1", server, certs / "ca.crt")
    assert "DNS:localhost" in names and "IP:127.0.0.1" in names
    with pytest.raises(PreflightError, match=r"^CA not trusted: .* not signed by the CA in"):
        check_tls("127.0.0.1", server, certs.parent / "other" / "ca.crt")
    with pytest.raises(PreflightError) as e:
        check_tls("127.0.0.2", server, certs / "ca.crt")
    assert str(e.value).startswith("name not in the certificate: the SuperLink's certificate ")
    assert "does not name '127.0.0.2' (it names DNS:localhost, IP:127.0.0.1" in str(e.value)


@pytest.mark.parametrize("server", ["plain"], indirect=True)
def test_a_port_without_tls_is_named(certs: Path, server: int) -> None:
    with pytest.raises(PreflightError, match="this port does not speak TLS"):
        check_tls("127.0.0.1", server, certs / "ca.crt")


def test_an_unreachable_superlink_is_one_line() -> None:
    port = _closed_port()
    with pytest.raises(PreflightError) as e:
        check_reachable("127.0.0.1", port)
    assert str(e.value).startswith(f"SuperLink unreachable: connection refused on 127.0.0.1:{port}")
    with pytest.raises(PreflightError, match="cannot resolve 'no-such-host.invalid'"):
        check_reachable("no-such-host.invalid", 9092)


def test_bad_input_is_refused_before_any_traffic(certs: Path, tmp_path: Path) -> None:
    for bad in ("nohost", "host:", "host:0", "host:70000"):
        with pytest.raises(ConfigError, match="invalid SuperLink address"):
            split_address(bad)
    assert split_address("[::1]:9092") == ("::1", 9092)
    with pytest.raises(ConfigError, match="CA certificate .* not found"):
        doctor("127.0.0.1:9", tmp_path / "missing.crt", None)
    readable = tmp_path / "node_0"
    shutil.copy(certs / "node_0", readable)
    readable.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\).*chmod 600"):
        load_node_key(readable)
    readable.chmod(0o600)
    load_node_key(readable)
    (tmp_path / "junk").write_text("not a key")
    (tmp_path / "junk").chmod(0o600)
    with pytest.raises(ConfigError, match="not an EC private key in OpenSSH format"):
        load_node_key(tmp_path / "junk")


def test_doctor_prints_one_line_and_exits_1(
    certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    args = ["doctor", "--superlink", f"127.0.0.1:{port}", "--root-certificates"]
    assert main([*args, str(certs / "ca.crt"), "--start", "--port", "9094"]) == 1
    out = capsys.readouterr()
    assert out.err.strip().splitlines() == [
        f"fedsim doctor: SuperLink unreachable: connection refused on 127.0.0.1:{port} (nothing "
        "listens there to this host: is the SuperLink running, on this port, bound to a "
        "reachable address?)"
    ]
    assert "starting" not in out.out
    assert main(["doctor", "--superlink", "h:1"]) == 2
    assert "required: --root-certificates" in capsys.readouterr().err


def test_doctor_start_bounds_the_supernode_retries() -> None:
    cmd = supernode_command("s:9092", Path("ca.crt"), Path("node_0"), ["--port", "9095"])
    assert cmd[1:] == [
        "--superlink", "s:9092", "--root-certificates", "ca.crt",
        "--auth-supernode-private-key", "node_0", "--max-retries", "10",
        "--max-wait-time", "300", "--port", "9095",
    ]  # fmt: skip
    mine = supernode_command("s:9092", Path("ca.crt"), None, ["--max-retries=3"])
    assert "--max-retries" not in mine and mine[-1] == "--max-retries=3"


def test_submit_names_an_unknown_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[superlink.lab]\naddress = "127.0.0.1:8000"\n')
    assert connection_settings("lab")["address"] == "127.0.0.1:8000"
    assert main(["submit", "--app", str(REPO), "labx", "rounds=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        f"unknown SuperLink connection 'labx' in {tmp_path}/config.toml: allowed ['lab']"
    )
    port = _closed_port()
    (tmp_path / "config.toml").write_text(f'[superlink.lab]\naddress = "127.0.0.1:{port}"\n')
    assert main(["submit", "--app", str(REPO), "lab", "rounds=1"]) == 1
    assert capsys.readouterr().err.startswith(
        f"fedsim submit: SuperLink unreachable: connection refused on 127.0.0.1:{port}"
    )


@needs_tools
def test_make_certs_keeps_private_keys_owner_only_and_out_of_git(tmp_path: Path) -> None:
    out = tmp_path / "c"
    subprocess.run([str(REPO / "scripts/make_certs.sh"), str(out), "1"], check=True)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert out.stat().st_mode & 0o777 == 0o700
    assert modes["ca.key"] == modes["server.key"] == modes["node_0"] == 0o600
    assert modes["ca.crt"] == modes["server.crt"] == modes["node_0.pub"] == 0o644
    repo = tmp_path / "checkout"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    bad = subprocess.run(
        [str(REPO / "scripts/make_certs.sh"), str(repo / "certs"), "1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "inside the git checkout" in bad.stderr
    assert not (repo / "certs").exists()
    (repo / ".gitignore").write_text("/certs/\n")
    subprocess.run(
        [str(REPO / "scripts/make_certs.sh"), str(repo / "certs"), "1"],
        check=True,
        capture_output=True,
        env=dict(os.environ),
    )
    assert (repo / "certs" / "node_0").stat().st_mode & 0o777 == 0o600
