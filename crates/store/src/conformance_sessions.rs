//! Conformance cases of [`SessionStore`] (the MQTT broker's durable state), part of
//! `conformance`.

use crate::SessionStore;
use crate::sessions::{SessionChange, SessionState, StoredMessage};

use super::Harness;

fn put_session(client_id: &str, body: &[u8]) -> SessionChange {
    SessionChange::PutSession { client_id: client_id.into(), body: body.to_vec() }
}

fn put_message(client_id: &str, seq: i64, body: &[u8]) -> SessionChange {
    SessionChange::PutMessage { client_id: client_id.into(), seq, body: body.to_vec() }
}

fn stored(client_id: &str, seq: i64, body: &[u8], inflight: Option<(u16, u8)>) -> StoredMessage {
    StoredMessage { client_id: client_id.into(), seq, body: body.to_vec(), inflight }
}

/// What start-up reads: [`SessionState`] and every delivery, paged by `PAGE`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Loaded {
    retained: Vec<(String, Vec<u8>)>,
    sessions: Vec<(String, Vec<u8>)>,
    messages: Vec<StoredMessage>,
    incoming_qos2: Vec<(String, u16)>,
}

/// Small, so that the cases cross page boundaries.
const PAGE: usize = 3;

async fn load(h: &Harness) -> Loaded {
    let SessionState { retained, sessions, incoming_qos2 } = h.store.session_load().await.unwrap();
    let mut messages: Vec<StoredMessage> = Vec::new();
    loop {
        let after = messages.last().map(|m| (m.client_id.clone(), m.seq));
        let page = h.store.session_messages(after, PAGE).await.unwrap();
        assert!(page.len() <= PAGE, "a page holds at most its limit");
        let done = page.len() < PAGE;
        messages.extend(page);
        if done {
            return Loaded { retained, sessions, messages, incoming_qos2 };
        }
    }
}

pub(super) async fn mqtt_retained_set_replace_clear_and_survive_reopen(h: &mut Harness) {
    assert_eq!(load(h).await, Loaded::default());
    let put = |t: &str, b: &[u8]| SessionChange::PutRetained { topic: t.into(), body: b.to_vec() };
    h.store
        .session_apply(vec![put("b/1", b"one"), put("a/1", b"\x00\xff"), put("b/1", b"two")])
        .await
        .unwrap();
    h.store
        .session_apply(vec![put("c", b"x"), SessionChange::DeleteRetained { topic: "c".into() }])
        .await
        .unwrap();
    h.store.session_apply(vec![SessionChange::DeleteRetained { topic: "none".into() }]).await.unwrap();
    h.reopen().await;
    let state = load(h).await;
    assert_eq!(state.retained, vec![("a/1".into(), b"\x00\xff".to_vec()), ("b/1".into(), b"two".to_vec())]);
}

pub(super) async fn mqtt_sessions_messages_in_order_with_inflight_marks(h: &mut Harness) {
    h.store
        .session_apply(vec![
            put_session("s1", b"v1"),
            put_message("s1", 10, b"m10"),
            put_message("s1", 3, b"m3"),
            put_message("s1", 7, b"m7"),
            put_session("s2", b"w"),
            put_message("s2", 5, b"n5"),
        ])
        .await
        .unwrap();
    h.store
        .session_apply(vec![
            put_session("s1", b"v2"), // replaces the fields, keeps the messages
            SessionChange::MarkMessage { client_id: "s1".into(), seq: 3, packet_id: 1, stage: 1 },
            SessionChange::MarkMessage { client_id: "s1".into(), seq: 7, packet_id: 65535, stage: 1 },
            SessionChange::MarkMessage { client_id: "s1".into(), seq: 7, packet_id: 65535, stage: 2 },
            SessionChange::MarkMessage { client_id: "s1".into(), seq: 99, packet_id: 4, stage: 1 }, // absent
            SessionChange::DeleteMessage { client_id: "s2".into(), seq: 5 },
            SessionChange::DeleteMessage { client_id: "s2".into(), seq: 6 }, // absent
        ])
        .await
        .unwrap();
    h.reopen().await;
    let state = load(h).await;
    assert_eq!(state.sessions, vec![("s1".into(), b"v2".to_vec()), ("s2".into(), b"w".to_vec())]);
    assert_eq!(
        state.messages,
        vec![
            stored("s1", 3, b"m3", Some((1, 1))),
            stored("s1", 7, b"m7", Some((65535, 2))),
            stored("s1", 10, b"m10", None),
        ]
    );
    // a message put again (resent after a failed queue attempt) is not in flight
    h.store.session_apply(vec![put_message("s1", 3, b"m3bis")]).await.unwrap();
    assert_eq!(load(h).await.messages[0], stored("s1", 3, b"m3bis", None));
}

pub(super) async fn mqtt_delete_session_takes_its_messages_and_qos2_ids(h: &mut Harness) {
    let add = |c: &str, id: u16| SessionChange::AddIncomingQos2 { client_id: c.into(), packet_id: id };
    h.store
        .session_apply(vec![
            put_session("gone", b"g"),
            put_message("gone", 1, b"x"),
            add("gone", 7),
            put_session("kept", b"k"),
            put_message("kept", 2, b"y"),
            add("kept", 9),
            add("kept", 9), // twice: once
            add("kept", 65535),
            add("kept", 3),
            SessionChange::DeleteIncomingQos2 { client_id: "kept".into(), packet_id: 3 },
        ])
        .await
        .unwrap();
    h.store.session_apply(vec![SessionChange::DeleteSession { client_id: "gone".into() }]).await.unwrap();
    let state = load(h).await;
    assert_eq!(state.sessions, vec![("kept".into(), b"k".to_vec())]);
    assert_eq!(state.messages, vec![stored("kept", 2, b"y", None)]);
    assert_eq!(state.incoming_qos2, vec![("kept".into(), 9), ("kept".into(), 65535)]);
    // the same client id starts again from nothing
    h.store.session_apply(vec![put_session("gone", b"new")]).await.unwrap();
    let state = load(h).await;
    assert_eq!(state.sessions.len(), 2);
    assert!(state.messages.iter().all(|m| m.client_id == "kept"));
}

pub(super) async fn mqtt_batch_is_all_or_nothing_and_close_refuses(h: &mut Harness) {
    h.store.session_apply(vec![put_session("s", b"1")]).await.unwrap();
    // a batch with a key no backend can keep (NUL) is refused whole
    let bad = vec![put_message("s", 1, b"kept?"), put_session("bad\u{0}id", b"x")];
    assert!(h.store.session_apply(bad).await.is_err());
    assert!(load(h).await.messages.is_empty(), "the failed batch left nothing");
    let many: Vec<SessionChange> = (0..5000).map(|i| put_message("s", i, b"m")).collect();
    h.store.session_apply(many).await.unwrap();
    assert_eq!(load(h).await.messages.len(), 5000);
    h.store.close().await;
    assert!(h.store.session_apply(vec![put_session("t", b"2")]).await.is_err());
}
