//! Where a rule looks for tokens, as Envoy's jwt_authn extractor does.
//!
//! A rule without `fromHeaders`, `fromParams` and `fromCookies` reads `Authorization: Bearer
//! <token>` and the `access_token` query parameter. A header location with a prefix takes the
//! token that follows the first occurrence of the prefix (case-sensitive) and ends at the first
//! character a JWT cannot hold; a header without the prefix holds no token for that location
//! (so it counts as missing, not invalid).

use std::borrow::Cow;

use zmesh_config::authn::JwtRule;
use zmesh_policy::authn::TokenLocation;

/// The parts of a request tokens can come from.
#[derive(Debug, Clone, Copy)]
pub struct RequestTokens<'a> {
    /// The request method: CORS preflights skip JWT checks, as Istio configures Envoy.
    pub method: &'a str,
    /// Every request header (names in any case; repeated names as separate entries).
    pub headers: &'a [(&'a str, &'a str)],
    /// The raw query string (after `?`, without it), if any.
    pub query: Option<&'a str>,
}

impl<'a> RequestTokens<'a> {
    pub fn header<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// An OPTIONS request with `Origin` and `Access-Control-Request-Method`.
    pub fn is_cors_preflight(&self) -> bool {
        self.method == "OPTIONS"
            && self.header("origin").any(|v| !v.is_empty())
            && self.header("access-control-request-method").any(|v| !v.is_empty())
    }
}

/// A token found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken<'a> {
    pub token: Cow<'a, str>,
    pub location: TokenLocation,
    /// The header it came from (lower case), which is removed upstream once it is verified
    /// unless the rule forwards the original token.
    pub header: Option<String>,
}

const DEFAULT_HEADER: &str = "authorization";
const DEFAULT_PREFIX: &str = "Bearer ";
const DEFAULT_PARAM: &str = "access_token";

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '/')
}

fn from_header<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(value.trim()).filter(|v| !v.is_empty());
    }
    let start = value.find(prefix)? + prefix.len();
    let rest = &value[start..];
    let end = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|t| !t.is_empty())
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

/// Decode `%XX` escapes; a query value that does not decode to UTF-8 is kept as sent.
fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map(Cow::Owned).unwrap_or(Cow::Borrowed(text))
}

fn query_params<'a>(query: Option<&'a str>, name: &str) -> Vec<Cow<'a, str>> {
    let query = query.unwrap_or_default();
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name && !value.is_empty()).then(|| percent_decode(value))
        })
        .collect()
}

fn cookies<'a>(request: &RequestTokens<'a>, name: &str) -> Vec<&'a str> {
    request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            let value = value.trim().trim_matches('"');
            (key.trim() == name && !value.is_empty()).then_some(value)
        })
        .collect()
}

/// Every token the rule would read from the request, in Envoy's order (headers, then query
/// parameters, then cookies).
pub fn tokens_for_rule<'a>(rule: &JwtRule, request: &RequestTokens<'a>) -> Vec<FoundToken<'a>> {
    let mut found = Vec::new();
    let header = |name: &str, prefix: &str, found: &mut Vec<FoundToken<'a>>| {
        for value in request.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v) {
            if let Some(token) = from_header(value, prefix) {
                let location = if name.eq_ignore_ascii_case(DEFAULT_HEADER) && prefix == DEFAULT_PREFIX {
                    TokenLocation::AuthorizationBearer
                } else {
                    TokenLocation::Header(name.to_ascii_lowercase())
                };
                found.push(FoundToken {
                    token: Cow::Borrowed(token),
                    location,
                    header: Some(name.to_ascii_lowercase()),
                });
            }
        }
    };
    if rule.uses_default_locations() {
        header(DEFAULT_HEADER, DEFAULT_PREFIX, &mut found);
        for token in query_params(request.query, DEFAULT_PARAM) {
            found.push(FoundToken { token, location: TokenLocation::Param(DEFAULT_PARAM.to_owned()), header: None });
        }
        return found;
    }
    for location in &rule.from_headers {
        header(&location.name, &location.prefix, &mut found);
    }
    for param in &rule.from_params {
        for token in query_params(request.query, param) {
            found.push(FoundToken { token, location: TokenLocation::Param(param.clone()), header: None });
        }
    }
    for name in &rule.from_cookies {
        for token in cookies(request, name) {
            found.push(FoundToken {
                token: Cow::Borrowed(token),
                location: TokenLocation::Cookie(name.clone()),
                header: None,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use zmesh_config::authn::JwtHeader;

    fn request<'a>(headers: &'a [(&'a str, &'a str)], query: Option<&'a str>) -> RequestTokens<'a> {
        RequestTokens { method: "GET", headers, query }
    }

    fn tokens(rule: &JwtRule, request: &RequestTokens<'_>) -> Vec<(String, TokenLocation)> {
        tokens_for_rule(rule, request).into_iter().map(|f| (f.token.into_owned(), f.location)).collect()
    }

    #[test]
    fn default_locations_are_the_bearer_header_and_the_access_token_param() {
        let rule = crate::tests::rule("i");
        let headers = [("AUTHORIZATION", "Bearer aaa.bbb.ccc"), ("x-other", "Bearer zzz")];
        assert_eq!(
            tokens(&rule, &request(&headers, Some("a=1&access_token=ddd.eee.fff"))),
            [
                ("aaa.bbb.ccc".to_owned(), TokenLocation::AuthorizationBearer),
                ("ddd.eee.fff".to_owned(), TokenLocation::Param("access_token".to_owned())),
            ]
        );
    }

    #[test]
    fn a_header_without_the_prefix_holds_no_token() {
        let rule = crate::tests::rule("i");
        assert!(tokens(&rule, &request(&[("authorization", "Basic dXNlcjpwdw==")], None)).is_empty());
        assert!(tokens(&rule, &request(&[("authorization", "bearer aaa.bbb.ccc")], None)).is_empty());
    }

    #[test]
    fn the_token_ends_at_the_first_character_a_jwt_cannot_hold() {
        let rule = crate::tests::rule("i");
        let found = tokens(&rule, &request(&[("authorization", "Bearer aaa.bbb.ccc, more")], None));
        assert_eq!(found[0].0, "aaa.bbb.ccc");
    }

    #[test]
    fn configured_locations_replace_the_defaults() {
        let mut rule = crate::tests::rule("i");
        rule.from_headers = vec![JwtHeader { name: "x-jwt".to_owned(), prefix: String::new() }];
        rule.from_params = vec!["token".to_owned()];
        rule.from_cookies = vec!["session".to_owned()];
        let headers =
            [("Authorization", "Bearer ignored"), ("X-JWT", " h.h.h "), ("cookie", "a=b; session=c.c.c; z=1")];
        assert_eq!(
            tokens(&rule, &request(&headers, Some("access_token=ignored&token=p%2Ep.p"))),
            [
                ("h.h.h".to_owned(), TokenLocation::Header("x-jwt".to_owned())),
                ("p.p.p".to_owned(), TokenLocation::Param("token".to_owned())),
                ("c.c.c".to_owned(), TokenLocation::Cookie("session".to_owned())),
            ]
        );
    }

    #[test]
    fn a_cors_preflight_is_recognised_only_with_both_headers() {
        let headers = [("origin", "https://a"), ("access-control-request-method", "POST")];
        assert!(RequestTokens { method: "OPTIONS", headers: &headers, query: None }.is_cors_preflight());
        assert!(!RequestTokens { method: "OPTIONS", headers: &headers[..1], query: None }.is_cors_preflight());
        assert!(!RequestTokens { method: "GET", headers: &headers, query: None }.is_cors_preflight());
    }

    #[test]
    fn percent_escapes_decode_and_broken_ones_stay() {
        assert_eq!(percent_decode("a%2Eb"), "a.b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
