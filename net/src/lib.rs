//! Socket facts the relay needs and no safe library offers: how many of the bytes written to a
//! TCP connection the peer's TCP has acknowledged (Linux `SIOCOUTQ`), and quick ACKs.
//!
//! [`track`] splits a tokio `TcpStream` into a [`TrackedStream`] (what the websocket reads and
//! writes) and an [`AckProbe`] (what the session asks). The stream counts the bytes it hands to
//! the kernel; the probe subtracts what the kernel still holds, unsent or unacknowledged. The
//! difference is what the peer's TCP acknowledged: it is in the peer's receive buffer.
//!
//! The stream also gathers writes: frames written between two flushes leave in one `write`
//! call (one TCP segment when they fit), not one call per frame.
// The workspace denies unsafe code; this crate is the one place that needs it: three libc
// calls (ioctl TIOCOUTQ, setsockopt TCP_QUICKACK, shutdown) on a descriptor the stream owns.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Writes up to this size are gathered until the next flush; larger ones go straight out.
const GATHER_LIMIT: usize = 64 * 1024;

/// A gather buffer larger than this is released after a flush, so idle sessions hold none.
const RETAINED_BUFFER: usize = 8 * 1024;

/// Wraps `tcp` for the websocket and for delivery confirmation.
pub fn track(tcp: TcpStream) -> (TrackedStream, AckProbe) {
    let tcp = Arc::new(tcp);
    let written = Arc::new(AtomicU64::new(0));
    let stream = TrackedStream {
        tcp: tcp.clone(),
        written: written.clone(),
        gathered: Vec::new(),
    };
    (stream, AckProbe { tcp, written })
}

/// The connection as the websocket sees it: reads and writes, counting written bytes.
pub struct TrackedStream {
    tcp: Arc<TcpStream>,
    written: Arc<AtomicU64>,
    gathered: Vec<u8>,
}

/// Asks the kernel about a [`TrackedStream`]'s connection.
#[derive(Clone)]
pub struct AckProbe {
    tcp: Arc<TcpStream>,
    written: Arc<AtomicU64>,
}

impl AckProbe {
    /// Bytes handed to the kernel so far (counted from [`track`]).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Bytes of [`AckProbe::written`] the peer's TCP has acknowledged. Conservative: the count
    /// is read before the queue, so a write in between only makes it smaller; bytes written
    /// before [`track`] and still queued make it smaller too. `Unsupported` where the kernel
    /// cannot tell (not Linux).
    pub fn acknowledged(&self) -> io::Result<u64> {
        let written = self.written();
        let queued = send_queue(&self.tcp)?;
        Ok(written.saturating_sub(queued))
    }

    /// Asks the kernel to acknowledge what it received at once rather than delaying the ACK
    /// (Linux `TCP_QUICKACK`; the kernel clears it again by itself, so it is set after reads).
    pub fn quick_ack(&self) -> io::Result<()> {
        quick_ack(&self.tcp)
    }
}

/// Bytes in the socket's send queue: not sent yet, or sent and not acknowledged.
#[cfg(target_os = "linux")]
fn send_queue(tcp: &TcpStream) -> io::Result<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for sockets) writes one int through the pointer, which
    // points at a live local; the descriptor is open for as long as `tcp` is borrowed.
    let rc = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(queued).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
fn send_queue(_: &TcpStream) -> io::Result<u64> {
    Err(io::ErrorKind::Unsupported.into())
}

#[cfg(target_os = "linux")]
fn quick_ack(tcp: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: TCP_QUICKACK takes one int read from the pointer, which points at a live local
    // of the given size; the descriptor is open for as long as `tcp` is borrowed.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn quick_ack(_: &TcpStream) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

impl TrackedStream {
    /// Writes `bytes` to the socket, counting them. `Ready(Ok(n))` with n > 0, or an error.
    fn poll_send(&self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(bytes) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.written.fetch_add(n as u64, Ordering::SeqCst);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes out everything gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.gathered.is_empty() {
            let n = ready!(self.poll_send(cx, &self.gathered))?;
            self.gathered.drain(..n);
        }
        if self.gathered.capacity() > RETAINED_BUFFER {
            self.gathered = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.gathered.len() + buf.len() > GATHER_LIMIT {
            ready!(self.poll_drain(cx))?;
            if buf.len() >= GATHER_LIMIT {
                return self.poll_send(cx, buf);
            }
        }
        self.gathered.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drain(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        // SAFETY: shutdown takes the descriptor and a constant; the descriptor is open for as
        // long as `self.tcp` lives.
        let rc = unsafe { libc::shutdown(self.tcp.as_raw_fd(), libc::SHUT_WR) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // Already closed by the peer: nothing left to shut.
            if e.kind() != io::ErrorKind::NotConnected {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Polls until the peer's TCP acknowledged everything written (bounded wait).
    async fn all_acknowledged(probe: &AckProbe) -> bool {
        for _ in 0..1000 {
            if probe.acknowledged().unwrap() == probe.written() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn gathered_writes_leave_on_flush_and_count_once_sent() {
        let (server, mut client) = pair().await;
        let (mut stream, probe) = track(server);
        stream.write_all(b"one ").await.unwrap();
        stream.write_all(b"two").await.unwrap();
        assert_eq!(probe.written(), 0, "gathered, not sent before the flush");
        stream.flush().await.unwrap();
        assert_eq!(probe.written(), 7);
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");
        assert!(all_acknowledged(&probe).await);
    }

    #[tokio::test]
    async fn large_writes_go_out_whole_and_in_order() {
        let (server, mut client) = pair().await;
        let (mut stream, probe) = track(server);
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 4 + 200_000];
            client.read_exact(&mut got).await.unwrap();
            got
        });
        stream.write_all(b"head").await.unwrap();
        stream.write_all(&big).await.unwrap();
        stream.flush().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &big[..]);
        assert_eq!(probe.written(), 200_004);
        assert!(all_acknowledged(&probe).await);
    }

    #[tokio::test]
    async fn bytes_a_peer_does_not_read_stay_unacknowledged_once_its_window_is_full() {
        let (server, mut client) = pair().await;
        let (mut stream, probe) = track(server);
        // Fill the peer's receive window and our send buffer: writes stop completing.
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            let wrote =
                tokio::time::timeout(Duration::from_millis(200), stream.write_all(&chunk)).await;
            match wrote {
                Ok(r) => {
                    r.unwrap();
                    sent += chunk.len();
                }
                Err(_) => break,
            }
        }
        assert!(sent > 0);
        let acked = probe.acknowledged().unwrap();
        assert!(
            acked < probe.written(),
            "a full window leaves bytes unacknowledged ({acked} of {})",
            probe.written()
        );
        // The peer reads everything: then all is acknowledged.
        let written = probe.written() as usize;
        let mut buf = vec![0u8; written];
        let read = tokio::spawn(async move {
            client.read_exact(&mut buf).await.unwrap();
            client
        });
        stream.flush().await.unwrap();
        let _client = read.await.unwrap();
        assert!(all_acknowledged(&probe).await);
    }

    #[tokio::test]
    async fn reads_pass_through_and_quick_ack_is_accepted() {
        let (server, mut client) = pair().await;
        let (mut stream, probe) = track(server);
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        probe.quick_ack().unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "shutdown ends the stream for the peer");
    }
}
