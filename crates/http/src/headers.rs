//! Header fields as Envoy's filters see them after the HTTP/1 codec has read them.

use std::borrow::Cow;

/// One header field: the name lower-cased, the value with surrounding whitespace and
/// obs-fold line breaks removed. The value stays bytes because HTTP allows obs-text
/// (0x80-0xFF) in values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

/// Header fields in arrival order. A repeated name stays as separate entries; use
/// [`joined`](Self::joined) to read it the way Envoy's header matchers do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<Header>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a field; the name is lower-cased.
    pub fn push(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        self.entries.push(Header { name: name.to_ascii_lowercase(), value: value.into() });
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// Every value of `name` (case-insensitive), in arrival order.
    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.entries
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value.as_slice())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All values of `name` joined with `,`: how Envoy's header matchers (and so RBAC's
    /// `request.headers[...]`) and its codec read a repeated header.
    pub fn joined(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        let mut values = self.get_all(name);
        let first = values.next()?;
        let Some(second) = values.next() else {
            return Some(Cow::Borrowed(first));
        };
        let mut joined = [first, b",", second].concat();
        for value in values {
            joined.push(b',');
            joined.extend_from_slice(value);
        }
        Some(Cow::Owned(joined))
    }

    /// Whether the comma-separated list in `name` holds `token`, compared case-insensitively
    /// after trimming, as Envoy's `caseFindToken` does for Connection and friends.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.joined(name)
            .is_some_and(|value| list_tokens(&value).any(|item| item.eq_ignore_ascii_case(token.as_bytes())))
    }

    /// Removes every field called `name`.
    pub fn remove(&mut self, name: &str) {
        self.entries.retain(|header| !header.name.eq_ignore_ascii_case(name));
    }

    /// Replaces every field called `name` by one holding `value`, where the first one was
    /// (or at the end): Envoy keeps such headers as a single entry.
    pub fn set(&mut self, name: &str, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self.entries.iter().position(|header| header.name.eq_ignore_ascii_case(name)) {
            Some(first) => {
                self.entries[first].value = value;
                let mut index = 0;
                self.entries.retain(|header| {
                    let keep = index <= first || !header.name.eq_ignore_ascii_case(name);
                    index += 1;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The whitespace Envoy's `StringUtil::trim` strips.
pub(crate) fn is_envoy_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | 0x0c | 0x0b | b'\n' | b'\r')
}

pub(crate) fn trim_envoy_whitespace(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&byte| !is_envoy_whitespace(byte)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&byte| !is_envoy_whitespace(byte)).map_or(start, |last| last + 1);
    &bytes[start..end]
}

/// Non-empty, trimmed items of a comma-separated header list.
pub(crate) fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&byte| byte == b',').map(trim_envoy_whitespace).filter(|token| !token.is_empty())
}
