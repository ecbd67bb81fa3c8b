use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

use super::*;

const KINDS: [MessageKind; 3] = [MessageKind::Text, MessageKind::Json, MessageKind::Binary];

async fn encoded(kind: MessageKind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_request(&mut out, kind, payload).await.unwrap();
    out
}

fn header(magic: &[u8; 4], version: u8, kind: u8, length: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&[version, kind]);
    h.extend_from_slice(&length.to_be_bytes());
    h
}

#[tokio::test(flavor = "current_thread")]
async fn requests_round_trip_in_turn_for_every_kind() {
    let payloads: [&[u8]; 3] = [b"hello \xc3\xa9", br#"{"a":[1,2]}"#, &[0, 255, 10, 13]];
    let mut stream = Vec::new();
    for (kind, payload) in KINDS.iter().zip(payloads) {
        stream.extend(encoded(*kind, payload).await);
    }
    assert_eq!(&stream[..10], b"PMSG\x01\x01\x00\x00\x00\x08");
    let mut r = &stream[..];
    for (kind, payload) in KINDS.iter().zip(payloads) {
        let got = read_request(&mut r).await.unwrap();
        assert_eq!(got, Some((*kind, payload.to_vec())));
    }
    assert!(read_request(&mut r).await.unwrap().is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn every_truncated_request_is_an_error() {
    let full = encoded(MessageKind::Binary, b"0123456789").await;
    let mut r = &full[..0];
    assert!(read_request(&mut r).await.unwrap().is_none());
    for cut in 1..full.len() {
        let mut r = &full[..cut];
        let err = read_request(&mut r).await.unwrap_err();
        assert!(
            matches!(err, MessageError::Closed(_)),
            "cut at {cut}: {err}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn oversize_length_is_refused_before_the_body_is_read() {
    for declared in [MAX_MESSAGE_BYTES as u32 + 1, u32::MAX] {
        let (mut writer, mut reader) = duplex(64);
        writer
            .write_all(&header(b"PMSG", 1, 3, declared))
            .await
            .unwrap();
        // The writer stays open: reading the body would wait forever.
        let got = tokio::time::timeout(Duration::from_secs(5), read_request(&mut reader))
            .await
            .expect("read_request waited for a body it must not read");
        let err = got.unwrap_err();
        assert!(
            matches!(err, MessageError::TooLarge { size } if size == declared as usize),
            "{err}"
        );
        drop(writer);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn size_limit_is_inclusive() {
    let at = vec![b'a'; MAX_MESSAGE_BYTES];
    let over = vec![b'a'; MAX_MESSAGE_BYTES + 1];
    validate(MessageKind::Text, &at).unwrap();
    let err = validate(MessageKind::Text, &over).unwrap_err();
    assert_eq!(
        err.to_string(),
        "message is 65537 bytes; the limit is 65536"
    );
    let mut r = &encoded(MessageKind::Binary, &at).await[..];
    assert_eq!(
        read_request(&mut r).await.unwrap().unwrap().1.len(),
        at.len()
    );
    assert!(matches!(
        write_request(&mut Vec::new(), MessageKind::Binary, &over).await,
        Err(MessageError::TooLarge { size: 65537 })
    ));
    let mut framed = header(b"PMSG", 1, 3, MAX_MESSAGE_BYTES as u32 + 1);
    framed.extend_from_slice(&over);
    let err = read_request(&mut &framed[..]).await.unwrap_err();
    assert!(
        matches!(err, MessageError::TooLarge { size: 65537 }),
        "{err}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn bad_magic_version_and_kind_are_malformed() {
    let cases = [
        (header(b"PMSX", 1, 1, 0), "bad magic"),
        (header(b"PACK", 1, 1, 0), "bad magic"),
        (header(b"PMSG", 2, 1, 0), "version 2"),
        (header(b"PMSG", 0, 1, 0), "version 0"),
        (header(b"PMSG", 1, 0, 0), "type 0"),
        (header(b"PMSG", 1, 4, 0), "type 4"),
    ];
    for (bytes, says) in cases {
        let err = read_request(&mut &bytes[..]).await.unwrap_err();
        assert!(
            matches!(&err, MessageError::Malformed(m) if m.contains(says)),
            "{bytes:?}: {err}"
        );
    }
}

#[test]
fn validation_by_kind() {
    validate(MessageKind::Text, "plain ✓".as_bytes()).unwrap();
    validate(MessageKind::Text, b"").unwrap();
    validate(MessageKind::Binary, b"").unwrap();
    validate(MessageKind::Binary, b"\xff\xfe").unwrap();
    let err = validate(MessageKind::Text, b"ok \xff").unwrap_err();
    assert!(matches!(err, MessageError::InvalidText(_)), "{err}");
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");

    for good in [
        &b"{}"[..],
        b"[1, 2.5, null]",
        b" \"s\" ",
        b"true",
        b"{\"a\":{\"b\":[]}}",
    ] {
        validate(MessageKind::Json, good).unwrap();
    }
    let err = validate(MessageKind::Json, b"{\"a\":\n 1,}").unwrap_err();
    assert!(matches!(err, MessageError::InvalidJson(_)), "{err}");
    assert!(err.to_string().contains("line 2 column"), "{err}");
    for bad in [&b""[..], b"{", b"1 2", b"\xff"] {
        let err = validate(MessageKind::Json, bad).unwrap_err();
        assert!(
            matches!(err, MessageError::InvalidJson(_)),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn responses_round_trip_and_truncations_are_errors() {
    let statuses = [
        Status::Stored,
        Status::TooLarge,
        Status::Malformed,
        Status::InboxFull,
        Status::StoreFailed,
        Status::NotTrusted,
    ];
    for status in statuses {
        let mut bytes = Vec::new();
        write_response(&mut bytes, status, "détail").await.unwrap();
        let got = read_response(&mut &bytes[..]).await.unwrap();
        assert_eq!(
            got,
            Response {
                status,
                detail: "détail".to_owned()
            }
        );
        for cut in 0..bytes.len() {
            let err = read_response(&mut &bytes[..cut]).await.unwrap_err();
            assert!(
                matches!(err, MessageError::Closed(_)),
                "cut at {cut}: {err}"
            );
        }
    }
    // A detail too long for the u16 is cut on a character boundary.
    let long = "é".repeat(40_000);
    let mut bytes = Vec::new();
    write_response(&mut bytes, Status::Malformed, &long)
        .await
        .unwrap();
    let got = read_response(&mut &bytes[..]).await.unwrap();
    assert_eq!(got.detail.len(), 65_534);
    assert!(long.starts_with(&got.detail));
}

#[tokio::test(flavor = "current_thread")]
async fn bad_responses_are_malformed() {
    let cases: [&[u8]; 4] = [
        b"PMSG\x01\x00\x00\x00",
        b"PACK\x02\x00\x00\x00",
        b"PACK\x01\x06\x00\x00",
        b"PACK\x01\x00\x00\x01\xff",
    ];
    for bytes in cases {
        let err = read_response(&mut &bytes[..]).await.unwrap_err();
        assert!(
            matches!(err, MessageError::Malformed(_)),
            "{bytes:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn send_returns_the_id_or_the_receivers_refusal() {
    for (status, detail) in [(Status::Stored, "id-1"), (Status::InboxFull, "run clear")] {
        let (mut client, mut server) = duplex(256);
        let receiver = async {
            let got = read_request(&mut server).await.unwrap();
            assert_eq!(got, Some((MessageKind::Json, b"[1]".to_vec())));
            write_response(&mut server, status, detail).await.unwrap();
        };
        let (sent, ()) = tokio::join!(send(&mut client, MessageKind::Json, b"[1]"), receiver);
        match sent {
            Ok(id) => assert_eq!((status, id.as_str()), (Status::Stored, detail)),
            Err(e) => assert_eq!(
                e.to_string(),
                "refused by the receiver: inbox full (run clear)"
            ),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn send_refuses_invalid_messages_without_sending() {
    let over = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let cases: [(MessageKind, &[u8]); 3] = [
        (MessageKind::Json, b"{oops"),
        (MessageKind::Text, b"\xc3"),
        (MessageKind::Binary, &over),
    ];
    for (kind, payload) in cases {
        let (mut client, mut server) = duplex(1024);
        let err = send(&mut client, kind, payload).await.unwrap_err();
        assert!(matches!(err, SendError::Invalid(_)), "{err}");
        drop(client);
        let mut seen = Vec::new();
        server.read_to_end(&mut seen).await.unwrap();
        assert!(seen.is_empty(), "{kind}: sent {} bytes", seen.len());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn send_reports_a_receiver_that_hangs_up() {
    let (mut client, server) = duplex(1024);
    let receiver = async move {
        let mut server = server;
        let _ = read_request(&mut server).await;
    };
    let (sent, ()) = tokio::join!(send(&mut client, MessageKind::Text, b"hi"), receiver);
    let err = sent.unwrap_err();
    assert!(
        matches!(err, SendError::Exchange(MessageError::Closed(_))),
        "{err}"
    );
}

#[test]
fn kind_names() {
    for kind in KINDS {
        assert_eq!(kind.as_str().parse::<MessageKind>(), Ok(kind));
        assert_eq!(MessageKind::from_code(kind.code()), Some(kind));
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
        assert_eq!(serde_json::from_str::<MessageKind>(&json).unwrap(), kind);
    }
    let err = "Text".parse::<MessageKind>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown message type \"Text\": use text, json or binary"
    );
}
