//! Flow control: bulk transfers through HBONE tunnels complete without stalling, alone and
//! side by side on one connection, and memory stays bounded by the HTTP/2 windows rather than
//! growing with the bytes transferred.

mod hbone_support;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use zmesh_proxy::hbone::{ServerLimits, Tunnel};

use hbone_support::{Pki, Recorder, client, echo_target, expect, start_server};

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A position-dependent byte, so that lost, repeated or reordered data is caught, not only a
/// wrong count.
fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

async fn send_pattern(mut writer: impl AsyncWrite + Unpin, len: u64) {
    let mut chunk = vec![0; CHUNK];
    let mut sent = 0;
    while sent < len {
        let size = CHUNK.min(usize::try_from(len - sent).unwrap_or(CHUNK));
        for (index, byte) in chunk[..size].iter_mut().enumerate() {
            *byte = pattern(sent + index as u64);
        }
        writer.write_all(&chunk[..size]).await.expect("the tunnel takes writes");
        sent += size as u64;
    }
    writer.shutdown().await.expect("the tunnel closes its sending side");
}

/// Reads to EOF, checking every byte; returns how many arrived.
async fn receive_pattern(mut reader: impl AsyncRead + Unpin) -> u64 {
    let mut chunk = vec![0; CHUNK];
    let mut received = 0;
    loop {
        let size = reader.read(&mut chunk).await.expect("the tunnel delivers reads");
        if size == 0 {
            return received;
        }
        for (index, byte) in chunk[..size].iter().enumerate() {
            assert_eq!(*byte, pattern(received + index as u64), "byte {} differs", received + index as u64);
        }
        received += size as u64;
    }
}

/// `len` bytes up to the echo target and the same `len` back down, concurrently.
async fn echo_through(tunnel: Tunnel, len: u64) {
    let (reader, writer) = tokio::io::split(tunnel);
    let ((), received) = tokio::join!(send_pattern(writer, len), receive_pattern(reader));
    assert_eq!(received, len);
}

/// The process's peak resident memory, from /proc (Linux).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    let kib = line.split_whitespace().nth(1).and_then(|kib| kib.parse::<u64>().ok());
    kib.expect("VmHWM: <n> kB") / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_cross_one_tunnel_each_way_without_stalling() {
    let pki = Pki::new("hbone-bulk");
    let target = echo_target().await;
    let server = start_server(pki.store("server"), Arc::new(Recorder::default()), ServerLimits::default()).await;
    let tunnel = client(pki.store("client")).connect(server.addr, expect("server"), target).await.unwrap();

    tokio::time::timeout(Duration::from_secs(120), echo_through(tunnel, 64 * MIB)).await.expect("no stall");

    // Everything in flight is bounded by a few windows (4 MiB per stream, 16 MiB per
    // connection, each way) no matter how much crosses; buffering a whole direction would
    // take 64 MiB on its own. The bound leaves room for the other test in this binary.
    let peak = peak_rss_mib();
    assert!(peak < 160, "peak RSS {peak} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_bulk_tunnels_on_one_connection_all_complete() {
    let pki = Pki::new("hbone-bulk-concurrent");
    let target = echo_target().await;
    let handler = Arc::new(Recorder::default());
    let server = start_server(pki.store("server"), Arc::clone(&handler), ServerLimits::default()).await;
    let client = client(pki.store("client"));

    let mut transfers = Vec::new();
    for _ in 0..8 {
        let tunnel = client.connect(server.addr, expect("server"), target).await.unwrap();
        transfers.push(tokio::spawn(echo_through(tunnel, 16 * MIB)));
    }
    let all = async {
        for transfer in transfers {
            transfer.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all).await.expect("no tunnel stalls");

    assert_eq!(handler.connections(), 1, "all eight shared one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stops_reading_holds_back_its_sender_but_not_the_other_tunnels() {
    let pki = Pki::new("hbone-backpressure");
    let stalled_target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_addr = stalled_target.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new(); // accepted and never read
        while let Ok((stream, _)) = stalled_target.accept().await {
            held.push(stream);
        }
    });
    let echo = echo_target().await;
    let handler = Arc::new(Recorder::default());
    let server = start_server(pki.store("server"), Arc::clone(&handler), ServerLimits::default()).await;
    let client = client(pki.store("client"));
    let mut stalled = client.connect(server.addr, expect("server"), stalled_addr).await.unwrap();

    let chunk = vec![0; CHUNK];
    let mut accepted = 0;
    while accepted < 64 * MIB {
        match tokio::time::timeout(Duration::from_millis(500), stalled.write_all(&chunk)).await {
            Ok(written) => written.unwrap(),
            Err(_) => break, // the writer is blocked: backpressure reached the app
        }
        accepted += CHUNK as u64;
    }
    // The stream window (4 MiB) plus the socket buffers toward the target; an unbounded queue
    // anywhere on the way would take all 64 MiB.
    assert!(accepted < 32 * MIB, "{} MiB were taken from a sender whose target reads nothing", accepted / MIB);

    let mut other = client.connect(server.addr, expect("server"), echo).await.unwrap();
    assert_eq!(hbone_support::round_trip(&mut other, b"still flowing").await, b"still flowing");
    assert_eq!(handler.connections(), 1, "the stalled and the flowing tunnel share a connection");
}
