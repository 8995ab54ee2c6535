"""Keys and tokens for the end-to-end security test, made with PyJWT (an implementation
independent of zmesh's): `keys DIR` writes an RSA and an EC key pair and the JWKS that publishes
them; `token DIR KEY AUD EXP_SECONDS [KID]` prints a token signed with KEY (rsa, ec or stranger —
a key the JWKS does not hold), for audience AUD, expiring EXP_SECONDS from now (negative: already
expired)."""
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://auth.example.test"


def keys(directory):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": []}
    for name, key, alg in (("rsa", rsa_key, "RS256"), ("ec", ec_key, "ES256"), ("stranger", stranger, "RS256")):
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with open(f"{directory}/{name}.pem", "wb") as out:
            out.write(pem)
        if name == "stranger":
            continue
        algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
        public = json.loads(algorithm.to_jwk(key.public_key()))
        public.update({"kid": name, "alg": alg, "use": "sig"})
        jwks["keys"].append(public)
    with open(f"{directory}/jwks.json", "w") as out:
        json.dump(jwks, out)


def token(directory, key, audience, expires_in, kid=None):
    with open(f"{directory}/{key}.pem", "rb") as pem:
        private = pem.read()
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": audience,
        "iat": now,
        "exp": now + int(expires_in),
        "groups": ["admins"],
        "scope": "read write",
    }
    alg = "ES256" if key == "ec" else "RS256"
    print(jwt.encode(claims, private, algorithm=alg, headers={"kid": kid or key}))


if __name__ == "__main__":
    if sys.argv[1] == "keys":
        keys(sys.argv[2])
    else:
        token(*sys.argv[2:])
