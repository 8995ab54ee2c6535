//! Who still sends plaintext: every plaintext connection to an app port of this workload,
//! recorded per (source address, destination port) with a count and when it was first and last
//! seen, so that `zmesh mtls-readiness` can tell whether switching the workload to STRICT would
//! break someone.
//!
//! The store is bounded, because its rows become metric series and any host can open
//! connections: at most [`MAX_SOURCES`] source addresses get rows of their own; connections from
//! further sources are counted in an `other` row of their port. Destination ports are bounded the
//! same way ([`MAX_PORTS`], then port `other`), since plaintext may arrive on any port the
//! workload does not reserve. Time is a parameter, so tests need no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::SystemTime;

/// Source addresses with rows of their own, per proxy.
pub const MAX_SOURCES: usize = 1024;
/// Destination ports with rows of their own, per proxy.
pub const MAX_PORTS: usize = 64;

/// The sender of a plaintext connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A source address, with the mesh workload (`namespace/name`) the registry knew at that
    /// address when it was first seen.
    Address { address: IpAddr, workload: Option<String> },
    /// Every source beyond [`MAX_SOURCES`].
    Other,
}

/// A destination port, or every port beyond [`MAX_PORTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    Number(u16),
    Other,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Port::Number(port) => write!(f, "{port}"),
            Port::Other => f.write_str("other"),
        }
    }
}

/// What was seen from one source on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub count: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

/// The row a connection was counted in, and that row after counting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub source: Source,
    pub port: Port,
    pub row: Row,
}

impl Recorded {
    /// The labels of this row's series: `destination_port`, `source_workload` (`unknown` when
    /// the address is no mesh workload's, `other` beyond the bound) and `source_address`.
    pub fn labels(&self) -> crate::metrics::Labels {
        let (workload, address) = match &self.source {
            Source::Address { address, workload } => {
                (workload.clone().unwrap_or_else(|| "unknown".to_owned()), address.to_string())
            }
            Source::Other => ("other".to_owned(), "other".to_owned()),
        };
        vec![("destination_port", self.port.to_string()), ("source_workload", workload), ("source_address", address)]
    }
}

#[derive(Debug, Default)]
struct Rows {
    rows: BTreeMap<(Port, Source), Row>,
    /// The source addresses that have rows, with the workload first resolved for each.
    sources: BTreeMap<IpAddr, Option<String>>,
    ports: BTreeSet<u16>,
}

/// The plaintext connections one proxy has seen.
#[derive(Debug)]
pub struct PlaintextObservations {
    max_sources: usize,
    max_ports: usize,
    rows: Mutex<Rows>,
}

impl Default for PlaintextObservations {
    fn default() -> Self {
        PlaintextObservations::with_limits(MAX_SOURCES, MAX_PORTS)
    }
}

impl PlaintextObservations {
    /// A store that gives rows of their own to at most `max_sources` addresses and
    /// `max_ports` ports.
    pub fn with_limits(max_sources: usize, max_ports: usize) -> PlaintextObservations {
        PlaintextObservations { max_sources, max_ports, rows: Mutex::new(Rows::default()) }
    }

    /// Count one plaintext connection from `address` (the mesh workload `workload` when the
    /// registry knows the address) to `port`, seen at `now`.
    pub fn record(&self, address: IpAddr, workload: Option<&str>, port: u16, now: SystemTime) -> Recorded {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let Rows { rows, sources, ports } = &mut *rows;
        let port = if ports.contains(&port) || ports.len() < self.max_ports {
            ports.insert(port);
            Port::Number(port)
        } else {
            Port::Other
        };
        // A source keeps the workload it was first seen as, so its series never splits.
        let source = match sources.get(&address) {
            Some(known) => Source::Address { address, workload: known.clone() },
            None if sources.len() < self.max_sources => {
                sources.insert(address, workload.map(str::to_owned));
                Source::Address { address, workload: workload.map(str::to_owned) }
            }
            None => Source::Other,
        };
        let row = rows
            .entry((port, source.clone()))
            .and_modify(|row| {
                row.count += 1;
                row.last_seen = row.last_seen.max(now);
            })
            .or_insert(Row { count: 1, first_seen: now, last_seen: now });
        Recorded { source, port, row: *row }
    }

    /// Every row, by port then source.
    pub fn rows(&self) -> Vec<Recorded> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.rows
            .iter()
            .map(|((port, source), row)| Recorded { source: source.clone(), port: *port, row: *row })
            .collect()
    }
}

/// Seconds since the Unix epoch, as the `*_seconds` gauges carry time (0 before the epoch).
pub fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn connections_from_one_source_to_one_port_are_counted_with_first_and_last_seen() {
        let store = PlaintextObservations::default();
        store.record(ip(7), Some("shop/legacy"), 8080, at(10));
        store.record(ip(7), Some("shop/legacy"), 8080, at(25));
        let last = store.record(ip(7), Some("shop/legacy"), 8080, at(20));
        assert_eq!(last.row, Row { count: 3, first_seen: at(10), last_seen: at(25) }, "last seen never goes back");
        assert_eq!(
            last.labels(),
            vec![
                ("destination_port", "8080".to_owned()),
                ("source_workload", "shop/legacy".to_owned()),
                ("source_address", "10.0.0.7".to_owned()),
            ]
        );
        store.record(ip(7), Some("shop/legacy"), 9090, at(30));
        store.record(ip(8), None, 8080, at(31));
        let rows = store.rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].labels()[1].1, "unknown", "an address no workload has is named by its address only");
    }

    #[test]
    fn sources_beyond_the_bound_are_counted_in_one_other_row_per_port() {
        let store = PlaintextObservations::with_limits(3, 64);
        for last in 1..=3 {
            store.record(ip(last), None, 8080, at(1));
        }
        let beyond: Vec<Recorded> =
            (4..=10).map(|last| store.record(ip(last), None, 8080, at(u64::from(last)))).collect();
        assert!(beyond.iter().all(|r| r.source == Source::Other));
        assert_eq!(beyond.last().map(|r| r.row), Some(Row { count: 7, first_seen: at(4), last_seen: at(10) }));
        assert_eq!(
            beyond[0].labels()[1..],
            [("source_workload", "other".to_owned()), ("source_address", "other".to_owned())]
        );
        // A source that already has its row keeps it after the bound is reached.
        assert_eq!(store.record(ip(2), None, 8080, at(11)).source, Source::Address { address: ip(2), workload: None });
        assert_eq!(store.rows().len(), 4);
    }

    #[test]
    fn the_default_bound_is_a_thousand_and_twenty_four_sources() {
        let store = PlaintextObservations::default();
        for n in 0..(MAX_SOURCES as u32 + 100) {
            store.record(IpAddr::from((0x0a00_0000 + n).to_be_bytes()), None, 8080, at(1));
        }
        let rows = store.rows();
        assert_eq!(rows.len(), MAX_SOURCES + 1);
        let other = rows.iter().find(|r| r.source == Source::Other).expect("an other row");
        assert_eq!(other.row.count, 100);
    }

    #[test]
    fn ports_beyond_the_bound_are_counted_as_port_other() {
        let store = PlaintextObservations::with_limits(1024, 2);
        store.record(ip(1), None, 80, at(1));
        store.record(ip(1), None, 81, at(1));
        let third = store.record(ip(1), None, 82, at(1));
        assert_eq!(third.port, Port::Other);
        assert_eq!(third.labels()[0], ("destination_port", "other".to_owned()));
        assert_eq!(store.record(ip(1), None, 83, at(2)).row.count, 2);
        assert_eq!(store.record(ip(1), None, 80, at(2)).port, Port::Number(80));
    }

    #[test]
    fn a_source_keeps_the_workload_it_was_first_seen_as() {
        let store = PlaintextObservations::default();
        store.record(ip(5), Some("shop/a"), 8080, at(1));
        let later = store.record(ip(5), Some("shop/b"), 8080, at(2));
        assert_eq!(later.source, Source::Address { address: ip(5), workload: Some("shop/a".to_owned()) });
        assert_eq!(later.row.count, 2);
    }

    #[test]
    fn unix_seconds_counts_from_the_epoch() {
        assert_eq!(unix_seconds(at(5)), 1_700_000_005);
        assert_eq!(unix_seconds(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
