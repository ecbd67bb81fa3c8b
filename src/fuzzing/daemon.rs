//! Targets for what the daemon reads from sockets: message service frames, SOCKS5, the
//! control socket's JSON and the metrics endpoint's HTTP.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::executor::block_on;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::socks5::{self, Target};
use crate::api::{Request, Response};
use crate::io::message::{
    read_request, read_response, validate, write_request, write_response, Status,
};

/// A byte stream that reads a script (in chunks of at most `chunk` bytes, as TCP may deliver
/// them) and keeps what is written. Always ready: a future over it finishes in one poll.
pub(super) struct Script<'a> {
    input: &'a [u8],
    chunk: usize,
    pub(super) written: Vec<u8>,
}

impl<'a> Script<'a> {
    pub(super) fn new(input: &'a [u8], chunk: usize) -> Script<'a> {
        Script {
            input,
            chunk: chunk.max(1),
            written: Vec::new(),
        }
    }
}

impl AsyncRead for Script<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.input.len().min(self.chunk).min(buf.remaining());
        let (head, rest) = self.input.split_at(n);
        buf.put_slice(head);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A message connection's bytes, read as requests until the framing breaks (each payload
/// validated for its kind), and the same bytes read as a response, and as a rendezvous TLS
/// stream's frames. Whatever is read writes back to frames that read the same.
pub fn message_frames(data: &[u8]) {
    let mut stream = data;
    for _ in 0..64 {
        let Ok(Some((kind, payload))) = block_on(read_request(&mut stream)) else {
            break;
        };
        let valid = validate(kind, &payload).is_ok();
        let mut frame = Vec::new();
        block_on(write_request(&mut frame, kind, &payload)).expect("a read payload fits");
        let again = block_on(read_request(&mut frame.as_slice())).expect("re-reads");
        assert_eq!(
            again,
            Some((kind, payload)),
            "request frame does not round-trip"
        );
        if let Some((kind, payload)) = again {
            assert_eq!(validate(kind, &payload).is_ok(), valid);
        }
    }
    if let Ok(response) = block_on(read_response(&mut &data[..])) {
        let mut frame = Vec::new();
        block_on(write_response(
            &mut frame,
            response.status,
            &response.detail,
        ))
        .expect("Vec");
        let again = block_on(read_response(&mut frame.as_slice())).expect("re-reads");
        assert_eq!(again, response, "response frame does not round-trip");
    }
    // Any detail, however long, makes a response that reads back cut at a char boundary.
    let detail = String::from_utf8_lossy(data);
    let mut frame = Vec::new();
    block_on(write_response(&mut frame, Status::Malformed, &detail)).expect("Vec");
    let again = block_on(read_response(&mut frame.as_slice())).expect("re-reads");
    assert!(detail.starts_with(&again.detail) && again.detail.len() <= usize::from(u16::MAX));
    rendezvous_stream_frames(data);
}

/// The same bytes as a TLS stream to the rendezvous carries them (`io::stream`): splitting
/// back-to-back frames and reading them one by one agree, and what splits frames again to the
/// same bytes.
fn rendezvous_stream_frames(data: &[u8]) {
    use crate::io::stream::{frames, push_frame, read_frame, MAX_FRAME};
    let split: Vec<&[u8]> = frames(data).collect();
    let mut again = Vec::new();
    for frame in &split {
        assert!(push_frame(&mut again, frame));
    }
    assert_eq!(
        &data[..again.len()],
        again.as_slice(),
        "frames do not re-frame"
    );
    let (mut reader, mut buf) = (data, vec![0u8; MAX_FRAME]);
    for frame in &split {
        let read = block_on(read_frame(&mut reader, &mut buf)).expect("a whole frame reads");
        assert_eq!(read.map(|n| &buf[..n]), Some(*frame));
    }
}

/// `[chunk][client bytes]` to the proxy side (`accept`), and the same bytes as a proxy's
/// answers to the client side (`connect`). A target the proxy accepts is one the client asks
/// for with bytes the proxy reads back as the same target.
pub fn socks5(data: &[u8]) {
    let Some((&chunk, script)) = data.split_first() else {
        return;
    };
    let mut proxy_side = Script::new(script, usize::from(chunk));
    let accepted = block_on(socks5::accept(&mut proxy_side));
    // What the proxy writes is at most a method choice and one reply.
    assert!(proxy_side.written.len() <= 2 + 4 + 16 + 2);
    let mut client_side = Script::new(script, usize::from(chunk));
    let target = Target::Name("bob.pilot".into(), 80);
    let _ = block_on(socks5::connect(&mut client_side, &target));
    let Ok(target) = accepted else {
        return;
    };
    if let Target::Name(name, _) = &target {
        assert!(!name.is_empty() && name.len() <= 255 && !name.chars().any(char::is_control));
        assert!(
            name.parse::<std::net::IpAddr>().is_err(),
            "an address taken for a name"
        );
    }
    // The client's request for it, answered with success, reads back as the same target.
    let answers = [5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    let mut client = Script::new(&answers, usize::MAX);
    block_on(socks5::connect(&mut client, &target)).expect("a successful exchange");
    let mut proxy = Script::new(&client.written, usize::MAX);
    let again = block_on(socks5::accept(&mut proxy)).expect("the client's request is accepted");
    assert_eq!(again, target, "SOCKS5 request does not round-trip");
}

/// A control socket line: a request that parses serialises to one that parses the same; and
/// the same bytes as a daemon's response, as `pilotctl` reads them.
pub fn control_json(data: &[u8]) {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let text = serde_json::to_string(&request).expect("a request serialises");
        let again: Request = serde_json::from_str(&text).expect("re-parses");
        assert_eq!(again, request, "control request does not round-trip");
    }
    let _ = serde_json::from_slice::<Response>(data);
}

/// `[chunk][bytes of a connection]` to the metrics endpoint: one answer, a well-formed HTTP
/// response whose status fits the request, and the page only for `GET`/`HEAD /metrics`.
pub fn metrics_http(data: &[u8]) {
    let Some((&chunk, script)) = data.split_first() else {
        return;
    };
    // Small chunks exercise the reassembly of the head; 0 means "all at once".
    let chunk = if chunk == 0 {
        usize::MAX
    } else {
        usize::from(chunk)
    };
    let mut stream = Script::new(script, chunk);
    let scraped = std::cell::Cell::new(false);
    block_on(crate::daemon::metrics::answer(&mut stream, || {
        scraped.set(true);
        async { Some("pilot_up 1\n".to_owned()) }
    }))
    .expect("a script never fails");
    let written = &stream.written;
    if written.is_empty() {
        return;
    }
    let status = written
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .expect("a status line");
    assert!(written.starts_with(b"HTTP/1.1 "), "not an HTTP response");
    assert!(
        written.windows(4).any(|w| w == b"\r\n\r\n"),
        "response head not ended"
    );
    match status {
        "200" => {
            assert!(scraped.get());
            assert!(script.starts_with(b"GET /metrics") || script.starts_with(b"HEAD /metrics"));
        }
        "400" | "404" | "431" => assert!(!scraped.get(), "scraped for a refused request"),
        other => panic!("unexpected status {other}"),
    }
}
