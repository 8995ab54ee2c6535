//! Copying bytes both ways between two streams, holding a buffer only while data is in flight.
//!
//! `tokio::io::copy_bidirectional` gives each direction its own 8 KiB buffer for the whole life
//! of the connection, so a proxy holding thousands of idle keep-alive connections holds 16 KiB
//! of buffers for each. Here a direction borrows a buffer from a small per-thread pool when it
//! polls its reader, gives it back at once if nothing was ready, and keeps it only until what
//! was read has been written. An idle connection holds no buffer at all; a busy one costs the
//! same syscalls as before (16 KiB reads, one TLS record's worth).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One read's worth: a TLS record's maximum plaintext.
const BUFFER: usize = 16 * 1024;
/// Buffers kept per thread between uses; more are freed.
const POOLED: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take() -> Box<[u8]> {
    POOL.with(|pool| pool.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; BUFFER].into_boxed_slice())
}

fn give_back(buffer: Box<[u8]>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOLED {
            pool.push(buffer);
        }
    });
}

/// Read once into `out` through a pooled buffer, so that waiting costs no buffer: the bytes
/// read are appended to `out` (which grows to just their size). `Ready(Ok(0))` is end of
/// stream.
pub(crate) fn poll_read_pooled<R: AsyncRead + ?Sized>(
    reader: Pin<&mut R>,
    cx: &mut Context<'_>,
    out: &mut bytes::BytesMut,
) -> Poll<io::Result<usize>> {
    let mut buffer = take();
    let mut read = ReadBuf::new(&mut buffer);
    let polled = reader.poll_read(cx, &mut read);
    let filled = read.filled().len();
    if let Poll::Ready(Ok(())) = polled {
        out.extend_from_slice(&buffer[..filled]);
    }
    give_back(buffer);
    polled.map_ok(|()| filled)
}

/// One direction: bytes read but not yet written, and how far it got.
#[derive(Default)]
struct Direction {
    in_flight: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    read_done: bool,
    done: bool,
    needs_flush: bool,
    copied: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(buffer) = &self.in_flight {
                if self.start < self.end {
                    let written = ready!(writer.as_mut().poll_write(cx, &buffer[self.start..self.end]))?;
                    if written == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.start += written;
                    self.copied += written as u64;
                    self.needs_flush = true;
                    continue;
                }
                if let Some(buffer) = self.in_flight.take() {
                    give_back(buffer);
                }
            }
            if self.read_done {
                if self.needs_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.needs_flush = false;
                }
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut buffer = take();
            let mut read = ReadBuf::new(&mut buffer);
            match reader.as_mut().poll_read(cx, &mut read) {
                Poll::Pending => {
                    give_back(buffer);
                    // Nothing more to read now: push out what was written before waiting.
                    if self.needs_flush {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => {
                    give_back(buffer);
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(())) => {
                    let filled = read.filled().len();
                    if filled == 0 {
                        self.read_done = true;
                        give_back(buffer);
                    } else {
                        (self.start, self.end) = (0, filled);
                        self.in_flight = Some(buffer);
                    }
                }
            }
        }
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        if let Some(buffer) = self.in_flight.take() {
            give_back(buffer);
        }
    }
}

struct Splice<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Direction,
    b_to_a: Direction,
}

impl<A, B> Future for Splice<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let forward = this.a_to_b.poll_copy(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b))?;
        let backward = this.b_to_a.poll_copy(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a))?;
        if forward.is_ready() && backward.is_ready() {
            return Poll::Ready(Ok((this.a_to_b.copied, this.b_to_a.copied)));
        }
        Poll::Pending
    }
}

/// Copy `a` → `b` and `b` → `a` until both ends have finished (end of stream read and the other
/// side shut down), like `tokio::io::copy_bidirectional`; returns the bytes copied each way.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Splice { a, b, a_to_b: Direction::default(), b_to_a: Direction::default() }.await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn both_directions_arrive_whole_and_end_of_stream_is_passed_on() {
        let (mut left_outer, mut left_inner) = tokio::io::duplex(1024);
        let (mut right_inner, mut right_outer) = tokio::io::duplex(1024);
        let copier = tokio::spawn(async move { splice(&mut left_inner, &mut right_inner).await });
        const UPLOAD: usize = 200_000;
        let upload: Vec<u8> = (0..UPLOAD).map(|i| (i % 251) as u8).collect();
        let download: Vec<u8> = (0..150_000usize).map(|i| (i % 241) as u8).collect();
        let (up, down) = (upload.clone(), download.clone());
        let left = tokio::spawn(async move {
            let writer = async {
                left_outer.write_all(&up).await.expect("write left");
                left_outer.shutdown().await.expect("shutdown left");
            };
            writer.await;
            let mut got = Vec::new();
            left_outer.read_to_end(&mut got).await.expect("read left");
            got
        });
        let right = tokio::spawn(async move {
            let mut got = vec![0u8; UPLOAD];
            right_outer.read_exact(&mut got).await.expect("read right");
            right_outer.write_all(&down).await.expect("write right");
            right_outer.shutdown().await.expect("shutdown right");
            let mut rest = Vec::new();
            right_outer.read_to_end(&mut rest).await.expect("end of stream after the upload");
            assert!(rest.is_empty());
            got
        });
        assert_eq!(right.await.expect("right"), upload);
        assert_eq!(left.await.expect("left"), download);
        assert_eq!(copier.await.expect("copier").expect("copied"), (200_000, 150_000));
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let (_left_outer, mut left_inner) = tokio::io::duplex(64);
        let (mut right_inner, _right_outer) = tokio::io::duplex(64);
        let mut splice = Box::pin(Splice {
            a: &mut left_inner,
            b: &mut right_inner,
            a_to_b: Direction::default(),
            b_to_a: Direction::default(),
        });
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(splice.as_mut().poll(&mut cx).is_pending());
        assert!(splice.a_to_b.in_flight.is_none() && splice.b_to_a.in_flight.is_none());
    }
}
