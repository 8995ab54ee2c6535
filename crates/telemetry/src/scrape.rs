//! Reading Prometheus text back: a bounded GET of a metrics page and a parser for the text
//! exposition format. The control plane and `zmesh mtls-readiness` read what each proxy exports
//! on 15020 with it; a series they do not read cannot change what they conclude, so lines that
//! do not parse are skipped rather than refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// A label's value, empty when the series has no such label.
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// The samples of a Prometheus text page; comments and lines that do not parse are skipped.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            inner = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_owned(), labels, value })
}

/// GET `http://ADDR/stats/prometheus` and parse it, within `timeout` (connection included) and
/// refusing a page larger than `max_bytes`. The error says which address failed and how.
pub async fn scrape(addr: SocketAddr, timeout: Duration, max_bytes: usize) -> Result<Vec<Sample>, String> {
    let url = format!("http://{addr}/stats/prometheus");
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot reach {addr}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        // The connection task ends with the timeout's drop of `sender` at the latest.
        tokio::spawn(connection);
        let request = http::Request::get("/stats/prometheus")
            .header(http::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("{addr}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(response.into_body(), max_bytes))
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| format!("{url} is not UTF-8"))?;
        Ok(parse_prometheus(text))
    };
    tokio::time::timeout(timeout, fetch).await.unwrap_or_else(|_| Err(format!("{url}: no answer within {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_parses_with_escaped_label_values() {
        let page = "# HELP x y\n\
zmesh_plaintext_connections_total{destination_port=\"8080\",source_address=\"10.79.0.9\"} 3\n\
istio_requests_total{note=\"a\\\"b,c=\\\"d\\\\\",line=\"x\\ny\"} 2\n\
not a sample\n\
up 1\n";
        let samples = parse_prometheus(page);
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert_eq!(samples[0].label("source_address"), "10.79.0.9");
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].label("note"), "a\"b,c=\"d\\");
        assert_eq!(samples[1].label("line"), "x\ny");
        assert_eq!(samples[1].label("absent"), "");
        assert_eq!(samples[2].name, "up");
    }

    #[test]
    fn what_the_metrics_renderer_writes_parses_back_to_the_same_series() {
        let metrics = crate::metrics::Metrics::default();
        let labels =
            vec![("source_principal", "spiffe://td/ns/a/sa/\"b\"".to_owned()), ("decision", "deny".to_owned())];
        metrics.add("zmesh_authz_decisions_total", labels, 7);
        let samples = parse_prometheus(&metrics.render());
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].label("source_principal"), "spiffe://td/ns/a/sa/\"b\"");
        assert_eq!(samples[0].value, 7.0);
    }

    #[tokio::test]
    async fn a_scrape_of_an_address_that_never_answers_ends_in_an_error_within_its_timeout() {
        // A listener that accepts (in the kernel backlog) but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let started = std::time::Instant::now();
        let result = scrape(addr, Duration::from_millis(200), 1024).await;
        assert!(result.as_ref().is_err_and(|e| e.contains("no answer within")), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
