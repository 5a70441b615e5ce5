#!/usr/bin/env python3
"""An identity service stand-in for the auth tests (run with the peers' venv python, which has
`cryptography` through aiortc).

  auth_server.py serve --port-file F --log F [--jwks F] [--allow-user U] [--allow-token T]
                       [--delay S]
      HTTP on 127.0.0.1 (ephemeral port, written to --port-file):
      - POST /auth: each JSON body is appended to --log (one line each); answers 200 when the
        body's user is one of --allow-user or its token one of --allow-token, else 401.
        --delay S waits S seconds before answering (a slow auth server), only for the users
        named by --delay-user when given. A body containing
        "deny-now" in a file named by --deny-file is refused (a re-check that turns to no).
      - GET /jwks.json: the file --jwks, read on each request (the test rewrites it); each
        request is logged as {"jwks": true}.
  auth_server.py keys --dir D --kid K --alg RS256|ES256
      makes a private key (D/K.pem) and prints nothing; `jwks` prints the key set.
  auth_server.py jwks --dir D --kid K [--kid K2 ...]
      prints a JWKS with the public keys of D/<kid>.pem.
  auth_server.py mint --dir D --kid K --claims JSON
      prints a JWT signed with D/K.pem (alg from the key type), header kid K.
"""
import argparse
import base64
import http.server
import json
import os
import sys
import threading
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64u_int(n, length=None):
    length = length or (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


def load(dir_, kid):
    with open(os.path.join(dir_, kid + ".pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def cmd_keys(a):
    if a.alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with open(os.path.join(a.dir, a.kid + ".pem"), "wb") as f:
        f.write(pem)


def jwk(dir_, kid):
    key = load(dir_, kid)
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        n = pub.public_numbers()
        return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": b64u_int(n.n), "e": b64u_int(n.e)}
    n = pub.public_numbers()
    return {"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
            "x": b64u_int(n.x, 32), "y": b64u_int(n.y, 32)}


def cmd_jwks(a):
    print(json.dumps({"keys": [jwk(a.dir, k) for k in a.kid]}))


def cmd_mint(a):
    key = load(a.dir, a.kid[0])
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    header = {"alg": "RS256" if rsa_key else "ES256", "typ": "JWT", "kid": a.kid[0]}
    signing = (b64u(json.dumps(header).encode()) + "." +
               b64u(json.dumps(json.loads(a.claims)).encode())).encode()
    if rsa_key:
        sig = key.sign(signing, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = decode_dss_signature(key.sign(signing, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    print(signing.decode() + "." + b64u(sig))


def cmd_serve(a):
    lock = threading.Lock()

    def log(obj):
        with lock, open(a.log, "a") as f:
            f.write(json.dumps(obj) + "\n")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def answer(self, code, body=b"", ctype="text/plain"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/jwks.json") and a.jwks:
                log({"jwks": True})
                with open(a.jwks, "rb") as f:
                    self.answer(200, f.read(), "application/json")
            else:
                self.answer(404, b"not found")

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(min(n, 1 << 20))
            try:
                body = json.loads(raw)
            except ValueError:
                self.answer(400, b"not JSON")
                return
            log(body)
            if a.delay and (not a.delay_user or body.get("user") in a.delay_user):
                time.sleep(a.delay)
            denied = False
            if a.deny_file and os.path.exists(a.deny_file):
                with open(a.deny_file) as f:
                    denied = f.read().strip() in (body.get("user"), body.get("token"))
            ok = not denied and (body.get("user") in a.allow_user or
                                 (body.get("token") or None) in a.allow_token)
            self.answer(200 if ok else 401, b"" if ok else b"not allowed")

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(a.port_file + ".tmp", a.port_file)
    deadline = time.time() + a.max_seconds
    srv.timeout = 0.5
    while time.time() < deadline:
        srv.handle_request()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port-file", required=True)
    s.add_argument("--log", required=True)
    s.add_argument("--jwks")
    s.add_argument("--allow-user", action="append", default=[])
    s.add_argument("--allow-token", action="append", default=[])
    s.add_argument("--deny-file")
    s.add_argument("--delay", type=float, default=0)
    s.add_argument("--delay-user", action="append", default=[])
    s.add_argument("--max-seconds", type=float, default=120)
    for name in ("keys", "jwks", "mint"):
        c = sub.add_parser(name)
        c.add_argument("--dir", required=True)
        c.add_argument("--kid", action="append", required=True)
        if name == "keys":
            c.add_argument("--alg", default="RS256")
        if name == "mint":
            c.add_argument("--claims", required=True)
    a = p.parse_args()
    if a.cmd == "keys":
        a.kid = a.kid[0]
        cmd_keys(a)
    elif a.cmd == "jwks":
        cmd_jwks(a)
    elif a.cmd == "mint":
        cmd_mint(a)
    else:
        cmd_serve(a)


if __name__ == "__main__":
    sys.exit(main())
