use zmesh_http::{BodyFraming, Limits};

use super::*;

const GET: RequestFacts =
    RequestFacts { body: BodyFraming::None, keep_alive: true, http10: false, is_head: false, websocket: false };

fn parse(raw: &str, request: RequestFacts) -> Result<(ResponseHead, String), ResponseError> {
    let mut out = Vec::new();
    let head = parse_response_head(raw.as_bytes(), request, false, &Limits::default(), &mut out)?.unwrap();
    Ok((head, String::from_utf8(out).unwrap()))
}

fn final_of(head: &ResponseHead) -> (ResponseBody, bool) {
    match head.kind {
        ResponseKind::Final { body, close } => (body, close),
        other => panic!("not a final response: {other:?}"),
    }
}

#[test]
fn a_content_length_response_keeps_the_connection_and_its_headers() {
    let (head, out) = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok", GET).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Length(2), false));
    assert_eq!(head.consumed, 46);
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n");
}

#[test]
fn an_incomplete_head_asks_for_more_and_an_oversized_one_fails() {
    let limits = Limits { max_header_bytes: 32, ..Limits::default() };
    let mut out = Vec::new();
    assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\n", GET, false, &limits, &mut out), Ok(None));
    let long = "HTTP/1.1 200 OK\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaa";
    assert_eq!(
        parse_response_head(long.as_bytes(), GET, false, &limits, &mut out),
        Err(ResponseError::TooLarge { limit: 32 })
    );
}

#[test]
fn head_204_and_304_responses_have_no_body() {
    let head_request = RequestFacts { is_head: true, ..GET };
    let (head, _) = parse("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head_request).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Empty, false));
    for status in ["204 No Content", "304 Not Modified"] {
        let (head, _) = parse(&format!("HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\n\r\n"), GET).unwrap();
        assert_eq!(final_of(&head), (ResponseBody::Empty, false));
    }
}

#[test]
fn a_response_without_length_runs_until_close_and_says_so() {
    let (head, out) = parse("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n", GET).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::UntilClose, true));
    assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
}

#[test]
fn the_app_s_connection_close_and_http_1_0_defaults_are_honoured() {
    let (head, _) = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: Close\r\n\r\n", GET).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Length(0), true));
    let (head, _) = parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", GET).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Length(0), true));
    let (head, _) = parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", GET).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Length(0), false));
}

#[test]
fn an_http_1_0_client_gets_keep_alive_spelled_out_and_chunked_bodies_unchunked() {
    let http10 = RequestFacts { http10: true, ..GET };
    let (head, out) = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", http10).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Length(0), false));
    assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nconnection: keep-alive\r\n\r\n");
    let (head, out) = parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", http10).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Chunked(Output::Raw), true));
    assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
}

#[test]
fn an_unfinished_request_or_a_client_that_closes_closes_after_the_response() {
    let mut out = Vec::new();
    let raw = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n";
    let head = parse_response_head(raw, GET, true, &Limits::default(), &mut out).unwrap().unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Length(0), true));
    let closing = RequestFacts { keep_alive: false, ..GET };
    let (head, _) = parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", closing).unwrap();
    assert_eq!(final_of(&head), (ResponseBody::Length(0), true));
}

#[test]
fn interim_responses_pass_to_http_1_1_clients_only() {
    let (head, out) = parse("HTTP/1.1 100 Continue\r\n\r\n", GET).unwrap();
    assert_eq!((head.kind, head.forward), (ResponseKind::Interim, true));
    assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
    let (head, _) = parse("HTTP/1.1 100 Continue\r\n\r\n", RequestFacts { http10: true, ..GET }).unwrap();
    assert_eq!((head.kind, head.forward), (ResponseKind::Interim, false));
}

#[test]
fn switching_protocols_is_accepted_only_for_a_websocket_request() {
    let raw = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(parse(raw, GET).unwrap_err(), ResponseError::UnexpectedUpgrade);
    let (head, out) = parse(raw, RequestFacts { websocket: true, ..GET }).unwrap();
    assert_eq!(head.kind, ResponseKind::SwitchingProtocols);
    assert_eq!(out, raw);
}

#[test]
fn ambiguous_framing_is_a_malformed_response() {
    for (raw, error) in [
        ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", ResponseError::InvalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n", ResponseError::InvalidContentLength),
        ("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", ResponseError::InvalidContentLength),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ResponseError::ContentLengthWithTransferEncoding,
        ),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", ResponseError::UnsupportedTransferEncoding),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            ResponseError::UnsupportedTransferEncoding,
        ),
    ] {
        assert_eq!(parse(raw, GET).unwrap_err(), error, "{raw:?}");
    }
    assert!(matches!(parse("HTTP/1.1 2000 OK\r\n\r\n", GET), Err(ResponseError::Syntax(_))));
}
