//! Balsa's view of a request head: where it ends, how the request line splits, how header
//! lines split into fields, and which Content-Length forms it refuses. Envoy 1.3x uses
//! Balsa (quiche) as its HTTP/1 parser with `InvalidCharsLevel::kError`, header continuation
//! lines allowed, a required colon and at most one Content-Length.

use super::Limits;
use super::target;
use crate::error::RequestError;
use crate::head::Version;
use crate::headers::{Headers, trim_envoy_whitespace};
use crate::method::Method;

/// A head Balsa accepted, with fields as Envoy's codec received them.
pub(super) struct Framed<'a> {
    pub(super) method: Method,
    pub(super) target: &'a str,
    pub(super) version: Version,
    pub(super) headers: Headers,
    /// The value of a valid Content-Length (Balsa reads the body by it).
    pub(super) content_length: Option<u64>,
    /// Bytes up to and including the blank line.
    pub(super) consumed: usize,
}

/// Frames the head at the start of `buf`, or says more bytes are needed.
pub(super) fn frame<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<Framed<'a>>, RequestError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // Envoy looks at the first byte before Balsa does, so a lower-case method or a leading
    // empty line fails at once.
    if !Method::can_start_with(first) {
        return Err(RequestError::UnknownMethod);
    }
    // Balsa never reads past the limit: a head that has not ended by then is too large.
    let window = &buf[..buf.len().min(limits.max_header_bytes)];
    let need_more = |line_check: Result<(), RequestError>| {
        if buf.len() >= limits.max_header_bytes {
            return Err(RequestError::HeadersTooLarge { limit: limits.max_header_bytes });
        }
        line_check.map(|()| None)
    };

    let Some(line_end) = window.iter().position(|&byte| byte == b'\n') else {
        return need_more(Ok(()));
    };
    let line = RequestLine::split(&window[..line_end]);
    // Envoy records a bad request line but lets Balsa run on over the bytes it already has;
    // Balsa's own later findings (control bytes, an oversized head) overwrite the error.
    let line_check = line.check();
    let head_len = if line.version.is_empty() {
        // An HTTP/0.9 line is a whole request: Balsa reads no headers after it.
        line_end + 1
    } else {
        match find_head_end(window, line_end) {
            Some(head_len) => head_len,
            None => return need_more(line_check.map(drop)),
        }
    };
    let head = &window[..head_len];
    if head.iter().any(|&byte| is_forbidden_control(byte)) {
        return Err(RequestError::InvalidCharacters);
    }
    let (method, target, version) = line_check?;

    let fields = split_fields(head, line_end + 1)?;
    let content_length = check_framing_fields(&fields)?;
    let headers = into_headers(&fields, limits)?;
    Ok(Some(Framed { method, target, version, headers, content_length, consumed: head_len }))
}

/// Control bytes Balsa refuses anywhere in the head (`kInvalidHeaderCharList`): tab, CR and
/// LF are the only ones allowed.
fn is_forbidden_control(byte: u8) -> bool {
    matches!(byte, 0x00..=0x08 | 0x0b | 0x0c | 0x0e..=0x1f | 0x7f)
}

/// Balsa ends the head at the first line that is empty or just CR, which makes bare LF line
/// endings work.
fn find_head_end(window: &[u8], request_line_end: usize) -> Option<usize> {
    let mut previous_newline = request_line_end;
    for (index, &byte) in window.iter().enumerate().skip(request_line_end + 1) {
        if byte != b'\n' {
            continue;
        }
        let gap = index - previous_newline;
        if gap == 1 || (gap == 2 && window[index - 1] == b'\r') {
            return Some(index + 1);
        }
        previous_newline = index;
    }
    None
}

/// The three parts of a request line as Balsa splits it: runs of bytes up to `' '` (so tab
/// and control bytes too) separate the method and the target, and the version is the
/// trimmed rest of the line, spaces included.
struct RequestLine<'a> {
    /// The line without its line ending or trailing whitespace.
    whole: &'a [u8],
    method: &'a [u8],
    target: &'a [u8],
    version: &'a [u8],
}

fn is_balsa_space(byte: u8) -> bool {
    byte <= b' '
}

impl<'a> RequestLine<'a> {
    fn split(line: &'a [u8]) -> Self {
        let end = line.iter().rposition(|&byte| !is_balsa_space(byte)).map_or(0, |last| last + 1);
        let whole = &line[..end];
        let (method, rest) = split_island(whole);
        let (target, rest) = split_island(rest);
        let version_start = rest.iter().position(|&byte| !is_balsa_space(byte)).unwrap_or(rest.len());
        Self { whole, method, target, version: &rest[version_start..] }
    }

    /// Envoy's checks on the request line, in its order: method, target, version.
    fn check(&self) -> Result<(Method, &'a str, Version), RequestError> {
        let method = Method::from_token(self.method).ok_or(RequestError::UnknownMethod)?;
        if !target::has_valid_syntax(self.target, method == Method::Connect) {
            return Err(RequestError::MalformedTarget);
        }
        let target = std::str::from_utf8(self.target).map_err(|_| RequestError::MalformedTarget)?;
        let version_is_valid = self.version.is_empty()
            || matches!(self.version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
                if major.is_ascii_digit() && minor.is_ascii_digit());
        if !version_is_valid {
            return Err(RequestError::MalformedVersion);
        }
        // Envoy asks whether the whole line ends in "HTTP/1.1", so even an HTTP/0.9 line whose
        // target ends that way counts as HTTP/1.1.
        let version = if self.whole.ends_with(b"HTTP/1.1") { Version::Http11 } else { Version::Http10 };
        Ok((method, target, version))
    }
}

/// Skips leading whitespace, then returns the following run of non-whitespace and the rest.
fn split_island(bytes: &[u8]) -> (&[u8], &[u8]) {
    let start = bytes.iter().position(|&byte| !is_balsa_space(byte)).unwrap_or(bytes.len());
    let rest = &bytes[start..];
    let len = rest.iter().position(|&byte| is_balsa_space(byte)).unwrap_or(rest.len());
    rest.split_at(len)
}

/// One header field before Envoy's codec has seen it: the name as sent and the raw value,
/// which still holds the line breaks of any continuation lines.
struct Field<'a> {
    line: usize,
    name: &'a [u8],
    value: &'a [u8],
}

/// Splits the header lines of `head` (starting at `start`, ending with the blank line) into
/// fields, folding continuation lines into the field above them.
fn split_fields(head: &[u8], start: usize) -> Result<Vec<Field<'_>>, RequestError> {
    // (first byte, index of its '\n') of each header line; the last line is the blank one.
    let mut lines = Vec::new();
    let mut line_start = start;
    for (index, &byte) in head.iter().enumerate().skip(start) {
        if byte == b'\n' {
            lines.push((line_start, index));
            line_start = index + 1;
        }
    }
    lines.pop();

    let mut fields = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let (field_start, _) = lines[index];
        let line = index + 2;
        let mut next = index + 1;
        while let Some(&(continuation_start, _)) = lines.get(next) {
            match head[continuation_start] {
                byte if byte > b' ' => break,
                b' ' | b'\t' => next += 1,
                _ => return Err(RequestError::InvalidContinuationLine { line: next + 2 }),
            }
        }
        let (_, last_newline) = lines[next - 1];
        let field_end = head[field_start..=last_newline]
            .iter()
            .rposition(|&byte| byte > b' ')
            .map_or(field_start + 1, |last| field_start + last + 1);
        let field = &head[field_start..field_end];

        let colon = field.iter().position(|&byte| byte == b':');
        // Balsa vets every name byte before the colon, or the whole line when there is none.
        let name = &field[..colon.unwrap_or(field.len())];
        if name.iter().any(|&byte| is_invalid_name_byte(byte)) {
            return Err(RequestError::InvalidHeaderName { line });
        }
        let Some(colon) = colon else {
            return Err(RequestError::HeaderWithoutColon { line });
        };
        let value = &field[colon + 1..];
        let value_start = value.iter().position(|&byte| byte > b' ').unwrap_or(value.len());
        fields.push(Field { line, name, value: &value[value_start..] });
        index = next;
    }
    Ok(fields)
}

/// Bytes Balsa refuses in a field name (`kInvalidHeaderKeyCharListAllowDoubleQuote`). Envoy
/// later insists on an RFC 9110 token, which also excludes `"` and obs-text.
fn is_invalid_name_byte(byte: u8) -> bool {
    byte <= b' ' || byte == 0x7f || b"(),/;<=>?@[\\]{}".contains(&byte)
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ContentLength {
    Valid(u64),
    /// Not all digits, or empty; carries the value of the leading digits, which Balsa uses
    /// to compare repeated invalid values.
    Invalid(u64),
    Overflow(u64),
}

fn parse_content_length(value: &[u8]) -> ContentLength {
    if value.is_empty() {
        return ContentLength::Invalid(0);
    }
    let mut length: u64 = 0;
    for &byte in value {
        if !byte.is_ascii_digit() {
            return ContentLength::Invalid(length);
        }
        match length.checked_mul(10).and_then(|tens| tens.checked_add(u64::from(byte - b'0'))) {
            Some(next) => length = next,
            None => return ContentLength::Overflow(length),
        }
    }
    ContentLength::Valid(length)
}

/// Balsa's framing rules: a field name must not be empty, Content-Length may appear once
/// and must be a plain number unless chunked encoding overrides it.
fn check_framing_fields(fields: &[Field<'_>]) -> Result<Option<u64>, RequestError> {
    let mut content_length = None;
    let mut last_transfer_encoding = None;
    for field in fields {
        if field.name.is_empty() {
            return Err(RequestError::InvalidHeaderName { line: field.line });
        }
        if field.name.eq_ignore_ascii_case(b"content-length") {
            let parsed = parse_content_length(field.value);
            match content_length {
                None => content_length = Some(parsed),
                // Balsa tolerates a repeat only when both are the same invalid value; that
                // still fails below as unparsable.
                Some(ContentLength::Invalid(first)) if parsed == ContentLength::Invalid(first) => {}
                Some(_) => return Err(RequestError::DuplicateContentLength),
            }
        } else if field.name.eq_ignore_ascii_case(b"transfer-encoding") {
            last_transfer_encoding = Some(field.value);
        }
    }
    // Balsa only looks at the last Transfer-Encoding line; Envoy's codec vets them all later.
    let chunked = last_transfer_encoding.is_some_and(|value| value.eq_ignore_ascii_case(b"chunked"));
    match content_length {
        Some(ContentLength::Valid(length)) => Ok(Some(length)),
        Some(ContentLength::Invalid(_) | ContentLength::Overflow(_)) if !chunked => {
            Err(RequestError::InvalidContentLength)
        }
        _ => Ok(None),
    }
}

/// Envoy's codec reading Balsa's fields: names must be tokens, the count is capped, and
/// values lose their line breaks (joining continuation lines) and surrounding whitespace.
fn into_headers(fields: &[Field<'_>], limits: &Limits) -> Result<Headers, RequestError> {
    let too_many = RequestError::TooManyHeaders { limit: limits.max_headers };
    let mut headers = Headers::new();
    for (index, field) in fields.iter().enumerate() {
        if !field.name.iter().all(|&byte| is_token_byte(byte)) {
            return Err(RequestError::InvalidHeaderName { line: field.line });
        }
        // Envoy counts a field when the next one starts, so a bad name right after the
        // limit is reported first.
        if index > limits.max_headers {
            return Err(too_many);
        }
        let value: Vec<u8> = field.value.iter().copied().filter(|&byte| byte != b'\r' && byte != b'\n').collect();
        let name: String = field.name.iter().map(|&byte| char::from(byte)).collect();
        headers.push(&name, trim_envoy_whitespace(&value));
    }
    if headers.len() > limits.max_headers {
        return Err(too_many);
    }
    Ok(headers)
}
