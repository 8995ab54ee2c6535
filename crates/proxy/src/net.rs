//! Socket details of transparent capture: the original destination of a redirected
//! connection, and marking the proxy's own connections so capture lets them pass.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpStream;

use crate::capture::PROXY_MARK;

/// Where a connection redirected by iptables was going (`SO_ORIGINAL_DST`). For a connection
/// that was not redirected this is its own local address.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let original = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    original
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the original destination is not an IP address"))
}

/// Connect to `target` with the proxy's mark when `marked`, so capture does not send the
/// connection back into the proxy. Setting a mark needs CAP_NET_ADMIN; without capture
/// (explicit mode) no mark is needed, so a refusal is only an error when `marked` is set.
pub async fn connect(target: SocketAddr, marked: bool) -> io::Result<TcpStream> {
    let stream = if marked {
        let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_mark(PROXY_MARK)?;
        socket.set_nonblocking(true)?;
        tokio::net::TcpSocket::from_std_stream(socket.into()).connect(target).await?
    } else {
        TcpStream::connect(target).await?
    };
    // Requests and responses are written whole; Nagle would hold back their tails for a
    // delayed ACK.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// DNS for a name the proxy connects to (the control plane, a DNS ServiceEntry's host, any host
/// under ALLOW_ANY); getaddrinfo may otherwise retry for long.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The addresses DNS gives `host`, each with `port`; never an empty list.
pub(crate) async fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use std::io::{Error, ErrorKind};
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addresses)) => {
            let addresses: Vec<SocketAddr> = addresses.collect();
            if addresses.is_empty() { Err(Error::new(ErrorKind::NotFound, "no addresses")) } else { Ok(addresses) }
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(Error::new(ErrorKind::TimedOut, format!("no answer within {LOOKUP_TIMEOUT:?}"))),
    }
}
