//! Byte plumbing for the stdio transport: a bounded line reader for the text that precedes the
//! HTTP/2 session, and `Duplex`, which joins a read half and a write half (a child's stdout and
//! stdin, or this process's stdin and stdout) into the one `AsyncRead + AsyncWrite` hyper needs.
//!
//! Promise: bytes read ahead while looking for a line are never lost: they are handed to hyper
//! first. A peer cannot make the line reader buffer more than its cap (no unbounded growth from
//! a command that prints without newlines).

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;

/// Size of one read while looking for a line: the READY line and the HTTP/2 preface that follows
/// it fit in one read.
const LINE_READ_CHUNK: usize = 8 * 1024;

/// Why the line reader stopped.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("more than {0} bytes arrived without the expected line")]
    CapExceeded(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads `\n`-terminated lines from a byte stream, reading at most `cap` bytes in total.
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    read_total: usize,
    cap: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, cap: usize) -> Self {
        LineReader {
            inner,
            buf: BytesMut::new(),
            read_total: 0,
            cap,
        }
    }

    /// The next line without its `\n` (a trailing `\r` is kept), or `None` at end of stream.
    /// Bytes after the line stay buffered.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, LineError> {
        let mut searched = 0;
        loop {
            if let Some(pos) = self.buf[searched..].iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(searched + pos + 1);
                line.truncate(line.len() - 1);
                return Ok(Some(line.freeze()));
            }
            searched = self.buf.len();
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes into the buffer; returns how many (0 at end of stream).
    pub async fn fill(&mut self) -> Result<usize, LineError> {
        let room = self.cap.saturating_sub(self.read_total);
        if room == 0 {
            return Err(LineError::CapExceeded(self.cap));
        }
        let want = room.min(LINE_READ_CHUNK);
        self.buf.reserve(want);
        let n = (&mut self.inner)
            .take(want as u64)
            .read_buf(&mut self.buf)
            .await?;
        self.read_total += n;
        Ok(n)
    }

    /// What was read past the last line.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` buffered bytes (junk before the HTTP/2 preface).
    pub fn discard(&mut self, n: usize) {
        self.buf.advance(n.min(self.buf.len()));
    }

    /// The reader and the bytes read ahead, which belong to whatever reads next.
    pub fn into_parts(self) -> (R, Bytes) {
        (self.inner, self.buf.freeze())
    }
}

/// A read half and a write half as one bidirectional stream; `prefix` is returned by reads first.
#[derive(Debug)]
pub struct Duplex<R, W> {
    prefix: Bytes,
    reader: R,
    writer: W,
}

impl<R, W> Duplex<R, W> {
    pub fn new(prefix: Bytes, reader: R, writer: W) -> Self {
        Duplex {
            prefix,
            reader,
            writer,
        }
    }
}

impl<R: AsyncRead + Unpin, W: Unpin> AsyncRead for Duplex<R, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl<R: Unpin, W: AsyncWrite + Unpin> AsyncWrite for Duplex<R, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.writer.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}

/// This process's stdin as an async reader. Pipes and sockets (what `docker exec -i`,
/// `kubectl exec -i`, `ssh -T` and a spawning relay give us) are read through the reactor, with
/// no thread hop per read; anything else (a terminal, a file) through tokio's blocking stdin.
pub enum ProcessStdin {
    Pipe(pipe::Receiver),
    Socket(tokio::net::UnixStream),
    Blocking(tokio::io::Stdin),
}

/// This process's stdout as an async writer (same choice as [`ProcessStdin`]).
pub enum ProcessStdout {
    Pipe(pipe::Sender),
    Socket(tokio::net::UnixStream),
    Blocking(tokio::io::Stdout),
}

/// What kind of file a standard stream is, from a duplicate of its descriptor.
enum StreamKind {
    Fifo(File),
    Socket(File),
    Other,
}

fn classify(fd: std::os::fd::BorrowedFd<'_>) -> StreamKind {
    let Ok(owned) = fd.try_clone_to_owned() else {
        return StreamKind::Other;
    };
    let file = File::from(owned);
    match file.metadata().map(|m| m.file_type()) {
        Ok(t) if t.is_fifo() => StreamKind::Fifo(file),
        Ok(t) if t.is_socket() => StreamKind::Socket(file),
        _ => StreamKind::Other,
    }
}

fn nonblocking_socket(file: File) -> std::io::Result<tokio::net::UnixStream> {
    let std_stream = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(file));
    std_stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std_stream)
}

impl ProcessStdin {
    /// Must be called inside the runtime. The descriptor is switched to non-blocking mode, which
    /// is harmless for a pipe or socket that only this process reads.
    pub fn open() -> ProcessStdin {
        let stdin = std::io::stdin();
        let opened = match classify(stdin.as_fd()) {
            StreamKind::Fifo(f) => pipe::Receiver::from_file(f).map(ProcessStdin::Pipe),
            StreamKind::Socket(f) => nonblocking_socket(f).map(ProcessStdin::Socket),
            StreamKind::Other => return ProcessStdin::Blocking(tokio::io::stdin()),
        };
        opened.unwrap_or_else(|_| ProcessStdin::Blocking(tokio::io::stdin()))
    }
}

impl ProcessStdout {
    /// Must be called inside the runtime (see [`ProcessStdin::open`]).
    pub fn open() -> ProcessStdout {
        let stdout = std::io::stdout();
        let opened = match classify(stdout.as_fd()) {
            StreamKind::Fifo(f) => pipe::Sender::from_file(f).map(ProcessStdout::Pipe),
            StreamKind::Socket(f) => nonblocking_socket(f).map(ProcessStdout::Socket),
            StreamKind::Other => return ProcessStdout::Blocking(tokio::io::stdout()),
        };
        opened.unwrap_or_else(|_| ProcessStdout::Blocking(tokio::io::stdout()))
    }
}

impl AsyncRead for ProcessStdin {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ProcessStdin::Pipe(r) => Pin::new(r).poll_read(cx, buf),
            ProcessStdin::Socket(r) => Pin::new(r).poll_read(cx, buf),
            ProcessStdin::Blocking(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ProcessStdout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ProcessStdout::Pipe(w) => Pin::new(w).poll_write(cx, buf),
            ProcessStdout::Socket(w) => Pin::new(w).poll_write(cx, buf),
            ProcessStdout::Blocking(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ProcessStdout::Pipe(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            ProcessStdout::Socket(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            ProcessStdout::Blocking(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ProcessStdout::Pipe(w) => w.is_write_vectored(),
            ProcessStdout::Socket(w) => w.is_write_vectored(),
            ProcessStdout::Blocking(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ProcessStdout::Pipe(w) => Pin::new(w).poll_flush(cx),
            ProcessStdout::Socket(w) => Pin::new(w).poll_flush(cx),
            ProcessStdout::Blocking(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ProcessStdout::Pipe(w) => Pin::new(w).poll_shutdown(cx),
            ProcessStdout::Socket(w) => Pin::new(w).poll_shutdown(cx),
            ProcessStdout::Blocking(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn line_reader_keeps_bytes_after_the_line() {
        let input: &[u8] = b"junk\r\n\n{\"a\":1}\nPRI rest";
        let mut r = LineReader::new(input, 1024);
        assert_eq!(&r.next_line().await.unwrap().unwrap()[..], b"junk\r");
        assert_eq!(&r.next_line().await.unwrap().unwrap()[..], b"");
        assert_eq!(&r.next_line().await.unwrap().unwrap()[..], b"{\"a\":1}");
        let (_, rest) = r.into_parts();
        assert_eq!(&rest[..], b"PRI rest");
    }

    #[tokio::test]
    async fn line_reader_stops_at_its_cap() {
        let input = [b'x'; 100];
        let mut r = LineReader::new(&input[..], 10);
        assert!(matches!(
            r.next_line().await,
            Err(LineError::CapExceeded(10))
        ));
    }

    #[tokio::test]
    async fn line_reader_reports_end_of_stream() {
        let mut r = LineReader::new(&b"no newline"[..], 1024);
        assert!(r.next_line().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn duplex_reads_prefix_first() {
        let mut d = Duplex::new(Bytes::from_static(b"ab"), &b"cd"[..], tokio::io::sink());
        let mut out = Vec::new();
        d.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"abcd");
    }
}
