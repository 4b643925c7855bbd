"""A minimal PostgreSQL frontend (protocol 3.0) for the idle-session memory test: startup,
SCRAM-SHA-256 (no channel binding, no TLS), one simple Query, then it just holds the socket.

Standard library only. Not a general client: it understands exactly the messages a login and a
`SELECT 1` produce, and raises on anything else (ErrorResponse included).
"""

import base64
import hashlib
import hmac
import os
import socket
import struct

PROTOCOL_3_0 = 196608

# (password, salt, iterations) -> SaltedPassword. A proxy hands every login of one grant the same
# salt, so 1,000 logins cost one PBKDF2 on our side (the server's cost is what is being measured).
_SALTED = {}


class PgError(Exception):
    pass


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise PgError("server closed the connection")
        buf += chunk
    return bytes(buf)


def _read_message(sock):
    header = _recv_exact(sock, 5)
    tag = header[:1]
    (length,) = struct.unpack("!i", header[1:])
    return tag, _recv_exact(sock, length - 4)


def _send(sock, tag, body):
    sock.sendall(tag + struct.pack("!i", len(body) + 4) + body)


def _error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode("utf-8", "replace")
    return "%s %s: %s" % (fields.get(b"S", "?"), fields.get(b"C", "?"), fields.get(b"M", "?"))


def _scram(sock, mechanisms, password):
    if "SCRAM-SHA-256" not in mechanisms:
        raise PgError("server offers %r, not SCRAM-SHA-256" % (mechanisms,))
    nonce = base64.b64encode(os.urandom(18)).decode()
    client_first_bare = "n=,r=" + nonce
    first = ("n,," + client_first_bare).encode()
    _send(sock, b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first)

    tag, body = _read_message(sock)
    if tag == b"E":
        raise PgError(_error_text(body))
    (code,) = struct.unpack("!i", body[:4])
    if tag != b"R" or code != 11:
        raise PgError("expected SASLContinue, got %r/%d" % (tag, code))
    server_first = body[4:].decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise PgError("server nonce does not extend ours")
    salt = base64.b64decode(attrs["s"])
    iterations = int(attrs["i"])
    key = (password, salt, iterations)
    salted = _SALTED.get(key)
    if salted is None:
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        _SALTED[key] = salted
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = "c=biws,r=" + attrs["r"]
    auth_message = ",".join([client_first_bare, server_first, without_proof]).encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    final = without_proof + ",p=" + base64.b64encode(proof).decode()
    _send(sock, b"p", final.encode())

    tag, body = _read_message(sock)
    if tag == b"E":
        raise PgError(_error_text(body))
    (code,) = struct.unpack("!i", body[:4])
    if tag != b"R" or code != 12:
        raise PgError("expected SASLFinal, got %r/%d" % (tag, code))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    expected = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    verifier = dict(item.split("=", 1) for item in body[4:].decode().split(","))["v"]
    if not hmac.compare_digest(base64.b64decode(verifier), expected):
        raise PgError("server signature does not verify")


def _until_ready(sock):
    while True:
        tag, body = _read_message(sock)
        if tag == b"E":
            raise PgError(_error_text(body))
        if tag == b"Z":
            return


def connect(host, port, user, database, password, query="SELECT 1", timeout=30.0):
    """Log in, run `query` (simple protocol) and return the open socket, idle in ReadyForQuery."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
        sock.sendall(struct.pack("!ii", len(params) + 8, PROTOCOL_3_0) + params)
        while True:
            tag, body = _read_message(sock)
            if tag == b"E":
                raise PgError(_error_text(body))
            if tag != b"R":
                raise PgError("unexpected %r during authentication" % tag)
            (code,) = struct.unpack("!i", body[:4])
            if code == 0:
                break
            if code == 10:
                mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
                _scram(sock, mechanisms, password)
            elif code == 5:
                # MD5 (PgCat's client authentication): md5(md5(password + user) + salt).
                inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                digest = b"md5" + hashlib.md5(inner + body[4:8]).hexdigest().encode()
                _send(sock, b"p", digest + b"\0")
            else:
                raise PgError("unsupported authentication request %d" % code)
        _until_ready(sock)
        if query:
            _send(sock, b"Q", query.encode() + b"\0")
            _until_ready(sock)
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def close(sock):
    """Terminate politely, then close."""
    try:
        _send(sock, b"X", b"")
    except OSError:
        pass
    sock.close()
