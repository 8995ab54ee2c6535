#!/usr/bin/env python3
"""Mint JWKS keys and JWTs with PyJWT, an implementation independent of the one under test.

Reads a JSON request on stdin:
  {"keys":   {"<name>": {"type": "rsa", "bits": 2048} | {"type": "ec", "curve": "P-256"|"P-384"}
                        | {"type": "okp"}},
   "tokens": [{"name": "...", "key": "<key name>" | null, "alg": "RS256", "kid": "..." | null,
               "secret": "..." (HMAC only), "claims": {...}}]}
A claim whose value is null is left out of the token.
Writes {"jwks": {"<name>": <public JWK>}, "tokens": {"<name>": "<compact JWT>"}} on stdout.
Needs: python3 -m pip install pyjwt cryptography
"""
import json
import sys

import jwt
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def make_key(spec):
    kind = spec["type"]
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=spec.get("bits", 2048))
        return private, RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    if kind == "ec":
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[spec["curve"]]
        private = ec.generate_private_key(curve)
        return private, ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    if kind == "okp":
        private = ed25519.Ed25519PrivateKey.generate()
        return private, OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    raise SystemExit(f"unknown key type {kind!r}")


def main():
    request = json.load(sys.stdin)
    private_keys, jwks = {}, {}
    for name, spec in request.get("keys", {}).items():
        private_keys[name], jwks[name] = make_key(spec)
    tokens = {}
    for spec in request.get("tokens", []):
        headers = {"kid": spec["kid"]} if spec.get("kid") is not None else None
        alg = spec["alg"]
        if alg == "none":
            key = None
        elif alg.startswith("HS"):
            key = spec["secret"]
        else:
            key = private_keys[spec["key"]]
        claims = {k: v for k, v in spec["claims"].items() if v is not None}
        tokens[spec["name"]] = jwt.encode(claims, key, algorithm=alg, headers=headers)
    json.dump({"jwks": jwks, "tokens": tokens}, sys.stdout)


if __name__ == "__main__":
    main()
