//! Request methods: the fixed, case-sensitive list Envoy's HTTP/1 codec accepts.

use std::fmt;

/// A request method Envoy accepts when custom methods are off (the default, and Istio's).
///
/// Envoy compares the token byte for byte against this list, so `get` and `PoSt` are
/// refused, and so is `M-SEARCH`: the list spells it `MSEARCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Acl,
    Bind,
    Checkout,
    Connect,
    Copy,
    Delete,
    Get,
    Head,
    Link,
    Lock,
    Merge,
    MkActivity,
    MkCalendar,
    MkCol,
    Move,
    MSearch,
    Notify,
    Options,
    Patch,
    Post,
    PropFind,
    PropPatch,
    Purge,
    Put,
    Rebind,
    Report,
    Search,
    Source,
    Subscribe,
    Trace,
    Unbind,
    Unlink,
    Unlock,
    Unsubscribe,
}

impl Method {
    /// Every accepted method, in the order of Envoy's list.
    pub const ALL: [Method; 34] = [
        Self::Acl,
        Self::Bind,
        Self::Checkout,
        Self::Connect,
        Self::Copy,
        Self::Delete,
        Self::Get,
        Self::Head,
        Self::Link,
        Self::Lock,
        Self::Merge,
        Self::MkActivity,
        Self::MkCalendar,
        Self::MkCol,
        Self::Move,
        Self::MSearch,
        Self::Notify,
        Self::Options,
        Self::Patch,
        Self::Post,
        Self::PropFind,
        Self::PropPatch,
        Self::Purge,
        Self::Put,
        Self::Rebind,
        Self::Report,
        Self::Search,
        Self::Source,
        Self::Subscribe,
        Self::Trace,
        Self::Unbind,
        Self::Unlink,
        Self::Unlock,
        Self::Unsubscribe,
    ];

    /// The token as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acl => "ACL",
            Self::Bind => "BIND",
            Self::Checkout => "CHECKOUT",
            Self::Connect => "CONNECT",
            Self::Copy => "COPY",
            Self::Delete => "DELETE",
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Link => "LINK",
            Self::Lock => "LOCK",
            Self::Merge => "MERGE",
            Self::MkActivity => "MKACTIVITY",
            Self::MkCalendar => "MKCALENDAR",
            Self::MkCol => "MKCOL",
            Self::Move => "MOVE",
            Self::MSearch => "MSEARCH",
            Self::Notify => "NOTIFY",
            Self::Options => "OPTIONS",
            Self::Patch => "PATCH",
            Self::Post => "POST",
            Self::PropFind => "PROPFIND",
            Self::PropPatch => "PROPPATCH",
            Self::Purge => "PURGE",
            Self::Put => "PUT",
            Self::Rebind => "REBIND",
            Self::Report => "REPORT",
            Self::Search => "SEARCH",
            Self::Source => "SOURCE",
            Self::Subscribe => "SUBSCRIBE",
            Self::Trace => "TRACE",
            Self::Unbind => "UNBIND",
            Self::Unlink => "UNLINK",
            Self::Unlock => "UNLOCK",
            Self::Unsubscribe => "UNSUBSCRIBE",
        }
    }

    /// The method whose token is exactly `token` (case-sensitive).
    pub fn from_token(token: &[u8]) -> Option<Method> {
        Self::ALL.into_iter().find(|method| method.as_str().as_bytes() == token)
    }

    /// Envoy refuses a request as soon as its first byte cannot begin a known method,
    /// without waiting for the rest of the line.
    pub(crate) fn can_start_with(byte: u8) -> bool {
        Self::ALL.iter().any(|method| method.as_str().as_bytes().first() == Some(&byte))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}
