//! Envoy's HTTP ext_authz protocol: the check is a copy of the client's request head (same
//! method, `pathPrefix` + original path, Host, Content-Length, Authorization and the headers
//! the provider names) sent to the authorizer; 200 allows, 5xx is an error, anything else is
//! the denial to send the client.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use zmesh_config::mesh::{ExtAuthzHttp, HeaderPattern};

use super::{BodyPart, CheckError, CheckInput, Connect, PARTIAL_BODY_HEADER, Verdict, is_protected};

/// The largest authorizer response body kept (a denial page); more is not a decision.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Idle keep-alive connections kept per provider.
const MAX_IDLE: usize = 16;

/// The header an HTTP authorizer lists request headers to remove in (comma-separated), as
/// Envoy reads it on an allow.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Client headers every check carries besides Host and Content-Length, as Envoy sends them.
const ALWAYS_SENT: &[&str] = &["authorization"];

/// Headers a denial always passes to the client once the provider lists any (Envoy adds them to
/// the configured list).
const ALWAYS_ON_DENY: &[&str] = &["www-authenticate", "location"];

pub(crate) struct HttpClient {
    config: ExtAuthzHttp,
    connect: Arc<dyn Connect>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpClient {
    pub fn new(config: ExtAuthzHttp, connect: Arc<dyn Connect>) -> Self {
        HttpClient { config, connect, idle: Mutex::new(Vec::new()) }
    }

    pub async fn check(&self, input: &CheckInput<'_>, body: Option<&BodyPart<'_>>) -> Result<Verdict, CheckError> {
        // An idle connection, or a new one; a reused connection the authorizer closed in the
        // meantime gets one retry on a fresh connection.
        let reused = self.take_idle();
        let was_reused = reused.is_some();
        let sender = match reused {
            Some(sender) => sender,
            None => self.dial().await?,
        };
        let response = match self.exchange(sender, self.request(input, body)?).await {
            Err(CheckError::Transport(_)) if was_reused => {
                let sender = self.dial().await?;
                self.exchange(sender, self.request(input, body)?).await?
            }
            other => other?,
        };
        self.verdict(response)
    }

    /// The check request: the client's head as Envoy's HTTP service forwards it.
    fn request(
        &self,
        input: &CheckInput<'_>,
        body: Option<&BodyPart<'_>>,
    ) -> Result<http::Request<Full<Bytes>>, CheckError> {
        let config = &self.config;
        let path = format!("{}{}", config.path_prefix.as_deref().unwrap_or(""), input.path);
        let mut builder =
            http::Request::builder().method(input.method).uri(path).header(http::header::HOST, input.authority);
        for &(name, value) in input.headers {
            if name.starts_with(':')
                || name.eq_ignore_ascii_case("host")
                || name.eq_ignore_ascii_case("content-length")
                || config.include_additional_headers_in_check.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                continue;
            }
            let wanted = ALWAYS_SENT.iter().any(|always| name.eq_ignore_ascii_case(always))
                || HeaderPattern::any(&config.include_request_headers_in_check, name);
            if wanted && !is_protected(name) {
                builder = builder.header(name, value);
            }
        }
        for (name, value) in &config.include_additional_headers_in_check {
            builder = builder.header(name, value);
        }
        let payload = match body {
            Some(part) => {
                builder = builder.header(PARTIAL_BODY_HEADER, if part.partial { "true" } else { "false" });
                Bytes::copy_from_slice(part.bytes)
            }
            None => Bytes::new(),
        };
        builder = builder.header(http::header::CONTENT_LENGTH, payload.len());
        builder.body(Full::new(payload)).map_err(|error| CheckError::Request(error.to_string()))
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn dial(&self) -> Result<SendRequest<Full<Bytes>>, CheckError> {
        let io = self.connect.connect(&self.config.service, self.config.port).await.map_err(CheckError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|error| CheckError::Transport(error.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "external authorizer connection closed");
            }
        });
        Ok(sender)
    }

    async fn exchange(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(http::response::Parts, Bytes), CheckError> {
        sender.ready().await.map_err(|error| CheckError::Transport(error.to_string()))?;
        let response = sender.send_request(request).await.map_err(|error| CheckError::Transport(error.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|error| CheckError::Malformed(format!("response body: {error}")))?
            .to_bytes();
        if !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
        Ok((parts, body))
    }

    fn verdict(&self, (parts, body): (http::response::Parts, Bytes)) -> Result<Verdict, CheckError> {
        let status = parts.status.as_u16();
        if parts.status.is_server_error() {
            // Envoy counts an authorizer's 5xx as a failed check (statusOnError / failOpen).
            return Err(CheckError::ServerError(status));
        }
        let headers = response_headers(&parts.headers)?;
        let config = &self.config;
        if status == 200 {
            let pick = |patterns: &[HeaderPattern]| -> Vec<(String, String)> {
                headers
                    .iter()
                    .filter(|(name, _)| {
                        HeaderPattern::any(patterns, name) && !is_protected(name) && name != HEADERS_TO_REMOVE
                    })
                    .cloned()
                    .collect()
            };
            let upstream_remove = headers
                .iter()
                .filter(|(name, _)| name == HEADERS_TO_REMOVE)
                .flat_map(|(_, value)| value.split(','))
                .map(|name| name.trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty() && !is_protected(name))
                .collect();
            return Ok(Verdict::Allow {
                upstream_set: pick(&config.headers_to_upstream_on_allow),
                upstream_append: Vec::new(),
                upstream_remove,
                downstream_set: pick(&config.headers_to_downstream_on_allow),
                downstream_append: Vec::new(),
            });
        }
        let deny = &config.headers_to_downstream_on_deny;
        let headers = headers
            .into_iter()
            .filter(|(name, _)| {
                !is_protected(name)
                    && (deny.is_empty() || HeaderPattern::any(deny, name) || ALWAYS_ON_DENY.contains(&name.as_str()))
            })
            .collect();
        Ok(Verdict::Deny { status, headers, body })
    }
}

/// The response's headers as lower-case names and text values; a value that is not text is not
/// a decision we can pass on faithfully.
fn response_headers(headers: &http::HeaderMap) -> Result<Vec<(String, String)>, CheckError> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().map_err(|_| CheckError::Malformed(format!("header `{name}` is not text")))?;
            Ok((name.as_str().to_owned(), value.to_owned()))
        })
        .collect()
}
