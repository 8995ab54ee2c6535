//! The security dashboard (`/dashboard` on 15014): one server-rendered HTML page, no script and
//! no outside resource, refreshed by the browser every 5 s. It shows where every proxy stands
//! (sync state and version), mTLS coverage (workloads with a connected proxy, the readiness
//! verdict for STRICT, who still sends plaintext, what a STRICT dry-run would refuse), what the
//! proxies denied, who talks to whom, and when certificates expire.
//!
//! Rendering is pure: `status` gathers a [`Page`] from the tracker, the registry, the CA and
//! the latest observations; [`render`] turns it into HTML. Every value the mesh reports (names,
//! labels, errors — a caller's principal or a NACK message can hold anything) is escaped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use zmesh_ca::Rfc3339;

use crate::observe::{Denial, Edge, Verdict, WorkloadReport, unix_seconds};

/// A root is flagged this long before it expires: a staged rotation takes a while to reach every
/// proxy.
pub const ROOT_WARNING: Duration = Duration::from_secs(90 * 24 * 3600);

/// Everything the page shows, gathered at one moment.
#[derive(Debug, Clone)]
pub struct Page {
    pub now: SystemTime,
    /// How far back plaintext counts for the readiness verdicts.
    pub window: Duration,
    pub version: String,
    pub generation: u64,
    pub proxies: Vec<ProxyRow>,
    pub workloads: Vec<WorkloadRow>,
    pub certificates: Vec<CertRow>,
    pub roots: Vec<CertRow>,
    /// When the latest round of scrapes finished; `None` before the first.
    pub observed_at: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct ProxyRow {
    pub proxy_id: String,
    pub workload: String,
    pub connected: bool,
    /// SYNCED, STALE or NACKED.
    pub state: String,
    pub version_acked: Option<String>,
    pub lag_ms: u64,
    pub build_version: String,
    pub nack: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WorkloadRow {
    /// `namespace/name`.
    pub key: String,
    pub address: String,
    pub identity: String,
    /// Proxies serving it that are connected to the control plane now.
    pub connected_proxies: usize,
    pub readiness: WorkloadReport,
    /// What its proxy refused (as the destination), empty when it was not read.
    pub denials: Vec<Denial>,
    /// Dry-run AuthorizationPolicy results that differ from the enforced ones: (policy, shadow
    /// result) → requests.
    pub dry_run_authz: BTreeMap<(String, String), u64>,
    /// Its callers, as its proxy counted them.
    pub callers: Vec<Edge>,
    /// Whether its proxy's metrics were read in the latest round.
    pub scraped: bool,
    /// The certificates its proxy holds (identity, not after), as read.
    pub held_certificates: Vec<(String, SystemTime)>,
}

#[derive(Debug, Clone)]
pub struct CertRow {
    /// SPIFFE ID of an SVID, or a root's subject.
    pub name: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// How close a certificate is to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Fine,
    /// An SVID past its renewal point (proxies renew at half of the lifetime, ±10 %): the
    /// latest certificate of this identity should have been replaced; a root within
    /// [`ROOT_WARNING`] of its end.
    Soon,
    Expired,
}

/// An SVID is flagged once less than 40 % of its lifetime remains: past the renewal point at
/// half of it and its jitter, a proxy that is still running should have renewed.
pub fn svid_expiry(cert: &CertRow, now: SystemTime) -> Expiry {
    if now >= cert.not_after {
        return Expiry::Expired;
    }
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap_or_default();
    let remaining = cert.not_after.duration_since(now).unwrap_or_default();
    if remaining < lifetime.mul_f64(0.4) { Expiry::Soon } else { Expiry::Fine }
}

pub fn root_expiry(cert: &CertRow, now: SystemTime) -> Expiry {
    match cert.not_after.duration_since(now) {
        Err(_) | Ok(Duration::ZERO) => Expiry::Expired,
        Ok(remaining) if remaining < ROOT_WARNING => Expiry::Soon,
        Ok(_) => Expiry::Fine,
    }
}

/// `text` safe inside HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `3d 4h`, `5h 12m`, `7m 3s`, `42s`; negative spans read as `… ago`.
pub fn span(seconds: i64) -> String {
    if seconds < 0 {
        return format!("{} ago", span(seconds.saturating_neg()));
    }
    let (d, h, m, s) = (seconds / 86_400, seconds % 86_400 / 3600, seconds % 3600 / 60, seconds % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.3em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.tiles{display:flex;gap:1em;flex-wrap:wrap}.tile{border:1px solid #ccc;border-radius:4px;padding:.5em 1em}\
.tile b{display:block;font-size:1.4em}.ok{color:#11651f}.bad{color:#a4161a;font-weight:bold}.warn{color:#8a5a00;font-weight:bold}\
.muted{color:#666}.note{color:#555;font-size:.92em}code{font-size:.95em}";

fn class_of_state(state: &str) -> &'static str {
    match state {
        "SYNCED" => "ok",
        "NACKED" => "bad",
        _ => "warn",
    }
}

fn class_of_verdict(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Safe => "ok",
        Verdict::Unsafe => "bad",
        Verdict::Unknown(_) => "warn",
    }
}

fn expiry_cell(expiry: Expiry, seconds: i64) -> String {
    match expiry {
        Expiry::Fine => format!("<td class=\"ok\">in {}</td>", span(seconds)),
        Expiry::Soon => format!("<td class=\"warn\">SOON: in {}</td>", span(seconds)),
        Expiry::Expired => format!("<td class=\"bad\">EXPIRED {}</td>", span(seconds)),
    }
}

fn time(at: SystemTime) -> String {
    Rfc3339(at).to_string()
}

/// The whole page.
pub fn render(page: &Page) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let now = page.now;
    let now_s = unix_seconds(now);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"5\"><title>zmesh security dashboard</title>\
<style>{STYLE}</style></head><body>\n<h1>zmesh security dashboard</h1>\n<p class=\"muted\">Configuration version <code>{}</code> (generation {}) · page built {} · ",
        escape(&page.version),
        page.generation,
        time(now)
    );
    match page.observed_at {
        Some(at) => {
            let _ = write!(out, "proxies last read {} ({} before this page)", time(at), span(now_s - unix_seconds(at)));
        }
        None => {
            out.push_str("<span class=\"warn\">proxies not read yet: readiness is UNKNOWN until the first round</span>")
        }
    }
    out.push_str(" · refreshes every 5 s</p>\n");
    tiles(page, &mut out);
    proxies(page, &mut out);
    coverage(page, &mut out);
    denials(page, &mut out);
    traffic(page, &mut out);
    certificates(page, &mut out);
    out.push_str("</body></html>\n");
    out
}

fn tiles(page: &Page, out: &mut String) {
    let synced = page.proxies.iter().filter(|p| p.connected && p.state == "SYNCED").count();
    let connected = page.proxies.iter().filter(|p| p.connected).count();
    let covered = page.workloads.iter().filter(|w| w.connected_proxies > 0).count();
    let count = |label: &str| page.workloads.iter().filter(|w| w.readiness.verdict.label() == label).count();
    let denied: u64 = page.workloads.iter().flat_map(|w| &w.denials).map(|d| d.count).sum();
    let dry_run: u64 = page.workloads.iter().map(|w| w.readiness.dry_run_refusals().values().sum::<u64>()).sum();
    let flagged = page.certificates.iter().filter(|c| svid_expiry(c, page.now) != Expiry::Fine).count()
        + page.roots.iter().filter(|c| root_expiry(c, page.now) != Expiry::Fine).count();
    let tile = |out: &mut String, class: &str, value: String, label: &str| {
        let _ = write!(out, "<div class=\"tile\"><b class=\"{class}\">{value}</b>{label}</div>");
    };
    out.push_str("<div class=\"tiles\">");
    tile(
        out,
        if synced == connected { "ok" } else { "warn" },
        format!("{synced}/{connected}"),
        "connected proxies SYNCED",
    );
    tile(
        out,
        if covered == page.workloads.len() { "ok" } else { "warn" },
        format!("{covered}/{}", page.workloads.len()),
        "workloads with a connected proxy",
    );
    tile(out, "ok", count("SAFE").to_string(), "SAFE for STRICT");
    tile(out, if count("UNSAFE") > 0 { "bad" } else { "ok" }, count("UNSAFE").to_string(), "UNSAFE for STRICT");
    tile(out, if count("UNKNOWN") > 0 { "warn" } else { "ok" }, count("UNKNOWN").to_string(), "readiness UNKNOWN");
    tile(out, if dry_run > 0 { "warn" } else { "ok" }, dry_run.to_string(), "STRICT dry-run would-be refusals");
    tile(out, if denied > 0 { "warn" } else { "ok" }, denied.to_string(), "denials counted");
    tile(out, if flagged > 0 { "bad" } else { "ok" }, flagged.to_string(), "certificates expiring or expired");
    out.push_str("</div>\n");
}

fn proxies(page: &Page, out: &mut String) {
    out.push_str("<h2 id=\"proxies\">Proxies</h2>\n");
    if page.proxies.is_empty() {
        out.push_str("<p class=\"warn\">No proxy has connected.</p>\n");
        return;
    }
    out.push_str("<table><tr><th>Proxy</th><th>Workload</th><th>Connected</th><th>State</th><th>Version acknowledged</th><th>Lag</th><th>Build</th><th>Last refusal (NACK)</th></tr>\n");
    for p in &page.proxies {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td><td><code>{}</code></td><td>{} ms</td><td>{}</td><td>{}</td></tr>",
            escape(&p.proxy_id),
            escape(&p.workload),
            if p.connected { "ok" } else { "warn" },
            if p.connected { "yes" } else { "no (left)" },
            class_of_state(&p.state),
            escape(&p.state),
            escape(p.version_acked.as_deref().unwrap_or("none")),
            p.lag_ms,
            escape(&p.build_version),
            escape(p.nack.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>\n");
}

fn coverage(page: &Page, out: &mut String) {
    let now_s = unix_seconds(page.now);
    let _ = writeln!(
        out,
        "<h2 id=\"mtls\">mTLS coverage and readiness for STRICT</h2>\n<p class=\"note\">Plaintext counts are since each proxy started; a source counts when it was last seen within the last {}. The STRICT dry-run column is what a PeerAuthentication marked <code>istio.io/dry-run</code> would have refused (not enforced). Also as JSON: <code>/api/v1/mtls?window=1h</code>.</p>",
        span(i64::try_from(page.window.as_secs()).unwrap_or(i64::MAX))
    );
    if page.workloads.is_empty() {
        out.push_str("<p class=\"muted\">The registry holds no workload.</p>\n");
        return;
    }
    out.push_str("<table><tr><th>Workload</th><th>Address</th><th>Proxy</th><th>Verdict</th><th>Plaintext sources (port: source, connections, last seen)</th><th>STRICT dry-run would refuse</th></tr>\n");
    for w in &page.workloads {
        let r = &w.readiness;
        let mut sources = String::new();
        for (port, p) in &r.ports {
            for s in &p.sources {
                let _ = write!(
                    sources,
                    "{}: {}, {} connection(s), {}<br>",
                    escape(port),
                    escape(&s.who()),
                    s.connections,
                    span(s.last_seen - now_s)
                );
            }
            if p.older > 0 {
                let _ = write!(
                    sources,
                    "<span class=\"muted\">{}: {} source(s) only before the window</span><br>",
                    escape(port),
                    p.older
                );
            }
        }
        let mut dry = String::new();
        for (policy, count) in r.dry_run_refusals() {
            let _ = write!(dry, "<span class=\"warn\">{}: {count} connection(s)</span><br>", escape(&policy));
        }
        let verdict = match &r.verdict {
            Verdict::Unknown(why) => format!("UNKNOWN<br><span class=\"note\">{}</span>", escape(why)),
            other => other.label().to_owned(),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&w.key),
            escape(&w.address),
            if w.connected_proxies > 0 { "ok" } else { "bad" },
            if w.connected_proxies > 0 { "connected".to_owned() } else { "none: no mTLS".to_owned() },
            class_of_verdict(&r.verdict),
            verdict,
            if sources.is_empty() { "<span class=\"muted\">none seen</span>".to_owned() } else { sources },
            if dry.is_empty() { "<span class=\"muted\">none</span>".to_owned() } else { dry },
        );
    }
    out.push_str("</table>\n");
}

fn denials(page: &Page, out: &mut String) {
    out.push_str("<h2 id=\"denials\">Denials</h2>\n<p class=\"note\">Counted by each destination's proxy since it started. The proxies' counters name the caller but not the deciding policy and rule of an enforced denial (those are in the proxy's log lines; <code>zmesh authz explain LINE</code>); HTTP/2 (h2c, gRPC) requests are not counted yet.</p>\n");
    let rows: Vec<(&WorkloadRow, &Denial)> =
        page.workloads.iter().flat_map(|w| w.denials.iter().map(move |d| (w, d))).collect();
    let dry: Vec<(&WorkloadRow, &(String, String), &u64)> =
        page.workloads.iter().flat_map(|w| w.dry_run_authz.iter().map(move |(k, v)| (w, k, v))).collect();
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">No denial counted by the proxies read.</p>\n");
    } else {
        out.push_str("<table><tr><th>Destination</th><th>What</th><th>Source</th><th>Policy</th><th>Rule</th><th>Detail</th><th>Count</th></tr>\n");
        for (w, d) in rows {
            let or_missing = |text: &str| {
                if text.is_empty() { "<span class=\"muted\">not exported</span>".to_owned() } else { escape(text) }
            };
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&w.key),
                d.kind.describe(),
                or_missing(&d.source),
                or_missing(&d.policy),
                or_missing(&d.rule),
                escape(&d.detail),
                d.count
            );
        }
        out.push_str("</table>\n");
    }
    if !dry.is_empty() {
        out.push_str("<p>Dry-run AuthorizationPolicies (not enforced) that would change a decision:</p>\n<table><tr><th>Destination</th><th>Policy</th><th>Would</th><th>Requests</th></tr>\n");
        for (w, (policy, result), count) in dry {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{count}</td></tr>",
                escape(&w.key),
                escape(policy),
                escape(result)
            );
        }
        out.push_str("</table>\n");
    }
}

fn traffic(page: &Page, out: &mut String) {
    out.push_str("<h2 id=\"traffic\">Traffic between workloads</h2>\n<p class=\"note\">Inbound, as each destination's proxy counted it: HTTP/1.1 requests and L4-authorized TCP connections, by the caller's SPIFFE ID (<code>unknown</code>: plaintext).</p>\n");
    let identities: BTreeMap<&str, Vec<&str>> = page.workloads.iter().fold(BTreeMap::new(), |mut map, w| {
        map.entry(w.identity.as_str()).or_insert_with(Vec::new).push(w.key.as_str());
        map
    });
    let rows: Vec<(&WorkloadRow, &Edge)> =
        page.workloads.iter().flat_map(|w| w.callers.iter().map(move |e| (w, e))).collect();
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">No traffic counted by the proxies read.</p>\n");
        return;
    }
    out.push_str("<table><tr><th>Source</th><th>Source workload(s)</th><th>Destination</th><th>Security</th><th>Requests</th><th>TCP connections</th></tr>\n");
    for (w, e) in rows {
        let workloads = identities.get(e.source.as_str()).map(|k| k.join(", ")).unwrap_or_default();
        let (class, security) = match e.security.as_str() {
            "mutual_tls" => ("ok", "mTLS"),
            "none" => ("bad", "plaintext"),
            _ => ("warn", "unknown"),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{security}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.source),
            escape(&workloads),
            escape(&w.key),
            e.requests,
            e.connections
        );
    }
    out.push_str("</table>\n");
}

fn certificates(page: &Page, out: &mut String) {
    let now_s = unix_seconds(page.now);
    out.push_str("<h2 id=\"certificates\">Certificates</h2>\n<p class=\"note\">The latest SVID issued per identity since the control plane started (SOON: less than 40 % of its lifetime left, past the point where its proxy renews), and the roots of the trust bundle (SOON: within 90 days).</p>\n");
    if page.certificates.is_empty() {
        out.push_str("<p class=\"muted\">No SVID issued since the control plane started.</p>\n");
    } else {
        out.push_str("<table><tr><th>Identity</th><th>Serial</th><th>Not after</th><th>Expires</th></tr>\n");
        for c in &page.certificates {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td>{}</tr>",
                escape(&c.name),
                escape(&c.serial),
                time(c.not_after),
                expiry_cell(svid_expiry(c, page.now), unix_seconds(c.not_after) - now_s)
            );
        }
        out.push_str("</table>\n");
    }
    let held: Vec<(&WorkloadRow, &(String, SystemTime))> =
        page.workloads.iter().flat_map(|w| w.held_certificates.iter().map(move |h| (w, h))).collect();
    if !held.is_empty() {
        out.push_str("<p>Held by the proxies, as last read (flagged against the lifetime of the latest SVID issued to the identity, when known):</p>\n<table><tr><th>Workload</th><th>Identity</th><th>Not after</th><th>Expires</th></tr>\n");
        for (w, (identity, not_after)) in held {
            let issued = page.certificates.iter().find(|c| &c.name == identity);
            let expiry = match issued {
                Some(c) => svid_expiry(&CertRow { not_after: *not_after, ..c.clone() }, page.now),
                None if page.now >= *not_after => Expiry::Expired,
                None => Expiry::Fine,
            };
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
                escape(&w.key),
                escape(identity),
                time(*not_after),
                expiry_cell(expiry, unix_seconds(*not_after) - now_s)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("<table><tr><th>Root</th><th>Serial</th><th>Not after</th><th>Expires</th></tr>\n");
    for c in &page.roots {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td>{}</tr>",
            escape(&c.name),
            escape(&c.serial),
            time(c.not_after),
            expiry_cell(root_expiry(c, page.now), unix_seconds(c.not_after) - now_s)
        );
    }
    out.push_str("</table>\n");
}

#[cfg(test)]
mod tests;
