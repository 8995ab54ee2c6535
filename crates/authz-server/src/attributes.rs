//! What a rule sees of one request, the same whether the request was asked about over HTTP or
//! gRPC, and its translation into CEL variables.
//!
//! Pseudo-headers (`:method`, `:path`, `:authority`) are left out of `request.headers`: Envoy's
//! gRPC check carries them and its HTTP check cannot, and a rule must mean the same over both.
//! They are `request.method`, `request.path` and `request.host`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cel::Value;
use cel::objects::{Key, Map};

/// One request to decide on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestAttributes {
    pub method: String,
    /// The path as the proxy saw it, query included (`/a/b?x=1`).
    pub path: String,
    pub host: String,
    /// Header names in lower case, in arrival order; a repeated header appears once per value.
    pub headers: Vec<(String, String)>,
    pub source: Peer,
    pub destination: Peer,
    /// The verified JWT payload, when the proxy passed one on (gRPC only).
    pub claims: BTreeMap<String, ClaimValue>,
}

/// One end of the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The SPIFFE ID (`spiffe://…`) proven by the peer's certificate, or empty.
    pub principal: String,
    /// The IP address, without the port.
    pub address: String,
    pub port: u32,
}

/// A JSON value of a token's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    List(Vec<ClaimValue>),
    Map(BTreeMap<String, ClaimValue>),
}

impl ClaimValue {
    fn to_cel(&self) -> Value {
        match self {
            ClaimValue::Null => Value::Null,
            ClaimValue::Bool(value) => Value::Bool(*value),
            ClaimValue::Number(number) => number_to_cel(*number),
            ClaimValue::String(text) => Value::String(Arc::new(text.clone())),
            ClaimValue::List(items) => Value::List(Arc::new(items.iter().map(ClaimValue::to_cel).collect())),
            ClaimValue::Map(fields) => map_value(fields.iter().map(|(k, v)| (k.clone(), v.to_cel()))),
        }
    }
}

/// JSON has one number type and protobuf's `Struct` stores it as a double, but claims such as
/// `exp`, `iat` or a spending limit are integers and rules compare them with integers
/// (`request.auth.claims.limit >= int(request.headers["x-amount"])`). A whole number that an
/// int holds exactly is an int; anything else stays a double.
fn number_to_cel(number: f64) -> Value {
    // 2^53: beyond it a double no longer tells neighbouring integers apart.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if number.fract() == 0.0 && number.abs() <= EXACT {
        #[allow(clippy::cast_possible_truncation)]
        Value::Int(number as i64)
    } else {
        Value::Float(number)
    }
}

fn map_value(entries: impl Iterator<Item = (String, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries.map(|(k, v)| (Key::String(Arc::new(k)), v)).collect();
    Value::Map(Map { map: Arc::new(map) })
}

fn string(text: &str) -> Value {
    Value::String(Arc::new(text.to_owned()))
}

/// Entries with the same key become one, their values joined with `,` (as HTTP folds a
/// repeated header), so a rule reads a plain string.
fn folded<'a>(pairs: impl Iterator<Item = (&'a str, String)>) -> Value {
    let mut folded: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in pairs {
        folded
            .entry(name)
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    map_value(folded.into_iter().map(|(k, v)| (k.to_owned(), Value::String(Arc::new(v)))))
}

/// The CEL variables `request`, `source` and `destination` (`now` is added per rule, in the
/// rule's time zone).
pub(crate) fn variables(request: &RequestAttributes) -> [(&'static str, Value); 3] {
    let (path, query) = request.path.split_once('?').unwrap_or((&request.path, ""));
    let headers = folded(
        request
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with(':'))
            .map(|(name, value)| (name.as_str(), value.clone())),
    );
    let query = folded(parse_query(query).into_iter());
    let claims = map_value(request.claims.iter().map(|(k, v)| (k.clone(), v.to_cel())));
    let auth = map_value([("claims".to_owned(), claims)].into_iter());
    let request_value = map_value(
        [
            ("method", string(&request.method)),
            ("path", string(path)),
            ("host", string(&request.host)),
            ("headers", headers),
            ("query", query),
            ("auth", auth),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let peer = |peer: &Peer, with_port: bool| {
        let mut fields =
            vec![("principal".to_owned(), string(&peer.principal)), ("address".to_owned(), string(&peer.address))];
        if with_port {
            fields.push(("port".to_owned(), Value::Int(i64::from(peer.port))));
        }
        map_value(fields.into_iter())
    };
    [
        ("request", request_value),
        ("source", peer(&request.source, false)),
        ("destination", peer(&request.destination, true)),
    ]
}

/// `a=1&b=x%20y&flag` → `[("a","1"), ("b","x y"), ("flag","")]`, decoded as an HTML form
/// (`+` is a space).
pub(crate) fn parse_query(query: &str) -> Vec<(&str, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name, percent_decode(value))
        })
        .collect()
}

/// Keys are matched as written: a rule names them literally, and decoding names would let
/// `a%62c` and `abc` stand for each other in one map.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => match (bytes.get(index + 1).copied().and_then(hex), bytes.get(index + 2).copied().and_then(hex)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    index += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_form_decoded_and_keys_kept_as_written() {
        assert_eq!(
            parse_query("a=1&b=x%20y+z&flag&&c=%zz&d=%4"),
            vec![
                ("a", "1".to_owned()),
                ("b", "x y z".to_owned()),
                ("flag", String::new()),
                ("c", "%zz".to_owned()),
                ("d", "%4".to_owned())
            ]
        );
    }

    #[test]
    fn whole_numbers_become_ints_and_fractions_stay_doubles() {
        assert_eq!(number_to_cel(1500.0), Value::Int(1500));
        assert_eq!(number_to_cel(-3.0), Value::Int(-3));
        assert_eq!(number_to_cel(2.5), Value::Float(2.5));
        assert_eq!(number_to_cel(1e300), Value::Float(1e300));
    }
}
