//! Why a request was refused before authorization, and how Envoy answers it.

/// A request Envoy refuses in its codec or connection manager, before any filter (RBAC
/// included) sees it.
///
/// [`status`](Self::status) is the HTTP status Envoy replies with and
/// [`detail`](Self::detail) the response-code-details string it logs, so the proxy can
/// answer identically and conformance tests can check both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request method is unknown or not upper case; Envoy accepts only the methods in `Method::ALL`")]
    UnknownMethod,
    #[error(
        "request-target is not `/path`, `scheme://authority/path` or (for CONNECT) `host:port`, \
         or has bytes outside `!`..`~`"
    )]
    MalformedTarget,
    #[error("HTTP version is not `HTTP/<digit>.<digit>` in upper case")]
    MalformedVersion,
    #[error(
        "request head contains a control byte (0x00-0x08, 0x0B, 0x0C, 0x0E-0x1F or 0x7F); \
         only tab, CR and LF are allowed"
    )]
    InvalidCharacters,
    #[error("header on line {line} has no colon after its name")]
    HeaderWithoutColon { line: usize },
    #[error("header on line {line} has an empty name or a name that is not an RFC 9110 token")]
    InvalidHeaderName { line: usize },
    #[error("line {line} continues a header but starts with neither space nor tab")]
    InvalidContinuationLine { line: usize },
    #[error("Content-Length is not a single decimal number that fits in 64 bits")]
    InvalidContentLength,
    #[error("Content-Length appears more than once; send it once")]
    DuplicateContentLength,
    #[error("request head is larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("request has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("request has both Content-Length and Transfer-Encoding; send only one")]
    ContentLengthWithTransferEncoding,
    #[error("Transfer-Encoding is not exactly `chunked`, or is sent with CONNECT")]
    UnsupportedTransferEncoding,
    #[error("CONNECT request declares a body (Content-Length other than 0)")]
    ConnectWithBody,
    #[error(
        "Connection header nominates ten or more headers, an X-Forwarded-* header, a pseudo-header \
         or an oversized TE"
    )]
    ConnectionHeaderRejected,
    #[error("absolute-form or CONNECT request-target is not a valid URL")]
    InvalidUrl,
    #[error("absolute-form request-target uses a scheme other than http or https")]
    InvalidScheme,
    #[error("HTTP version is not 1.1 and HTTP/1.0 is not enabled (`Limits::accept_http_10`)")]
    UnsupportedVersion,
    #[error("Host header contains bytes not allowed in an authority")]
    InvalidAuthority,
    #[error("request has no Host header")]
    MissingHost,
    #[error("request path does not start with `/`")]
    PathNotAbsolute,
    #[error("request path contains `#`; fragments must not be sent")]
    FragmentInPath,
    #[error("request path contains a NUL byte, raw or as `%00`")]
    NulInPath,
}

impl RequestError {
    /// The status Envoy answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadersTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::UnsupportedTransferEncoding => 501,
            Self::UnsupportedVersion => 426,
            // The connection manager only serves origin-form paths and answers anything else
            // as if no route matched.
            Self::PathNotAbsolute => 404,
            _ => 400,
        }
    }

    /// Envoy's response-code-details string (`%RESPONSE_CODE_DETAILS%`).
    pub fn detail(&self) -> &'static str {
        match self {
            // Balsa's own errors all surface as one generic codec error.
            Self::UnknownMethod
            | Self::MalformedTarget
            | Self::MalformedVersion
            | Self::HeaderWithoutColon { .. }
            | Self::InvalidHeaderName { .. }
            | Self::InvalidContinuationLine { .. }
            | Self::InvalidContentLength
            | Self::DuplicateContentLength => "http1.codec_error",
            Self::InvalidCharacters => "http1.invalid_characters",
            Self::HeadersTooLarge { .. } => "http1.headers_too_large",
            Self::TooManyHeaders { .. } => "http1.too_many_headers",
            Self::ContentLengthWithTransferEncoding => "http1.content_length_and_chunked_not_allowed",
            Self::UnsupportedTransferEncoding => "http1.invalid_transfer_encoding",
            Self::ConnectWithBody => "http1.body_disallowed",
            Self::ConnectionHeaderRejected => "http1.connection_header_rejected",
            Self::InvalidUrl => "http1.invalid_url",
            Self::InvalidScheme => "http1.invalid_scheme",
            Self::UnsupportedVersion => "low_version",
            Self::InvalidAuthority => "http.invalid_authority",
            Self::MissingHost => "missing_host_header",
            Self::PathNotAbsolute => "absolute_path_rejected",
            Self::FragmentInPath | Self::NulInPath => "path_normalization_failed",
        }
    }
}
