//! Chunked transfer coding (RFC 9112 §7.1), decoded strictly and re-encoded canonically.
//!
//! Sans-IO: [`ChunkedBody::transcode`] takes whatever bytes have arrived and appends what to
//! send on, so the caller copies a body of any size through a bounded buffer. Chunk sizes are
//! kept (each chunk goes out with the size it came in with, its data streamed as it arrives);
//! chunk extensions and trailers are dropped, as Envoy does by default (trailers only pass
//! with `enable_trailers`), so the app never receives fields authorization did not see.

use std::io::Write as _;

use super::error::ChunkError;

/// The longest chunk-size line accepted, extensions included.
pub(super) const MAX_CHUNK_LINE: usize = 4096;

/// What to emit for the decoded body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Output {
    /// Chunked again, with the same chunk sizes.
    Chunked,
    /// The data alone, for an HTTP/1.0 client that cannot read chunked coding.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data { remaining: u64 },
    DataEnd,
    Trailers { budget: usize },
    Done,
}

#[derive(Debug)]
pub(super) struct ChunkedBody {
    state: State,
    output: Output,
    trailer_limit: usize,
}

impl ChunkedBody {
    /// `trailer_limit` bounds the (discarded) trailer section, like a head.
    pub(super) fn new(output: Output, trailer_limit: usize) -> Self {
        Self { state: State::Size, output, trailer_limit }
    }

    pub(super) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes as much of `input` as can be decided now, appends the bytes to send to `out`,
    /// and returns how many input bytes were consumed. Stops at the end of the body, so bytes
    /// of a following (pipelined) message stay unconsumed.
    pub(super) fn transcode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Size => {
                    let Some(line) =
                        next_line(rest, MAX_CHUNK_LINE, ChunkError::LineTooLong { limit: MAX_CHUNK_LINE })?
                    else {
                        return Ok(at);
                    };
                    let size = parse_size(line)?;
                    at += line.len() + 2;
                    if size == 0 {
                        // The last chunk goes out once the trailers (dropped) have ended.
                        self.state = State::Trailers { budget: self.trailer_limit };
                        continue;
                    }
                    if self.output == Output::Chunked {
                        // Writing into a Vec cannot fail.
                        let _ = write!(out, "{size:x}\r\n");
                    }
                    self.state = State::Data { remaining: size };
                }
                State::Data { remaining } => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = usize::try_from(remaining).map_or(rest.len(), |remaining| remaining.min(rest.len()));
                    out.extend_from_slice(&rest[..take]);
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 { State::DataEnd } else { State::Data { remaining } };
                }
                State::DataEnd => {
                    match rest {
                        [b'\r', b'\n', ..] => {}
                        [] | [b'\r'] => return Ok(at),
                        _ => return Err(ChunkError::MissingCrlf),
                    }
                    at += 2;
                    if self.output == Output::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                    self.state = State::Size;
                }
                State::Trailers { budget } => {
                    let too_large = ChunkError::TrailersTooLarge { limit: self.trailer_limit };
                    let Some(line) = next_line(rest, budget, too_large)? else {
                        return Ok(at);
                    };
                    at += line.len() + 2;
                    if line.is_empty() {
                        if self.output == Output::Chunked {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        self.state = State::Done;
                    } else {
                        self.state = State::Trailers { budget: budget - line.len() - 2 };
                    }
                }
                State::Done => return Ok(at),
            }
        }
    }
}

/// The next CRLF-terminated line of `input` without its CRLF, `None` if it has not ended yet.
/// A bare LF is refused: a peer that ends lines differently from the app is how chunked
/// smuggling starts.
fn next_line(input: &[u8], limit: usize, too_long: ChunkError) -> Result<Option<&[u8]>, ChunkError> {
    let window = &input[..input.len().min(limit)];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(newline) => match window[..newline].strip_suffix(b"\r") {
            Some(line) => Ok(Some(line)),
            None => Err(ChunkError::MissingCrlf),
        },
        None if input.len() >= limit => Err(too_long),
        None => Ok(None),
    }
}

/// `1*16HEXDIG *(SP / HTAB) [ ";" extensions ]`, as leniently as Envoy 1.40 reads it (measured:
/// trailing whitespace alone, empty or valueless extensions, quoted values, and control or
/// non-ASCII bytes in extensions are all accepted). Extensions are dropped — the app gets the
/// chunk size alone — so what they hold never reaches it; only a bare CR (the classic
/// line-ending confusion) and NUL are refused.
fn parse_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|byte| byte.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(ChunkError::InvalidSize);
    }
    let mut size = 0u64;
    for &byte in &line[..digits] {
        // At most 16 hex digits, so this never overflows.
        size = size << 4 | u64::from(hex_value(byte));
    }
    let rest = &line[digits..];
    let extensions = rest.iter().position(|&byte| byte != b' ' && byte != b'\t').map(|start| &rest[start..]);
    match extensions {
        None => Ok(size),
        Some([b';', extensions @ ..]) if !extensions.iter().any(|&byte| byte == b'\r' || byte == 0) => Ok(size),
        _ => Err(ChunkError::InvalidSize),
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcode_all(input: &[u8], output: Output) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut body = ChunkedBody::new(output, 1024);
        let mut out = Vec::new();
        let consumed = body.transcode(input, &mut out)?;
        assert!(body.is_done(), "body did not end: {:?}", String::from_utf8_lossy(input));
        Ok((out, consumed))
    }

    #[test]
    fn chunks_keep_their_sizes_and_lose_extensions_and_trailers() {
        let input = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        let (out, consumed) = transcode_all(input, Output::Chunked).unwrap();
        assert_eq!(consumed, input.len());
        assert_eq!(out, b"5\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n");
    }

    #[test]
    fn raw_output_is_the_data_alone() {
        let (out, _) = transcode_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", Output::Raw).unwrap();
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn bytes_after_the_last_chunk_stay_unconsumed() {
        let input = b"0\r\n\r\nGET /admin HTTP/1.1\r\n";
        let (_, consumed) = transcode_all(input, Output::Chunked).unwrap();
        assert_eq!(&input[consumed..], b"GET /admin HTTP/1.1\r\n");
    }

    #[test]
    fn input_split_at_any_byte_gives_the_same_output() {
        let input = b"3;x\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nt: v\r\n\r\n";
        let (whole, _) = transcode_all(input, Output::Chunked).unwrap();
        for split in 0..input.len() {
            let mut body = ChunkedBody::new(Output::Chunked, 1024);
            let mut out = Vec::new();
            let mut pending = input[..split].to_vec();
            let consumed = body.transcode(&pending, &mut out).unwrap();
            pending.drain(..consumed);
            pending.extend_from_slice(&input[split..]);
            body.transcode(&pending, &mut out).unwrap();
            assert!(body.is_done(), "split at {split}");
            assert_eq!(out, whole, "split at {split}");
        }
    }

    /// Each was accepted by Envoy 1.40 (measured), and the app gets the chunk without them.
    #[test]
    fn chunk_extensions_are_accepted_as_envoy_accepts_them_and_never_forwarded() {
        for line in [
            &b"5;a=b"[..],
            b"5 ;a=b",
            b"5; a=b",
            b"5;a=\"x y\"",
            b"5;a",
            b"5;;",
            b"5;a=b;c=d",
            b"5\t;a=b",
            b"5;a=b ",
            b"5;=b",
            b"5;a=",
            b"5 ",
            b"5\t",
            b"5;a=\x01",
            b"5;a=\x7f",
            b"5;a=\xff",
            b"05;a",
        ] {
            let mut input = line.to_vec();
            input.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            let (out, consumed) = transcode_all(&input, Output::Chunked).unwrap_or_else(|e| panic!("{line:?}: {e:?}"));
            assert_eq!((out.as_slice(), consumed), (&b"5\r\nhello\r\n0\r\n\r\n"[..], input.len()), "{line:?}");
        }
    }

    #[test]
    fn malformed_chunk_sizes_are_refused() {
        for input in [
            &b"-1\r\n"[..],
            b"0x5\r\nhello\r\n",
            b" 5\r\nhello\r\n",
            b"\r\n",
            b"5\nhello\r\n",
            b"5;a\rb\r\nhello\r\n",
            b"5;a\x00\r\nhello\r\n",
            b"10000000000000000\r\n",
            b"+5\r\nhello\r\n",
        ] {
            let mut out = Vec::new();
            let result = ChunkedBody::new(Output::Chunked, 1024).transcode(input, &mut out);
            assert!(result.is_err(), "accepted {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn sixteen_hex_digits_are_the_most_a_size_may_have() {
        assert_eq!(parse_size(b"ffffffffffffffff"), Ok(u64::MAX));
        assert_eq!(parse_size(b"0000000000000005 ; ext"), Ok(5));
        assert_eq!(parse_size(b"00000000000000005"), Err(ChunkError::InvalidSize));
    }

    #[test]
    fn data_not_followed_by_crlf_is_refused() {
        let mut out = Vec::new();
        let result = ChunkedBody::new(Output::Chunked, 1024).transcode(b"3\r\nabcX\r\n", &mut out);
        assert_eq!(result, Err(ChunkError::MissingCrlf));
    }

    #[test]
    fn an_endless_size_line_or_trailer_section_is_refused() {
        let mut out = Vec::new();
        let long_line = vec![b'1'; MAX_CHUNK_LINE];
        let result = ChunkedBody::new(Output::Chunked, 1024).transcode(&long_line, &mut out);
        assert_eq!(result, Err(ChunkError::LineTooLong { limit: MAX_CHUNK_LINE }));

        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..100 {
            trailers.extend_from_slice(b"x-trailer: some value\r\n");
        }
        let result = ChunkedBody::new(Output::Chunked, 1024).transcode(&trailers, &mut out);
        assert_eq!(result, Err(ChunkError::TrailersTooLarge { limit: 1024 }));
    }
}
