//! Keys and tokens minted by PyJWT (`jwt-mint.py` beside this crate), an implementation
//! independent of the one under test. Missing python3 or PyJWT is a failure, never a skip.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

#[derive(Debug)]
pub struct Minted {
    pub jwks: HashMap<String, Value>,
    pub tokens: HashMap<String, String>,
}

impl Minted {
    pub fn token(&self, name: &str) -> &str {
        self.tokens.get(name).unwrap_or_else(|| panic!("no token `{name}` was minted"))
    }

    /// A JWKS document of the named public keys, each with the given `kid` (and any extra
    /// members, such as `alg` or `use`).
    pub fn jwks(&self, keys: &[(&str, Value)]) -> Value {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(name, extra)| {
                let mut jwk = self.jwks.get(*name).unwrap_or_else(|| panic!("no key `{name}`")).clone();
                for (k, v) in extra.as_object().expect("extra members are an object") {
                    jwk[k] = v.clone();
                }
                jwk
            })
            .collect();
        json!({ "keys": keys })
    }
}

pub fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs()
}

/// Run `jwt-mint.py` with `request` (see the script for its shape).
pub fn mint(request: &Value) -> Minted {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/jwt-mint.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `{python}` to mint test tokens ({e}); install python3 and `python3 -m pip install pyjwt cryptography`")
        });
    child
        .stdin
        .take()
        .expect("the test fixture is well formed")
        .write_all(request.to_string().as_bytes())
        .expect("the test fixture is well formed");
    let output = child.wait_with_output().expect("the test fixture is well formed");
    assert!(
        output.status.success(),
        "jwt-mint.py failed (needs `python3 -m pip install pyjwt cryptography`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: Value = serde_json::from_slice(&output.stdout).expect("mint.py prints JSON");
    let jwks = reply["jwks"]
        .as_object()
        .expect("the test fixture is well formed")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let tokens = reply["tokens"]
        .as_object()
        .expect("the test fixture is well formed")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("the test fixture is well formed").to_owned()))
        .collect();
    Minted { jwks, tokens }
}
