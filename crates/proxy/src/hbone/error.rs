//! Why opening a tunnel failed, and whose side has to act.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// Who a failure is attributed to; decides the status, the log level and the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The connecting peer (inbound) or the app (outbound) sent something wrong.
    Downstream,
    /// The remote proxy or the network to it.
    Upstream,
    /// Authorization refused the tunnel.
    Policy,
    /// This proxy's own state (its SVID, its configuration).
    Internal,
}

/// A failed [`HboneClient::connect`](super::HboneClient::connect).
///
/// `Clone` (sources behind `Arc`) because one failed dial answers every connect that was
/// waiting for it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum HboneError {
    #[error(
        "cannot open a TCP connection to the HBONE port {proxy}; is the destination's proxy running and reachable?"
    )]
    Connect {
        proxy: SocketAddr,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error(
        "no TCP connection to the HBONE port {proxy} within {after:?}; the host is down or a firewall drops the SYN"
    )]
    ConnectTimeout { proxy: SocketAddr, after: Duration },
    /// `reason` is the SPIFFE verifier's message when this proxy refused the peer, or the TLS
    /// alert when the peer refused this proxy (its own log has the verifier's message then).
    #[error("mTLS with the HBONE peer {proxy} failed: {reason}")]
    Tls { proxy: SocketAddr, reason: String, side: Side },
    #[error(
        "mTLS and HTTP/2 handshake with {proxy} took longer than {after:?}; the peer is overloaded or not an HBONE port"
    )]
    HandshakeTimeout { proxy: SocketAddr, after: Duration },
    #[error("HTTP/2 with the HBONE peer {proxy} failed")]
    Protocol {
        proxy: SocketAddr,
        #[source]
        source: Arc<hyper::Error>,
    },
    #[error("the HBONE peer {proxy} did not answer the CONNECT to {target} within {after:?}")]
    ResponseTimeout { proxy: SocketAddr, target: SocketAddr, after: Duration },
    #[error(
        "the HBONE peer {proxy} refused the tunnel to {target} with {status}: {}",
        reason.as_deref().unwrap_or("(no reason given)")
    )]
    Refused { proxy: SocketAddr, target: SocketAddr, status: StatusCode, reason: Option<String> },
}

impl HboneError {
    pub fn side(&self) -> Side {
        match self {
            Self::Refused { status, .. } if matches!(*status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Side::Policy
            }
            Self::Tls { side, .. } => *side,
            Self::Connect { .. }
            | Self::ConnectTimeout { .. }
            | Self::HandshakeTimeout { .. }
            | Self::Protocol { .. }
            | Self::ResponseTimeout { .. }
            | Self::Refused { .. } => Side::Upstream,
        }
    }

    /// The HTTP status of a refusal, if the peer answered with one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: StatusCode) -> HboneError {
        let proxy = "10.0.0.2:15008".parse().unwrap();
        let target = "10.0.0.2:8080".parse().unwrap();
        HboneError::Refused { proxy, target, status, reason: Some("denied by shop/deny-all".into()) }
    }

    #[test]
    fn an_authorization_refusal_is_a_policy_failure() {
        assert_eq!(refused(StatusCode::FORBIDDEN).side(), Side::Policy);
        assert_eq!(refused(StatusCode::UNAUTHORIZED).side(), Side::Policy);
    }

    #[test]
    fn any_other_refusal_is_the_upstream_side() {
        assert_eq!(refused(StatusCode::SERVICE_UNAVAILABLE).side(), Side::Upstream);
    }

    #[test]
    fn a_refusal_message_names_peer_target_status_and_reason() {
        assert_eq!(
            refused(StatusCode::FORBIDDEN).to_string(),
            "the HBONE peer 10.0.0.2:15008 refused the tunnel to 10.0.0.2:8080 with 403 Forbidden: denied by shop/deny-all"
        );
    }
}
