"""Why a SuperNode cannot join, in one line: ``fedsim doctor`` and the checks ``fedsim submit`` runs.

A SuperNode that cannot join a SuperLink (flwr 1.39) mostly says "Connection attempt failed" and
retries; only the SuperLink's log tells why. These checks ask the network themselves, in order,
and stop at the first problem with one line that names it and the fix:

1. :func:`check_reachable`: a TCP connection to ``HOST:PORT`` (refused, no answer, unknown name);
2. :func:`check_tls`: a TLS handshake with Python's :mod:`ssl`, trusting only the given CA and
   checking the name dialed (CA not trusted, name not in the certificate, not a TLS port);
3. :func:`check_node_key`: the node key's file mode, then one SuperNode activation on the Fleet
   API signed with that key, undone at once (key not registered, a node with that key is online).

Each raises :class:`PreflightError`; the CLI prints it as ``fedsim doctor: MESSAGE`` (exit 1).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

#: The heartbeat interval (s) the key check announces; the SuperLink counts a node that missed two
#: heartbeats offline, so a SuperNode killed without a shutdown blocks its key for up to 2x this.
HEARTBEAT_SECONDS = 30.0


class PreflightError(RuntimeError):
    """A SuperNode could not join, or a run could not be submitted: one line naming the cause."""


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``.

    Raises
    ------
    ConfigError
        When ``address`` has no port or the port is not a number in 1..65535.
    """
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid SuperLink address {address!r}: allowed HOST:PORT")
    return host, int(port)


def check_reachable(host: str, port: int, *, timeout: float = 5.0) -> None:
    """Open (and close) a TCP connection to ``host:port``.

    Raises
    ------
    PreflightError
        When the name does not resolve, the connection is refused or nothing answers in time.
    """
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror as e:
        raise PreflightError(
            f"SuperLink unreachable: cannot resolve {host!r} ({e.strerror})"
        ) from None
    except ConnectionRefusedError:
        raise PreflightError(
            f"SuperLink unreachable: connection refused on {host}:{port} (nothing listens there "
            "to this host: is the SuperLink running, on this port, bound to a reachable address?)"
        ) from None
    except TimeoutError:
        raise PreflightError(
            f"SuperLink unreachable: no answer from {host}:{port} within {timeout:g} s "
            "(wrong address, or a firewall drops the packets)"
        ) from None
    except OSError as e:
        raise PreflightError(f"SuperLink unreachable: {host}:{port}: {e.strerror or e}") from None


def _names(cert: dict) -> str:
    """The subjectAltName entries of a certificate from :meth:`ssl.SSLSocket.getpeercert`."""
    names = [f"{kind}:{value}" for kind, value in cert.get("subjectAltName", ())]
    return ", ".join(n.replace("IP Address:", "IP:") for n in names) or "none"


def _handshake(host: str, port: int, ctx: ssl.SSLContext, timeout: float) -> dict:
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.getpeercert() or {}


def check_tls(host: str, port: int, ca_file: Path, *, timeout: float = 5.0) -> str:
    """Shake hands with ``host:port`` over TLS, trusting only ``ca_file``, and check the name.

    Returns
    -------
    str
        The names the server's certificate holds (for the success line).

    Raises
    ------
    ConfigError
        When ``ca_file`` is missing or is not a PEM certificate.
    PreflightError
        When the certificate is not signed by that CA, does not name ``host``, or the port does
        not speak TLS.
    """
    ca_file = Path(ca_file).expanduser()
    if not ca_file.is_file():
        raise ConfigError(f"CA certificate {str(ca_file)!r} not found: allowed a PEM file (ca.crt)")
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError:
        raise ConfigError(f"CA certificate {str(ca_file)!r} is not a PEM certificate") from None
    ctx.set_alpn_protocols(["h2"])  # what a gRPC client offers
    try:
        return _names(_handshake(host, port, ctx, timeout))
    except ssl.SSLCertVerificationError as e:
        if e.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
            loose = ssl.create_default_context(cafile=str(ca_file))
            loose.check_hostname = False
            names = _names(_handshake(host, port, loose, timeout))
            raise PreflightError(
                f"name not in the certificate: the SuperLink's certificate does not name {host!r} "
                f"(it names {names}); dial one of those, or remake server.crt with "
                f"scripts/make_certs.sh naming {host}"
            ) from None
        raise PreflightError(
            f"CA not trusted: the SuperLink's certificate at {host}:{port} is not signed by the CA "
            f"in {ca_file} ({e.verify_message}); copy the ca.crt that signed server.crt"
        ) from None
    except (ssl.SSLError, ConnectionResetError) as e:
        raise PreflightError(
            f"TLS handshake with {host}:{port} failed ({getattr(e, 'reason', None) or e}): "
            "this port does not speak TLS (a SuperLink started with --insecure, or not its port)"
        ) from None
    except TimeoutError:
        raise PreflightError(
            f"TLS handshake with {host}:{port} timed out after {timeout:g} s"
        ) from None
    except OSError as e:
        raise PreflightError(f"SuperLink unreachable: {host}:{port}: {e.strerror or e}") from None


def load_node_key(key_file: Path) -> EllipticCurvePrivateKey:
    """The SuperNode's EC private key (OpenSSH format), refusing a file others can read.

    Raises
    ------
    ConfigError
        When the file is missing, readable by group or others, or not an EC key in OpenSSH format.
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    key_file = Path(key_file).expanduser()
    if not key_file.is_file():
        raise ConfigError(f"node key {str(key_file)!r} not found: allowed a private key file")
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"node key {str(key_file)!r} is readable by others (mode {mode:04o}): "
            f"allowed owner-only, chmod 600 {key_file}"
        )
    try:
        key = load_ssh_private_key(key_file.read_bytes(), None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(
            f"node key {str(key_file)!r} is not an EC private key in OpenSSH format "
            "(allowed: ssh-keygen -t ecdsa -b 384, as scripts/make_certs.sh makes)"
        )
    return key


#: flwr's error code for a refused activation (``ApiErrorCode.FLEET_NODE_ACTIVATION_FAILED``): the
#: key is not registered, or its node is online already; the Fleet API does not say which.
_ACTIVATION_FAILED = 2004


def _flower_code(details: str) -> int | None:
    """The ``code`` of a Flower error carried as JSON in a gRPC status's details, if any."""
    try:
        payload = json.loads(details)
    except ValueError:
        return None
    code = payload.get("code") if isinstance(payload, dict) else None
    return code if isinstance(code, int) else None


def check_node_key(
    host: str, port: int, ca_file: Path, key_file: Path, *, timeout: float = 10.0
) -> int:
    """Activate the SuperNode of ``key_file`` on the Fleet API once, then deactivate it.

    This is what ``flower-supernode`` does first; the SuperLink answers it only for a key that
    was registered (``flwr supernode register``) and whose node is not online already.

    Returns
    -------
    int
        The node id the SuperLink gave that key.

    Raises
    ------
    PreflightError
        When the key is not registered, its node is online already, or the call fails.
    """
    import grpc
    from flwr.client.grpc_rere_client.node_auth_client_interceptor import (
        NodeAuthClientInterceptor,
    )
    from flwr.proto.fleet_pb2 import ActivateNodeRequest, DeactivateNodeRequest
    from flwr.proto.fleet_pb2_grpc import FleetStub
    from flwr.supercore.interceptors import RuntimeVersionClientInterceptor
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    key = load_node_key(key_file)
    public = key.public_key()
    creds = grpc.ssl_channel_credentials(Path(ca_file).expanduser().read_bytes())
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.secure_channel(target, creds) as raw:
        channel = grpc.intercept_channel(
            raw,
            RuntimeVersionClientInterceptor(component_name="SuperNode"),
            NodeAuthClientInterceptor(key, public),
        )
        stub = FleetStub(channel)
        request = ActivateNodeRequest(
            public_key=public_key_to_bytes(public), heartbeat_interval=HEARTBEAT_SECONDS
        )
        try:
            node_id = int(stub.ActivateNode(request, timeout=timeout).node_id)
        except grpc.RpcError as e:
            details = " ".join(str(e.details() or "").split())  # type: ignore[attr-defined]
            if _flower_code(details) == _ACTIVATION_FAILED:
                raise PreflightError(
                    f"key not registered: the SuperLink refused to activate the node of {key_file} "
                    f"(register it on the server: `flwr supernode register {key_file}.pub "
                    "CONNECTION`; or a SuperNode with this key is online already, or was killed "
                    f"less than {2 * HEARTBEAT_SECONDS:g} s ago)"
                ) from None
            raise PreflightError(
                f"SuperLink at {host}:{port} refused the node key {key_file}: "
                f"{e.code().name}: {details[:300]}"  # type: ignore[attr-defined]
            ) from None
        stub.DeactivateNode(DeactivateNodeRequest(node_id=node_id), timeout=timeout)
    return node_id


def doctor(superlink: str, ca_file: Path, key_file: Path | None, *, timeout: float = 5.0) -> str:
    """Every check a SuperNode needs, in order; the success line, or :class:`PreflightError`."""
    host, port = split_address(superlink)
    if not Path(ca_file).expanduser().is_file():
        raise ConfigError(f"CA certificate {str(ca_file)!r} not found: allowed a PEM file (ca.crt)")
    if key_file is not None:
        load_node_key(key_file)  # a bad key file is bad input: before any network traffic
    check_reachable(host, port, timeout=timeout)
    names = check_tls(host, port, ca_file, timeout=timeout)
    line = f"ok: {host}:{port} reachable; TLS verified by {ca_file} (the certificate names {names})"
    if key_file is not None:
        node_id = check_node_key(host, port, ca_file, key_file, timeout=2 * timeout)
        line += f"; key {key_file} registered (node id {node_id})"
    return line


DOCTOR_USAGE = (
    "usage: fedsim doctor --superlink HOST:PORT --root-certificates CA.CRT "
    "[--auth-supernode-private-key KEY] [--timeout SECONDS] [--start [SUPERNODE OPTIONS...]]"
)

#: Retry bounds ``fedsim doctor --start`` gives ``flower-supernode`` unless told otherwise (its
#: own defaults are no limit): reconnection attempts, and seconds of trying, per outage.
RETRY_BOUNDS = {"--max-retries": "10", "--max-wait-time": "300"}


def supernode_command(
    superlink: str, ca_file: Path, key_file: Path | None, extra: list[str]
) -> list[str]:
    """The ``flower-supernode`` command ``fedsim doctor --start`` runs: the checked options,
    ``extra`` as given, and :data:`RETRY_BOUNDS` for the bounds ``extra`` does not set."""
    exe = Path(sys.executable).with_name("flower-supernode")
    cmd = [str(exe) if exe.exists() else "flower-supernode", "--superlink", superlink]
    cmd += ["--root-certificates", str(ca_file)]
    if key_file is not None:
        cmd += ["--auth-supernode-private-key", str(key_file)]
    given = {a.split("=")[0] for a in extra}
    for flag, value in RETRY_BOUNDS.items():
        if flag not in given:
            cmd += [flag, value]
    return cmd + extra


def main_doctor(argv: list[str]) -> int:
    """``fedsim doctor``: the node-side checks, with ``flower-supernode``'s option names.

    With ``--start``, a node that passes them becomes ``flower-supernode`` (the process is
    replaced) with the same options, the options after ``--start``, and bounded retries.
    """
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise ConfigError(f"{message} ({DOCTOR_USAGE})")

    args = list(argv)
    extra: list[str] | None = None
    if "--start" in args:
        at = args.index("--start")
        args, extra = args[:at], args[at + 1 :]
    parser = _Parser(prog="fedsim doctor", add_help=False)
    parser.add_argument("--superlink", required=True)
    parser.add_argument("--root-certificates", required=True, type=Path)
    parser.add_argument("--auth-supernode-private-key", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=5.0)
    opts = parser.parse_args(args)
    if not opts.timeout > 0:
        raise ConfigError(f"invalid --timeout={opts.timeout}: allowed a number > 0")
    key = opts.auth_supernode_private_key
    try:
        line = doctor(opts.superlink, opts.root_certificates, key, timeout=opts.timeout)
    except PreflightError as e:
        print(f"fedsim doctor: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"fedsim doctor: {line}", flush=True)
    if extra is None:
        return 0
    cmd = supernode_command(opts.superlink, opts.root_certificates, key, extra)
    print(f"fedsim doctor: starting {' '.join(cmd)}", flush=True)
    os.execv(cmd[0], cmd) if os.path.isabs(cmd[0]) else os.execvp(cmd[0], cmd)
    return 0  # not reached
