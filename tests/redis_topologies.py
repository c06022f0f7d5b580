"""Redis set-ups for tests, as real processes on loopback: TLS, and Sentinel failover.

    tls_files(folder)            a CA, a server certificate for 127.0.0.1 and a client one
    TlsRedis(workdir, files)     redis-server speaking only TLS, wanting client certificates
    redis_server_speaks_tls()    whether this host's redis-server was built with TLS
    SentinelFarm(workdir)        a primary, a replica and three sentinels; fail_over()
"""

from __future__ import annotations

import datetime
import ipaddress
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode

import pytest
import redis
from conftest import free_port, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from recorder.farm.local import find_redis_server

HOST = "127.0.0.1"
MASTER_NAME = "farm"
START_TIMEOUT_S = 30.0
FAILOVER_TIMEOUT_S = 60.0


# --- certificates -------------------------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def tls_files(folder: Path, *, name: str = "farm") -> TlsFiles:
    """A fresh CA (its own key: a second call gives a CA the first one's server does not
    know) and a server and a client certificate it signed."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca_cert = (_builder(ca_name, ca_name, ca_key)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, key_cert_sign=True, crl_sign=True,
                   content_commitment=False, key_encipherment=False, data_encipherment=False,
                   key_agreement=False, encipher_only=False, decipher_only=False),
                   critical=True)
               .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(ca=folder / f"{name}-ca.pem",
                     server_cert=folder / f"{name}-server.pem",
                     server_key=folder / f"{name}-server.key",
                     client_cert=folder / f"{name}-client.pem",
                     client_key=folder / f"{name}-client.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _leaf(ca_cert, ca_key, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
          files.server_cert, files.server_key)
    _leaf(ca_cert, ca_key, "encoder-farm client", ExtendedKeyUsageOID.CLIENT_AUTH,
          files.client_cert, files.client_key)
    return files


def _builder(subject: x509.Name, issuer: x509.Name,
             key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)))


def _leaf(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, common_name: str,
          usage: x509.ObjectIdentifier, cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (_builder(subject, ca_cert.subject, key)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


# --- processes ----------------------------------------------------------------------------

class RedisProcess:
    """One redis-server (a sentinel too) on a loopback port, stopped by its owner."""

    def __init__(self, workdir: Path, args: list[str], *, port: int, client: redis.Redis,
                 name: str) -> None:
        self.workdir = workdir
        self.args = args
        self.port = port
        self.client = client  # answers once the server is up
        self.name = name
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        if not self.launch():
            assert self.process is not None
            pytest.fail(f"{self.name} exited ({self.process.returncode}):\n"
                        f"{self.log.read_text()}")
        return self

    def launch(self) -> bool:
        """Start the process: True once it answers, False when it exited first."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [find_redis_server(), *self.args], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.workdir, start_new_session=True)
        process = self.process
        try:
            wait_for(lambda: process.poll() is not None or self._answers(),
                     timeout_s=START_TIMEOUT_S, what=f"{self.name} to answer on port {self.port}")
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        return process.poll() is None

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.client.close()


class TlsRedis:
    """redis-server on a TLS port only (no plain TCP), wanting a client certificate."""

    def __init__(self, workdir: Path, files: TlsFiles, *, password: str) -> None:
        self.files = files
        self.password = password
        self.port = free_port()
        client = redis.Redis(host=HOST, port=self.port, password=password, ssl=True,
                             ssl_ca_certs=str(files.ca), ssl_certfile=str(files.client_cert),
                             ssl_keyfile=str(files.client_key), socket_timeout=2)
        self.server = RedisProcess(workdir, [
            "--port", "0", "--tls-port", str(self.port), "--bind", HOST,
            "--tls-cert-file", str(files.server_cert), "--tls-key-file", str(files.server_key),
            "--tls-ca-cert-file", str(files.ca), "--tls-auth-clients", "yes",
            "--requirepass", password, "--save", "", "--appendonly", "yes",
        ], port=self.port, client=client, name="redis-tls")

    def url(self, **params: str) -> str:
        """rediss:// with this server's CA and client certificate unless params say else."""
        query = {"ssl_cert_reqs": "required", "ssl_ca_certs": str(self.files.ca),
                 "ssl_certfile": str(self.files.client_cert),
                 "ssl_keyfile": str(self.files.client_key), **params}
        query = {name: value for name, value in query.items() if value}
        return f"rediss://:{self.password}@{HOST}:{self.port}/0?{urlencode(query, safe='/')}"

    def __enter__(self) -> TlsRedis:
        self.server.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.stop()


_speaks_tls: dict[str, bool] = {}


def redis_server_speaks_tls(workdir: Path) -> bool:
    """Whether this host's redis-server was built with TLS (Debian's is, a plain `make` of
    Redis is not): it answers a ping on a TLS-only port. Asked once per binary."""
    binary = find_redis_server()
    if binary not in _speaks_tls:
        probe = TlsRedis(workdir, tls_files(workdir / "certs"), password="tls-probe")
        try:
            _speaks_tls[binary] = probe.server.launch()
        finally:
            probe.server.stop()
    return _speaks_tls[binary]


class SentinelFarm:
    """A primary, its replica and three sentinels watching them, all on loopback.

    Redis wants password in both servers (the replica authenticates to the primary, and
    the other way round after a failover); the sentinels have a password of their own.
    """

    def __init__(self, workdir: Path, *, password: str, sentinel_password: str) -> None:
        self.workdir = workdir
        self.password = password
        self.sentinel_password = sentinel_password
        self.primary = self._server("primary")
        self.replica = self._server("replica", replica_of=self.primary.port)
        self.sentinels = [self._sentinel(index) for index in range(3)]
        self._held = False

    @property
    def url(self) -> str:
        hosts = ";".join(f"sentinel://{HOST}:{s.port}" for s in self.sentinels)
        auth = f":{self.password}@"
        return (hosts.replace("sentinel://", f"sentinel://{auth}", 1)
                + f"/0?master_name={MASTER_NAME}&sentinel_password={self.sentinel_password}")

    def _server(self, name: str, *, replica_of: int | None = None) -> RedisProcess:
        port = free_port()
        args = ["--port", str(port), "--bind", HOST, "--requirepass", self.password,
                "--masterauth", self.password, "--save", "", "--appendonly", "yes"]
        if replica_of is not None:
            args += ["--replicaof", HOST, str(replica_of)]
        client = redis.Redis(host=HOST, port=port, password=self.password, socket_timeout=2)
        return RedisProcess(self.workdir / name, args, port=port, client=client, name=name)

    def _sentinel(self, index: int) -> RedisProcess:
        port = free_port()
        folder = self.workdir / f"sentinel-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "sentinel.conf"  # a sentinel rewrites its own file: one each
        config.write_text("\n".join([
            f"port {port}", f"bind {HOST}", f"dir {folder}",
            f"requirepass {self.sentinel_password}",
            # ...and uses it to talk to the other sentinels.
            f"sentinel sentinel-pass {self.sentinel_password}",
            f"sentinel monitor {MASTER_NAME} {HOST} {self.primary.port} 2",
            f"sentinel auth-pass {MASTER_NAME} {self.password}",
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
            f"sentinel failover-timeout {MASTER_NAME} 3000", ""]))
        client = redis.Redis(host=HOST, port=port, password=self.sentinel_password,
                             socket_timeout=2)
        return RedisProcess(folder, [str(config), "--sentinel"], port=port, client=client,
                            name=f"sentinel-{index}")

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        # A sentinel learns of replicas from the primary's INFO: the replica first.
        wait_for(lambda: self.replica.client.info("replication").get("master_link_status")
                 == "up", timeout_s=START_TIMEOUT_S, what="the replica to sync with the primary")
        for sentinel in self.sentinels:
            sentinel.start()
        # A failover needs a quorum that knows the replica and each other.
        wait_for(self._sentinels_see_everyone, timeout_s=START_TIMEOUT_S,
                 what="every sentinel to see the replica and the two other sentinels")

    def _sentinels_see_everyone(self) -> bool:
        for sentinel in self.sentinels:
            replicas = sentinel.client.sentinel_slaves(MASTER_NAME)
            others = sentinel.client.sentinel_sentinels(MASTER_NAME)
            if len(replicas) != 1 or len(others) != 2:
                return False
        return True

    def hold_replication(self) -> None:
        """Cut the replica off its primary: what the primary is told from now on never
        reaches it, as when a primary dies before its asynchronous replication caught up.
        (A stopped replica would still read what its socket had received.)"""
        self.replica.client.config_set("masterauth", "not-the-password")
        self.replica.client.client_kill_filter(_type="master")
        wait_for(lambda: self.replica.client.info("replication").get("master_link_status")
                 == "down", timeout_s=START_TIMEOUT_S, what="the replica to lose its primary")
        self._held = True

    def fail_over(self) -> None:
        """Kill the primary (no goodbye) and wait until the sentinels promote the replica."""
        self.primary.stop(signal.SIGKILL)
        if self._held:  # its primary is gone: nothing more to catch up on
            self.replica.client.config_set("masterauth", self.password)
            self._held = False
        wait_for(lambda: all(self._names_replica(s) for s in self.sentinels),
                 timeout_s=FAILOVER_TIMEOUT_S, what="the sentinels to promote the replica")
        wait_for(lambda: self.replica.client.info("replication").get("role") == "master",
                 timeout_s=FAILOVER_TIMEOUT_S, what="the replica to take the master role")

    def _names_replica(self, sentinel: RedisProcess) -> bool:
        try:
            _, port = sentinel.client.sentinel_get_master_addr_by_name(MASTER_NAME)
        except (redis.RedisError, OSError, TypeError):
            return False
        return int(port) == self.replica.port

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.primary]:
            process.stop()

    def __enter__(self) -> SentinelFarm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
