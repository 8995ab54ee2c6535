//! Istio's string matching: `abc` exact, `abc*` prefix, `*abc` suffix, `*` presence.
//!
//! Only a leading or a trailing `*` is special, and a leading one wins: `*abc*` is a suffix
//! match on the literal `abc*` (so `'*sqlmap*'` is not a "contains" match). A `*` in the middle
//! is literal.

/// One compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value.
    Present,
}

impl StringMatch {
    pub fn parse(pattern: &str) -> StringMatch {
        if pattern == "*" {
            StringMatch::Present
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_owned())
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_owned())
        } else {
            StringMatch::Exact(pattern.to_owned())
        }
    }

    /// Case-sensitive match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Present => !value.is_empty(),
        }
    }

    /// ASCII case-insensitive match (hosts). Patterns are stored lower-cased by the caller.
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        let v = value.as_bytes();
        match self {
            StringMatch::Exact(s) => value.eq_ignore_ascii_case(s),
            StringMatch::Prefix(s) => v.len() >= s.len() && v[..s.len()].eq_ignore_ascii_case(s.as_bytes()),
            StringMatch::Suffix(s) => v.len() >= s.len() && v[v.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes()),
            StringMatch::Present => !value.is_empty(),
        }
    }

    /// The same match with `prefix` put in front of the pattern (`spiffe://` for principals).
    /// Presence and suffix matches are unaffected.
    pub fn with_prefix(self, prefix: &str) -> StringMatch {
        match self {
            StringMatch::Exact(s) => StringMatch::Exact(format!("{prefix}{s}")),
            StringMatch::Prefix(s) => StringMatch::Prefix(format!("{prefix}{s}")),
            other => other,
        }
    }
}

/// A `paths` entry: a string match, or a `{*}`/`{**}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    String(StringMatch),
    Template(Vec<TemplatePart>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    OneSegment,
    /// `{**}`: anything, across segments, possibly empty.
    AnyRest,
}

impl PathMatch {
    pub fn parse(pattern: &str) -> PathMatch {
        if !zmesh_config::authz::is_path_template(pattern) {
            return PathMatch::String(StringMatch::parse(pattern));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = pattern;
        while !rest.is_empty() {
            let operator = if rest.starts_with("{**}") {
                Some((TemplatePart::AnyRest, 4))
            } else if rest.starts_with("{*}") {
                Some((TemplatePart::OneSegment, 3))
            } else {
                None
            };
            match operator {
                Some((part, len)) => {
                    if !literal.is_empty() {
                        parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    rest = &rest[len..];
                }
                None => {
                    let ch = rest.chars().next().unwrap_or_default();
                    literal.push(ch);
                    rest = &rest[ch.len_utf8()..];
                }
            }
        }
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        PathMatch::Template(parts)
    }

    /// Match a path (without its query string).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::String(m) => m.matches(path),
            PathMatch::Template(parts) => template_matches(parts, path),
        }
    }
}

fn template_matches(parts: &[TemplatePart], path: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return path.is_empty();
    };
    match first {
        TemplatePart::Literal(literal) => {
            path.strip_prefix(literal.as_str()).is_some_and(|tail| template_matches(rest, tail))
        }
        TemplatePart::OneSegment => {
            let end = path.find('/').unwrap_or(path.len());
            end > 0 && template_matches(rest, &path[end..])
        }
        // At most one `{**}` per template (validation), so trying each split point stays
        // linear in practice.
        TemplatePart::AnyRest => {
            path.char_indices().map(|(i, _)| i).chain([path.len()]).any(|i| template_matches(rest, &path[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_star_wins_and_the_trailing_one_is_literal() {
        let m = StringMatch::parse("*sqlmap*");
        assert_eq!(m, StringMatch::Suffix("sqlmap*".into()));
        assert!(!m.matches("sqlmap/1.7"));
        assert!(m.matches("evil-sqlmap*"));
    }

    #[test]
    fn a_middle_star_is_literal() {
        let m = StringMatch::parse("/api/*/users");
        assert!(m.matches("/api/*/users"));
        assert!(!m.matches("/api/v1/users"));
    }

    #[test]
    fn hosts_match_without_regard_to_case() {
        assert!(StringMatch::parse("*.example.com").matches_ignore_case("API.Example.COM"));
        assert!(StringMatch::parse("httpbin.foo").matches_ignore_case("HTTPBIN.foo"));
        assert!(!StringMatch::parse("httpbin.foo").matches_ignore_case("httpbin.foo:8000"));
    }

    #[test]
    fn path_templates_match_segments_as_istio_documents() {
        let admin = PathMatch::parse("/allow/admin/{**}");
        assert!(admin.matches("/allow/admin/"));
        assert!(admin.matches("/allow/admin/a/b.txt"));
        assert!(!admin.matches("/allow/admin"));
        let foo = PathMatch::parse("/foo/{*}/bar/{**}");
        assert!(foo.matches("/foo/buzz/bar/bat"));
        assert!(!foo.matches("/foo//bar/x"));
        assert!(!foo.matches("/foo/bar/x"));
        let store = PathMatch::parse("/store/{**}/cart");
        assert!(store.matches("/store//cart"));
        assert!(store.matches("/store/a/b/cart"));
        assert!(!store.matches("/store/cart"));
    }
}
