//! The request-target: the syntax gate Balsa applies to every target, and the URL parsing
//! Envoy's codec applies to absolute-form and CONNECT targets (http-parser's
//! `http_parser_parse_url`, non-strict build).

/// Envoy's `isUrlValid` (balsa_parser.cc), written to match http-parser: a path starting
/// with `/` or `*`, or `scheme://host...` (just `host...` for CONNECT), with path and query
/// bytes in `!`..`~`.
pub(super) fn has_valid_syntax(target: &[u8], is_connect: bool) -> bool {
    let is_path_byte = |byte: &u8| matches!(byte, b'\t' | 0x0c | b'!'..=b'~');
    let Some((&first, after_first)) = target.split_first() else {
        return false;
    };
    if first == b'/' || first == b'*' {
        return after_first.iter().all(is_path_byte);
    }
    let mut rest = target;
    if !is_connect {
        if !first.is_ascii_alphabetic() {
            return false;
        }
        let scheme_len =
            1 + after_first.iter().take_while(|byte| byte.is_ascii_alphanumeric() || b"+-.".contains(byte)).count();
        let Some(after_scheme) = rest[scheme_len..].strip_prefix(b"://") else {
            return false;
        };
        rest = after_scheme;
    }
    let host_len = rest.iter().position(|&byte| byte == b'/' || byte == b'?').unwrap_or(rest.len());
    let (host, path_and_query) = rest.split_at(host_len);
    // http-parser allows any number of '@' in the host, just never two in a row.
    host.iter().all(|&byte| is_server_byte(byte))
        && !host.windows(2).any(|pair| pair == b"@@")
        && path_and_query.iter().all(is_path_byte)
}

/// Bytes http-parser accepts between `//` and the path: userinfo bytes, brackets and `@`.
fn is_server_byte(byte: u8) -> bool {
    is_userinfo_byte(byte) || matches!(byte, b'[' | b']' | b'@')
}

fn is_userinfo_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-_.!~*'()%;:&=+$,".contains(&byte)
}

/// An absolute-form target as Envoy's codec splits it.
pub(super) struct AbsoluteUrl<'a> {
    pub(super) scheme: &'a str,
    /// Host and port as sent, without userinfo: it replaces the Host header.
    pub(super) authority: &'a str,
    /// Everything after the authority (`/` when empty), query and fragment included.
    pub(super) path_and_query: &'a str,
}

/// Envoy's `Utility::Url::initialize` for a non-CONNECT target.
pub(super) fn parse_absolute(url: &str) -> Option<AbsoluteUrl<'_>> {
    // http-parser's scheme is letters only, stricter than the syntax gate.
    let scheme_len = url.bytes().take_while(u8::is_ascii_alphabetic).count();
    if scheme_len == 0 {
        return None;
    }
    let (scheme, rest) = url.split_at(scheme_len);
    let rest = rest.strip_prefix("://")?;
    let server_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let (server, path_and_query) = rest.split_at(server_len);
    let server = parse_server(server)?;
    Some(AbsoluteUrl {
        scheme,
        authority: server.authority,
        path_and_query: if path_and_query.is_empty() { "/" } else { path_and_query },
    })
}

/// Envoy's `Utility::Url::initialize` for a CONNECT target: exactly `host:port`.
pub(super) fn parse_connect_authority(target: &str) -> Option<&str> {
    if target.contains(['/', '?', '@']) {
        return None;
    }
    let server = parse_server(target)?;
    server.has_port.then_some(server.authority)
}

struct Server<'a> {
    authority: &'a str,
    has_port: bool,
}

/// http-parser's `http_parse_host`: optional `userinfo@`, then a host name (letters,
/// digits, `.`, `-`, `_`) or a bracketed IPv6 address, then an optional `:port` of at most
/// 65535.
fn parse_server(server: &str) -> Option<Server<'_>> {
    if server.is_empty() || !server.bytes().all(is_server_byte) || server.contains("@@") {
        return None;
    }
    let authority = match server.split_once('@') {
        Some((userinfo, authority)) => {
            if !userinfo.bytes().all(is_userinfo_byte) {
                return None;
            }
            authority
        }
        None => server,
    };
    let after_host = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (address, after) = bracketed.split_once(']')?;
            // Envoy re-checks bracketed hosts as IP addresses.
            address.parse::<std::net::Ipv6Addr>().ok()?;
            after
        }
        None => {
            let host_len =
                authority.bytes().take_while(|byte| byte.is_ascii_alphanumeric() || b".-_".contains(byte)).count();
            if host_len == 0 {
                return None;
            }
            &authority[host_len..]
        }
    };
    let has_port = match after_host.strip_prefix(':') {
        None if after_host.is_empty() => false,
        None => return None,
        Some(port) => {
            let is_valid = !port.is_empty()
                && port.bytes().all(|byte| byte.is_ascii_digit())
                && port.parse::<u64>().is_ok_and(|number| number <= 65535);
            if !is_valid {
                return None;
            }
            true
        }
    };
    Some(Server { authority, has_port })
}
