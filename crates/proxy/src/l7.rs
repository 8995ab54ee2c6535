//! HTTP/1.1 at L7: parse, authorize, forward (in progress).
