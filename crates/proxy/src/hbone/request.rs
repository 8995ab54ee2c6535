//! The pure half of the inbound side: which target a request asks for, and how a refusal looks
//! on the wire (and is read back by the client). No I/O, so it is tested directly.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{ALLOW, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;

use super::handler::Refusal;

/// The response header that carries a [`Refusal`]'s reason to the peer.
pub const REFUSAL_REASON_HEADER: HeaderName = HeaderName::from_static("x-zmesh-refusal-reason");

/// Reasons are for operators reading logs on the other side, not a data channel; a cap keeps a
/// verbose policy explanation from exceeding the peer's header list limit.
const MAX_REASON_LEN: usize = 512;

/// The destination of a tunnel: a `CONNECT` whose authority is a literal `ip:port`.
pub(crate) fn target_of<B>(request: &Request<B>) -> Result<SocketAddr, Refusal> {
    if request.method() != Method::CONNECT {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("HBONE carries only CONNECT tunnels, not {}", request.method()),
        ));
    }
    let Some(authority) = request.uri().authority() else {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "CONNECT without an authority; name the target as ip:port"));
    };
    // Names are resolved by the sending proxy: the receiving side must not be asked to resolve
    // (and so trust) a name chosen by the peer.
    let target: SocketAddr = authority.as_str().parse().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("CONNECT authority `{authority}` is not an ip:port; HBONE names the target by address"),
        )
    })?;
    if target.port() == 0 || target.ip().is_unspecified() {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, format!("CONNECT target {target} is not a destination")));
    }
    Ok(target)
}

/// The response to a refused request: its status, its reason, and `Allow` for a wrong method.
pub(crate) fn refusal_response(refusal: &Refusal) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = refusal.status;
    let headers = response.headers_mut();
    headers.insert(REFUSAL_REASON_HEADER, header_safe(&refusal.reason));
    if refusal.status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("CONNECT"));
    }
    response
}

/// The reason a peer gave for refusing a tunnel, if it gave one.
pub(crate) fn reason_of(headers: &HeaderMap) -> Option<String> {
    headers.get(REFUSAL_REASON_HEADER).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// Printable ASCII only: header values may not hold control characters, and bytes above 0x7f
/// are read differently by different HTTP stacks.
fn header_safe(reason: &str) -> HeaderValue {
    let mut safe: String =
        reason.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).take(MAX_REASON_LEN).collect();
    if safe.is_empty() {
        safe.push_str("refused");
    }
    HeaderValue::from_str(&safe).expect("printable ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).expect("test requests are valid")
    }

    #[test]
    fn a_connect_to_an_ip_and_port_names_its_target() {
        assert_eq!(target_of(&request(Method::CONNECT, "10.0.0.7:8080")), Ok("10.0.0.7:8080".parse().unwrap()));
        assert_eq!(target_of(&request(Method::CONNECT, "[fd00::7]:443")), Ok("[fd00::7]:443".parse().unwrap()));
    }

    #[test]
    fn any_other_method_is_refused_with_405() {
        let refusal = target_of(&request(Method::GET, "http://10.0.0.7:8080/")).unwrap_err();
        assert_eq!(refusal.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(refusal_response(&refusal).headers()[ALLOW], "CONNECT");
    }

    #[test]
    fn a_host_name_is_refused_with_400_because_the_sender_resolves_names() {
        let refusal = target_of(&request(Method::CONNECT, "reviews.shop.svc:9080")).unwrap_err();
        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert!(refusal.reason.contains("reviews.shop.svc:9080"), "{}", refusal.reason);
    }

    #[test]
    fn port_zero_and_the_unspecified_address_are_refused() {
        for uri in ["10.0.0.7:0", "0.0.0.0:80", "[::]:80"] {
            assert_eq!(target_of(&request(Method::CONNECT, uri)).unwrap_err().status, StatusCode::BAD_REQUEST, "{uri}");
        }
    }

    #[test]
    fn a_reason_survives_the_round_trip_through_a_header() {
        let response = refusal_response(&Refusal::forbidden("denied by shop/deny-all rule 0"));
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(reason_of(response.headers()).as_deref(), Some("denied by shop/deny-all rule 0"));
    }

    #[test]
    fn control_characters_and_overlong_reasons_are_made_header_safe() {
        let response = refusal_response(&Refusal::forbidden(format!("line\r\nbreak é {}", "x".repeat(2000))));
        let reason = reason_of(response.headers()).unwrap();
        assert!(reason.starts_with("line??break ? x"), "{reason}");
        assert_eq!(reason.len(), MAX_REASON_LEN);
    }
}
