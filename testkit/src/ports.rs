//! Free loopback ports for the servers tests start (relays, redis-server, test chains).

use std::net::SocketAddr;

/// A loopback address with a port that was free a moment ago.
///
/// Ports come from below the kernel's ephemeral range (32768 and up on Linux), walked from a
/// per-process offset: a port the kernel hands out for `bind(0)` is also what it hands out as
/// the source port of outgoing connections, so between our check and the server's bind a
/// test's own client connections could take it ("Address already in use").
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 12_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id().wrapping_mul(2_654_435_761)) % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let Ok(port) = u16::try_from(FIRST + offset) else {
            continue;
        };
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            if let Ok(addr) = listener.local_addr() {
                return addr;
            }
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN)
}
