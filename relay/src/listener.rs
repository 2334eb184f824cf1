//! The listen socket, bound as the original relay binds it.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds the listen socket. The unspecified IPv6 address is bound dual-stack (IPV6_V6ONLY
/// off, whatever the host's default), so IPv4 clients reach it too; on a host without IPv6 it
/// falls back to the IPv4 unspecified address on the same port, with a log line.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match bind_socket(addr) {
        Err(e) if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED && ipv6_unavailable(&e) => {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(%addr, fallback = %v4, error = %e, "IPv6 unavailable on this host; listening on IPv4 only");
            bind_socket(v4)
        }
        other => other,
    }
}

fn ipv6_unavailable(e: &std::io::Error) -> bool {
    // EAFNOSUPPORT (no IPv6 in the kernel) or EADDRNOTAVAIL (IPv6 disabled).
    matches!(e.raw_os_error(), Some(97 | 99)) || e.kind() == std::io::ErrorKind::AddrNotAvailable
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
