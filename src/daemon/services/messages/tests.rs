use std::future::Future;

use tokio::io::{duplex, DuplexStream};

use super::*;
use crate::daemon::services::inbox::tests::{sender, TestDir};
use crate::daemon::services::inbox::Limits;
use crate::io::message::{read_response, send, write_request, Response, SendError};

const RECEIVED_MS: u64 = 1_700_000_000_000;

fn open(dir: &TestDir, limits: Limits) -> Arc<Mutex<Inbox>> {
    Arc::new(Mutex::new(
        Inbox::open_with_limits(&dir.inbox(), limits).unwrap(),
    ))
}

fn stored(inbox: &Arc<Mutex<Inbox>>) -> usize {
    inbox.lock().unwrap().list().len()
}

/// Runs the server for one connection alongside `client`, which owns the other end (and
/// drops it when done); both must finish within a few seconds.
async fn exchange<T>(
    sender: Option<PeerRef>,
    inbox: &Arc<Mutex<Inbox>>,
    client: impl FnOnce(DuplexStream) -> T,
) -> T::Output
where
    T: Future,
{
    let (client_end, server_end) = duplex(4096);
    let server = serve(server_end, sender, Arc::clone(inbox), || RECEIVED_MS);
    let both = async { tokio::join!(server, client(client_end)).1 };
    tokio::time::timeout(Duration::from_secs(5), both)
        .await
        .expect("the exchange hung")
}

/// Reads what is left until the server closes its side.
async fn rest(stream: &mut DuplexStream) -> Vec<u8> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    rest
}

fn header(length: u32) -> Vec<u8> {
    let mut h = b"PMSG\x01\x03".to_vec();
    h.extend_from_slice(&length.to_be_bytes());
    h
}

#[tokio::test(flavor = "current_thread")]
async fn messages_are_stored_before_they_are_acknowledged() {
    let dir = TestDir::new("serve-stored");
    let inbox = open(&dir, Limits::default());
    let probe = Arc::clone(&inbox);
    let ids = exchange(Some(sender()), &inbox, |mut c| async move {
        let text = send(&mut c, MessageKind::Text, b"hello").await.unwrap();
        // The message is on disk by the time the id arrives.
        assert_eq!(stored(&probe), 1);
        let json = send(&mut c, MessageKind::Json, b"{\"n\": 1}")
            .await
            .unwrap();
        let big = vec![7u8; MAX_MESSAGE_BYTES];
        let binary = send(&mut c, MessageKind::Binary, &big).await.unwrap();
        [text, json, binary]
    })
    .await;
    let listed = inbox.lock().unwrap().list();
    let listed_ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(listed_ids, ids);
    assert_eq!(listed[0].from, sender());
    assert_eq!(listed[0].received_ms, RECEIVED_MS);
    assert_eq!(listed[0].data, Some(serde_json::json!("hello")));
    assert_eq!(listed[1].data, Some(serde_json::json!({"n": 1})));
    assert_eq!(listed[2].size, MAX_MESSAGE_BYTES);
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_payloads_are_refused_and_the_connection_stays_usable() {
    let dir = TestDir::new("serve-invalid");
    let inbox = open(&dir, Limits::default());
    exchange(Some(sender()), &inbox, |mut c| async move {
        // Written raw: `send` would refuse these itself.
        for (kind, payload) in [
            (MessageKind::Json, &b"{oops"[..]),
            (MessageKind::Text, b"\xff"),
        ] {
            write_request(&mut c, kind, payload).await.unwrap();
            let Response { status, detail } = read_response(&mut c).await.unwrap();
            assert_eq!(status, Status::Malformed, "{detail}");
            assert!(!detail.is_empty());
        }
        write_request(&mut c, MessageKind::Json, b"{,}")
            .await
            .unwrap();
        let response = read_response(&mut c).await.unwrap();
        assert!(response.detail.contains("line 1 column 2"), "{response:?}");
        send(&mut c, MessageKind::Json, b"[]").await.unwrap();
    })
    .await;
    assert_eq!(stored(&inbox), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn oversize_declared_length_is_refused_without_reading_the_body() {
    let dir = TestDir::new("serve-oversize");
    let inbox = open(&dir, Limits::default());
    exchange(Some(sender()), &inbox, |mut c| async move {
        // Only the header: the server must answer without waiting for a body.
        c.write_all(&header(MAX_MESSAGE_BYTES as u32 + 1))
            .await
            .unwrap();
        let response = read_response(&mut c).await.unwrap();
        assert_eq!(response.status, Status::TooLarge);
        assert_eq!(
            response.detail,
            "message is 65537 bytes; the limit is 65536"
        );
        assert!(rest(&mut c).await.is_empty(), "the server kept talking");
    })
    .await;
    assert_eq!(stored(&inbox), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn garbage_is_malformed_and_closes_the_connection() {
    let dir = TestDir::new("serve-garbage");
    let inbox = open(&dir, Limits::default());
    exchange(Some(sender()), &inbox, |mut c| async move {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut c).await.unwrap();
        assert_eq!(response.status, Status::Malformed);
        assert!(response.detail.contains("bad magic"), "{response:?}");
        assert!(rest(&mut c).await.is_empty());
    })
    .await;
    assert_eq!(stored(&inbox), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn untrusted_senders_are_refused() {
    let dir = TestDir::new("serve-untrusted");
    let inbox = open(&dir, Limits::default());
    let err = exchange(None, &inbox, |mut c| async move {
        send(&mut c, MessageKind::Text, b"let me in").await
    })
    .await
    .unwrap_err();
    let SendError::Refused { status, detail } = err else {
        panic!("{err}");
    };
    assert_eq!(status, Status::NotTrusted);
    assert!(detail.contains("pilotctl handshake"), "{detail}");
    assert_eq!(stored(&inbox), 0);

    // Not even the header is read: the answer comes to a silent client too.
    let response = exchange(None, &inbox, |mut c| async move {
        read_response(&mut c).await.unwrap()
    })
    .await;
    assert_eq!(response.status, Status::NotTrusted);
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_inbox_refuses_with_advice() {
    let dir = TestDir::new("serve-full");
    let limits = Limits {
        messages: 1,
        bytes: 1024,
    };
    let inbox = open(&dir, limits);
    let err = exchange(Some(sender()), &inbox, |mut c| async move {
        send(&mut c, MessageKind::Text, b"first").await.unwrap();
        send(&mut c, MessageKind::Text, b"second").await
    })
    .await
    .unwrap_err();
    let SendError::Refused { status, detail } = &err else {
        panic!("{err}");
    };
    assert_eq!(*status, Status::InboxFull);
    assert!(detail.contains("pilotctl inbox --clear"), "{detail}");
    assert!(err
        .to_string()
        .starts_with("refused by the receiver: inbox full ("));
    assert_eq!(stored(&inbox), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_write_is_store_failed() {
    let dir = TestDir::new("serve-store-failed");
    let inbox = open(&dir, Limits::default());
    std::fs::remove_dir_all(dir.inbox()).unwrap();
    let err = exchange(Some(sender()), &inbox, |mut c| async move {
        send(&mut c, MessageKind::Text, b"lost").await
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            SendError::Refused {
                status: Status::StoreFailed,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn silent_and_truncating_peers_are_dropped() {
    let dir = TestDir::new("serve-idle");
    let inbox = open(&dir, Limits::default());
    // Silent, or stalled part-way through a request: closed after the idle timeout.
    for sent in [&b""[..], b"PMSG\x01", &header(5)[..]] {
        let (mut client, server_end) = duplex(4096);
        client.write_all(sent).await.unwrap();
        let server = serve_with_timeout(
            server_end,
            Some(sender()),
            Arc::clone(&inbox),
            || RECEIVED_MS,
            Duration::from_millis(50),
        );
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("an idle connection was kept open");
        assert!(rest(&mut client).await.is_empty());
    }
    // Closed part-way through a body: nothing stored, no answer.
    let answer = exchange(Some(sender()), &inbox, |mut c| async move {
        c.write_all(&header(5)).await.unwrap();
        c.write_all(b"abc").await.unwrap();
        c.shutdown().await.unwrap();
        rest(&mut c).await
    })
    .await;
    assert!(answer.is_empty());
    assert_eq!(stored(&inbox), 0);
}

#[test]
fn serving_can_be_spawned() {
    fn assert_send<F: Future + Send>(_: F) {}
    let dir = TestDir::new("serve-send");
    let inbox = open(&dir, Limits::default());
    let (_, server_end) = duplex(64);
    assert_send(serve(server_end, None, inbox, || 0));
}
