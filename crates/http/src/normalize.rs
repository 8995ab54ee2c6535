//! Request-path normalization as Envoy's connection manager applies it before routing and
//! RBAC (`ConnectionManagerUtility::maybeNormalizePath`), for each of Istio's
//! `meshConfig.pathNormalization` modes.
//!
//! `normalize_path` is Envoy's port of Chromium's URL path canonicalizer, so it is
//! reproduced here decision for decision: which escapes decode, which bytes get escaped,
//! how dot segments and backslashes resolve. Slashes are merged afterwards, and encoded
//! slashes decoded before, when the mode asks for it.

#[cfg(test)]
mod tests;

use std::borrow::Cow;

use crate::error::RequestError;

/// Istio's `meshConfig.pathNormalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathNormalization {
    /// Envoy `normalize_path: false`. Only the fragment check applies.
    None,
    /// RFC 3986 dot-segment removal and decoding of escaped unreserved characters;
    /// `%2F` and `%5C` stay as they are. Istio's default.
    #[default]
    Base,
    /// `Base`, then runs of `/` merged into one.
    MergeSlashes,
    /// `%2F` and `%5C` decoded to `/` and `\` first, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

/// Normalizes a request path (`/path` plus optional `?query`) the way Envoy does before
/// routing and authorization. The query is never changed.
///
/// Fails with [`RequestError::FragmentInPath`] for any `#` (in every mode, as Envoy does),
/// [`RequestError::NulInPath`] for a raw or escaped NUL, and
/// [`RequestError::PathNotAbsolute`] when the path does not start with `/`.
pub fn normalize_path(path_and_query: &str, mode: PathNormalization) -> Result<Cow<'_, str>, RequestError> {
    // Checked by the connection manager before it normalizes, so in this order.
    if !path_and_query.starts_with('/') {
        return Err(RequestError::PathNotAbsolute);
    }
    if path_and_query.contains('#') {
        return Err(RequestError::FragmentInPath);
    }
    if mode == PathNormalization::None {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let (path, query) = match path_and_query.find('?') {
        Some(query_start) => path_and_query.split_at(query_start),
        None => (path_and_query, ""),
    };
    let path = if mode == PathNormalization::DecodeAndMergeSlashes {
        decode_escaped_slashes(path)
    } else {
        Cow::Borrowed(path)
    };
    let path = strip_dot_segment_parameters(&path);
    let mut path = canonicalize(&path)?;
    if mode != PathNormalization::Base {
        path = merge_slashes(path);
    }
    if path.len() + query.len() == path_and_query.len() && path_and_query.starts_with(&path) {
        return Ok(Cow::Borrowed(path_and_query));
    }
    path.push_str(query);
    Ok(Cow::Owned(path))
}

/// A segment of literal `.` or `..` followed by path parameters (`..;jsessionid=1`) is a dot
/// segment for Envoy 1.40: the parameters go and the dots resolve, so `/x/..;p/admin` is
/// `/admin` — a DENY rule on `/admin*` must not be bypassed with it. Only literal dots count
/// (`%2e%2e;p` stays a name, as Envoy keeps it), and every other segment keeps its parameters.
fn strip_dot_segment_parameters(path: &str) -> Cow<'_, str> {
    let is_dotted = |segment: &str| segment.split_once(';').is_some_and(|(dots, _)| dots == "." || dots == "..");
    if !path.split('/').any(is_dotted) {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| if is_dotted(segment) { segment.split(';').next().unwrap_or_default() } else { segment })
        .collect();
    Cow::Owned(segments.join("/"))
}

/// Envoy's `PathUtil::unescapeSlashes`: each spelling replaced in turn.
fn decode_escaped_slashes(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    Cow::Owned(path.replace("%2F", "/").replace("%2f", "/").replace("%5C", "\\").replace("%5c", "\\"))
}

/// Envoy's `PathUtil::mergeSlashes`. It rebuilds the path from its non-empty segments and
/// re-adds one leading and one trailing slash, so a path of only slashes becomes `//`.
fn merge_slashes(path: String) -> String {
    if !path.contains("//") {
        return path;
    }
    let prefix = if path.starts_with('/') { "/" } else { "" };
    let suffix = if path.ends_with('/') { "/" } else { "" };
    let segments: Vec<&str> = path.split('/').filter(|segment| !segment.is_empty()).collect();
    format!("{prefix}{}{suffix}", segments.join("/"))
}

/// What Chromium's path canonicalizer does with a byte (`kPathCharLookup`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ByteClass {
    /// Copied as is, and kept escaped when it arrives escaped.
    Keep,
    /// Copied as is, and decoded when it arrives escaped: the unreserved set minus `.`.
    Unreserved,
    /// Percent-encoded in the output.
    Escape,
    /// NUL: escaped, and normalization fails.
    Invalid,
    Dot,
}

fn classify(byte: u8) -> ByteClass {
    match byte {
        0 => ByteClass::Invalid,
        b'.' => ByteClass::Dot,
        b'-' | b'_' | b'~' => ByteClass::Unreserved,
        _ if byte.is_ascii_alphanumeric() => ByteClass::Unreserved,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'@' | b'['
        | b']' => ByteClass::Keep,
        // Controls, space, `"#%<>?\^{|}` and backquote, DEL, and every byte above 0x7F.
        _ => ByteClass::Escape,
    }
}

fn is_url_slash(byte: u8) -> bool {
    byte == b'/' || byte == b'\\'
}

/// Length of a dot at `at`: 1 for `.`, 3 for `%2e` or `%2E`, else 0 (Chromium `IsDot`).
fn dot_len(spec: &[u8], at: usize) -> usize {
    match &spec[at..] {
        [b'.', ..] => 1,
        [b'%', b'2', b'e' | b'E', ..] => 3,
        _ => 0,
    }
}

/// The byte a `%XX` escape at `at` stands for. Like Chromium's `DecodeEscaped` it only
/// looks at the two hex digits, which matters when the nested-escape guard below calls it
/// on an output position that no longer holds a `%` (after a `..` shortened the output).
fn decode_escape(bytes: &[u8], at: usize) -> Option<u8> {
    match bytes.get(at + 1..at + 3)? {
        [high, low] => {
            let high = char::from(*high).to_digit(16)?;
            let low = char::from(*low).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        }
        _ => None,
    }
}

/// What a dot found right after a slash means.
enum DotSegment {
    /// Part of a name such as `.well-known` or `..%2f`.
    Name,
    /// `.`, consuming this many more input bytes (its trailing slash, if any).
    Current(usize),
    /// `..`, consuming this many more input bytes (second dot and trailing slash).
    Parent(usize),
}

/// Chromium `ClassifyAfterDot`.
fn classify_after_dot(spec: &[u8], after_dot: usize) -> DotSegment {
    let Some(&next) = spec.get(after_dot) else {
        return DotSegment::Current(0);
    };
    if is_url_slash(next) {
        return DotSegment::Current(1);
    }
    let second_dot = dot_len(spec, after_dot);
    if second_dot > 0 {
        match spec.get(after_dot + second_dot) {
            None => return DotSegment::Parent(second_dot),
            Some(&byte) if is_url_slash(byte) => return DotSegment::Parent(second_dot + 1),
            Some(_) => {}
        }
    }
    DotSegment::Name
}

fn push_escaped(output: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    output.extend_from_slice(&[b'%', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
}

/// Rewinds `output`, which ends in `/`, to just after the slash before that (never past
/// the leading slash): the effect of a `..` segment.
fn back_up_to_previous_slash(output: &mut Vec<u8>) {
    let Some(before_last) = output.len().checked_sub(2) else {
        return;
    };
    let previous_slash = output[..=before_last].iter().rposition(|&byte| byte == b'/').unwrap_or(0);
    output.truncate(previous_slash + 1);
}

/// Chromium's `DoPartialPath` as snapshotted in Envoy (`source/common/chromium_url`).
fn canonicalize(path: &str) -> Result<String, RequestError> {
    let spec = path.as_bytes();
    let mut output: Vec<u8> = Vec::with_capacity(spec.len());
    let mut is_valid = true;
    // Output index of a `%` that did not start a valid escape, for the nested-escape guard.
    let mut last_invalid_percent: Option<usize> = None;
    let mut index = 0;
    while index < spec.len() {
        let byte = spec[index];
        let dot = dot_len(spec, index);
        if dot > 0 {
            // Only a dot that starts a segment can be a dot segment.
            if output.last() == Some(&b'/') {
                match classify_after_dot(spec, index + dot) {
                    DotSegment::Name => output.push(b'.'),
                    DotSegment::Current(consumed) => index += consumed,
                    DotSegment::Parent(consumed) => {
                        back_up_to_previous_slash(&mut output);
                        index += consumed;
                    }
                }
            } else {
                output.push(b'.');
            }
            index += dot;
            continue;
        }
        match (byte, classify(byte)) {
            (b'\\', _) => output.push(b'/'),
            (b'%', _) => match decode_escape(spec, index) {
                Some(decoded) if classify(decoded) == ByteClass::Unreserved => {
                    output.push(decoded);
                    if let Some(percent) = last_invalid_percent
                        && percent + 3 >= output.len()
                    {
                        escape_nested_escape(spec, index + 3, percent, &mut output);
                    }
                    index += 2;
                }
                Some(decoded) => {
                    // Kept escaped with the hex digits as sent: servers may care about case.
                    output.extend_from_slice(&spec[index..index + 3]);
                    is_valid &= classify(decoded) != ByteClass::Invalid;
                    index += 2;
                }
                None => {
                    last_invalid_percent = Some(output.len());
                    output.push(b'%');
                }
            },
            (_, ByteClass::Invalid) => {
                push_escaped(&mut output, byte);
                is_valid = false;
            }
            (_, ByteClass::Escape) => push_escaped(&mut output, byte),
            _ => output.push(byte),
        }
        index += 1;
    }
    if !is_valid {
        return Err(RequestError::NulInPath);
    }
    // Every output byte is ASCII: bytes above 0x7F are always escaped.
    Ok(output.into_iter().map(char::from).collect())
}

/// Chromium `CheckForNestedEscapes`: after decoding an escape within two bytes of a `%`
/// that was not an escape, make sure the output does not now read as a new escape (say
/// `%%30%30` → `%00`), so normalizing twice gives the same path. If it would, the `%`
/// becomes `%25`.
fn escape_nested_escape(spec: &[u8], next_input: usize, percent: usize, output: &mut Vec<u8>) {
    let length = output.len();
    let Some(&last_decoded) = output.last() else {
        return;
    };
    // Output ends with "%c"; borrow the next input byte to see if "%cX" would be an escape.
    let borrowed_next = percent + 2 == length;
    if borrowed_next {
        match spec.get(next_input) {
            Some(&next) if next < 0x80 => output.push(next),
            _ => return,
        }
    }
    if decode_escape(output, percent).is_some() {
        if !borrowed_next {
            output.push(output[percent + 1]);
        }
        output[percent + 1] = b'2';
        output[percent + 2] = b'5';
        output.push(last_decoded);
    } else if borrowed_next {
        output.truncate(length);
    }
}
