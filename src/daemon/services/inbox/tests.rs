use std::os::unix::fs::PermissionsExt;

use super::*;

/// A state directory unique to one test, removed when dropped.
pub(crate) struct TestDir(pub PathBuf);

impl TestDir {
    pub(crate) fn new(test: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("pilot-inbox-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TestDir(dir)
    }

    pub(crate) fn inbox(&self) -> PathBuf {
        self.0.join("inbox")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn sender() -> PeerRef {
    PeerRef::new(
        crate::identity::NodeKey([3; 32]),
        Some("alice".parse().unwrap()),
    )
}

fn message_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn stores_and_lists_every_kind() {
    let dir = TestDir::new("kinds");
    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    let text = inbox
        .store(&sender(), MessageKind::Text, "héllo".as_bytes(), 1_000)
        .unwrap();
    let json = inbox
        .store(&sender(), MessageKind::Json, br#"{"a": [1, 2]}"#, 2_000)
        .unwrap();
    let binary = inbox
        .store(&sender(), MessageKind::Binary, &[0, 1, 255], 3_000)
        .unwrap();
    let empty = inbox
        .store(&sender(), MessageKind::Text, b"", 4_000)
        .unwrap();
    assert_eq!(text, "0000000001000-000000");

    let listed = inbox.list();
    let ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [&text, &json, &binary, &empty]);
    assert_eq!(listed[0].from, sender());
    assert_eq!(listed[0].size, 6);
    assert_eq!(listed[1].received_ms, 2_000);

    let shown: Vec<serde_json::Value> = listed
        .iter()
        .map(|m| serde_json::to_value(m).unwrap())
        .collect();
    assert_eq!(shown[0]["kind"], "text");
    assert_eq!(shown[0]["data"], "héllo");
    assert_eq!(shown[0]["from"]["hostname"], "alice");
    assert_eq!(shown[1]["kind"], "json");
    assert_eq!(shown[1]["data"], serde_json::json!({"a": [1, 2]}));
    assert_eq!(shown[2]["kind"], "binary");
    assert_eq!(shown[2]["data_base64"], "AAH/");
    assert!(shown[2].get("data").is_none());
    assert!(shown[0].get("data_base64").is_none());
    assert_eq!(shown[3]["data"], "");
    let back: StoredMessage = serde_json::from_value(shown[2].clone()).unwrap();
    assert_eq!(back, listed[2]);
}

#[test]
fn ids_sort_by_arrival_within_a_millisecond_and_when_the_clock_steps_back() {
    let dir = TestDir::new("order");
    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    let mut ids = Vec::new();
    for ms in [5_000, 5_000, 5_000, 4_000, 6_000, 6_000] {
        ids.push(inbox.store(&sender(), MessageKind::Text, b"x", ms).unwrap());
    }
    assert_eq!(ids[3], "0000000005000-000003");
    assert_eq!(ids[4], "0000000006000-000000");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let listed: Vec<String> = inbox.list().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, ids);
    assert_eq!(inbox.list()[3].received_ms, 4_000);
}

#[test]
fn a_reopened_inbox_has_the_same_messages_and_keeps_ordering() {
    let dir = TestDir::new("reopen");
    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    inbox
        .store(&sender(), MessageKind::Text, b"one", 9_000)
        .unwrap();
    inbox
        .store(&sender(), MessageKind::Binary, b"two", 9_000)
        .unwrap();
    let before = inbox.list();
    drop(inbox);

    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    assert_eq!(inbox.list(), before);
    // An earlier clock after the restart still sorts last.
    let id = inbox
        .store(&sender(), MessageKind::Text, b"three", 1)
        .unwrap();
    assert!(id > before[1].id, "{id}");
}

#[test]
fn files_are_private() {
    let dir = TestDir::new("modes");
    fs::create_dir_all(dir.inbox()).unwrap();
    fs::set_permissions(dir.inbox(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    let id = inbox.store(&sender(), MessageKind::Text, b"hi", 1).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.inbox()), 0o700);
    assert_eq!(mode(&dir.inbox().join(format!("{id}.msg"))), 0o600);
    assert_eq!(message_files(&dir.inbox()), [format!("{id}.msg")]);
}

#[test]
fn damaged_files_are_skipped_and_left_in_place() {
    let dir = TestDir::new("damage");
    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    let ids: Vec<String> = (0..4)
        .map(|i| {
            let payload = format!("message {i}");
            inbox
                .store(&sender(), MessageKind::Text, payload.as_bytes(), 100)
                .unwrap()
        })
        .collect();
    let path = |id: &str| dir.inbox().join(format!("{id}.msg"));
    let original = fs::read(path(&ids[3])).unwrap();

    // Truncated, one payload byte altered, header garbage, and the newest cut in its header.
    let bytes = fs::read(path(&ids[0])).unwrap();
    fs::write(path(&ids[0]), &bytes[..bytes.len() - 1]).unwrap();
    let mut bytes = fs::read(path(&ids[1])).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    fs::write(path(&ids[1]), bytes).unwrap();
    fs::write(path(&ids[2]), b"\x00\xffnot json\nmessage 2").unwrap();
    fs::write(path(&ids[3]), &original[..20]).unwrap();
    fs::write(dir.inbox().join("notes.txt"), b"not a message").unwrap();
    fs::write(dir.inbox().join("123.msg"), b"odd name").unwrap();

    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    assert!(inbox.list().is_empty());
    // A new message never takes a damaged file's name.
    let new = inbox
        .store(&sender(), MessageKind::Text, b"new", 100)
        .unwrap();
    assert!(new > ids[3]);
    assert_eq!(fs::read(path(&ids[3])).unwrap(), &original[..20]);
    assert_eq!(inbox.clear().unwrap(), 1);
    for id in &ids {
        assert!(path(id).exists(), "{id} was deleted");
    }
    assert!(dir.inbox().join("notes.txt").exists());
}

#[test]
fn a_file_damaged_while_open_is_skipped_by_list_and_kept_by_clear() {
    let dir = TestDir::new("damage-open");
    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    let bad = inbox
        .store(&sender(), MessageKind::Json, b"[1]", 1)
        .unwrap();
    let good = inbox
        .store(&sender(), MessageKind::Json, b"[2]", 2)
        .unwrap();
    let bad_path = dir.inbox().join(format!("{bad}.msg"));
    let mut bytes = fs::read(&bad_path).unwrap();
    let at = bytes.len() - 2;
    bytes[at] = b'7';
    fs::write(&bad_path, &bytes).unwrap();
    let listed: Vec<String> = inbox.list().into_iter().map(|m| m.id).collect();
    assert_eq!(listed, [good]);
    assert_eq!(inbox.clear().unwrap(), 1);
    assert_eq!(fs::read(&bad_path).unwrap(), bytes);
}

#[test]
fn limits_refuse_and_store_nothing() {
    let dir = TestDir::new("limits");
    let limits = Limits {
        messages: 2,
        bytes: 10,
    };
    let mut inbox = Inbox::open_with_limits(&dir.inbox(), limits).unwrap();
    inbox
        .store(&sender(), MessageKind::Binary, &[0; 6], 1)
        .unwrap();
    let err = inbox
        .store(&sender(), MessageKind::Binary, &[0; 5], 2)
        .unwrap_err();
    assert!(matches!(err, InboxError::Full { .. }), "{err}");
    assert!(err.to_string().contains("pilotctl inbox --clear"), "{err}");
    // Exactly at the byte limit is allowed.
    inbox
        .store(&sender(), MessageKind::Binary, &[0; 4], 3)
        .unwrap();
    let err = inbox
        .store(&sender(), MessageKind::Binary, &[], 4)
        .unwrap_err();
    assert!(matches!(err, InboxError::Full { messages: 2, .. }), "{err}");
    assert_eq!(message_files(&dir.inbox()).len(), 2);

    // The counts survive a restart.
    let mut inbox = Inbox::open_with_limits(&dir.inbox(), limits).unwrap();
    let err = inbox
        .store(&sender(), MessageKind::Binary, &[], 5)
        .unwrap_err();
    assert!(matches!(err, InboxError::Full { .. }), "{err}");
    assert_eq!(inbox.list().len(), 2);
}

#[test]
fn invalid_payloads_are_refused() {
    let dir = TestDir::new("invalid");
    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    let cases: [(MessageKind, &[u8]); 3] = [
        (MessageKind::Text, b"\xff"),
        (MessageKind::Json, b"{"),
        (MessageKind::Binary, &[0; MAX_MESSAGE_BYTES + 1]),
    ];
    for (kind, payload) in cases {
        let err = inbox.store(&sender(), kind, payload, 1).unwrap_err();
        assert!(matches!(err, InboxError::Invalid(_)), "{err}");
    }
    assert!(message_files(&dir.inbox()).is_empty());
}

#[test]
fn clear_removes_everything_for_good() {
    let dir = TestDir::new("clear");
    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    for ms in 1..=3 {
        inbox.store(&sender(), MessageKind::Text, b"m", ms).unwrap();
    }
    // A write cut short by a crash is swept on open.
    fs::write(dir.inbox().join("0000000000009-000000.msg.tmp"), b"half").unwrap();
    assert_eq!(inbox.clear().unwrap(), 3);
    assert!(inbox.list().is_empty());
    assert_eq!(inbox.clear().unwrap(), 0);

    let mut inbox = Inbox::open(&dir.inbox()).unwrap();
    assert!(inbox.list().is_empty());
    assert!(message_files(&dir.inbox()).is_empty());
    inbox
        .store(&sender(), MessageKind::Text, b"after", 4)
        .unwrap();
    assert_eq!(inbox.list().len(), 1);
}

#[test]
fn inbox_can_be_shared_with_blocking_tasks() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<std::sync::Arc<std::sync::Mutex<Inbox>>>();
}
