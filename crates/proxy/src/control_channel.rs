//! The proxy's end of the control channel: gRPC over TLS 1.3 to the control plane (15012).
//!
//! The control plane must present the control plane's SPIFFE ID under a root the proxy already
//! holds: the bundle file it was started with until it has an SVID, then the bundle in its
//! [`CertStore`] — which only takes bundles that one it holds vouches for (see
//! `identity`). Nothing the channel says can change whom the proxy trusts.

use std::io;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};
use zmesh_id::SpiffeId;
use zmesh_tls::{ControlCredentials, TlsOptions};

/// Why a control-plane address cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("control plane URL `{url}`: {message}")]
pub struct BadControlPlaneUrl {
    pub url: String,
    pub message: String,
}

/// Where the control plane is and who it must be.
#[derive(Debug, Clone)]
pub struct ControlEndpoint {
    endpoint: Endpoint,
    /// The SPIFFE ID the control plane's certificate must carry.
    control_plane: SpiffeId,
    /// Carry the proxy's mark (transparent capture).
    marked: bool,
}

impl ControlEndpoint {
    /// `url` must be `https://HOST:PORT`: the control plane serves TLS only.
    pub fn new(url: &str, control_plane: SpiffeId) -> Result<Self, BadControlPlaneUrl> {
        let bad = |message: String| BadControlPlaneUrl { url: url.to_owned(), message };
        if !url.starts_with("https://") {
            return Err(bad(
                "the control plane serves gRPC over TLS only; give https://HOST:PORT (port 15012 by default)".into(),
            ));
        }
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(ControlEndpoint { endpoint, control_plane, marked: false })
    }

    /// Mark the connections so transparent capture lets them pass: in a captured pod the
    /// proxy's own traffic to the control plane must bypass the outbound capture.
    pub fn marked(mut self, marked: bool) -> Self {
        self.marked = marked;
        self
    }

    /// A request timeout for unary calls (signing); streams have none.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    pub fn uri(&self) -> String {
        self.endpoint.uri().to_string()
    }

    pub fn control_plane(&self) -> &SpiffeId {
        &self.control_plane
    }

    /// A gRPC channel over TLS, authenticated as `credentials` say.
    pub async fn connect(&self, credentials: &ControlCredentials) -> Result<Channel, tonic::transport::Error> {
        let tls = tokio_rustls::TlsConnector::from(zmesh_tls::control_client_config(
            credentials,
            self.control_plane.clone(),
            &TlsOptions::default(),
        ));
        let marked = self.marked;
        let connector = tower::service_fn(move |uri: http::Uri| {
            let tls = tls.clone();
            async move {
                let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
                let port = uri.port_u16().unwrap_or(15012);
                let address = crate::net::lookup(&host, port).await?[0];
                let stream = crate::net::connect(address, marked).await?;
                // The verifier checks the SPIFFE ID, not a host name; any valid name will do.
                let name = ServerName::try_from(host).unwrap_or_else(|_| ServerName::from(address.ip()));
                let stream = tls.connect(name, stream).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        self.endpoint.connect_with_connector(connector).await
    }
}
