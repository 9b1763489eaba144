//! The chain semantics, with members that record what they are shown.

use super::*;
use crate::host::LocalReply;
use crate::test_host::{BufferingProxy, TestHost};

/// What a recording member does at each callback.
#[derive(Clone, Copy, Default)]
struct Script {
    pause_request_headers: bool,
    /// Pause request body chunks until the end of stream (buffering).
    buffer_request: bool,
    reply_at_request_headers: bool,
    pause_response_headers: bool,
    buffer_response: bool,
    /// Remove the whole response body at its end (a 304).
    clear_response: bool,
}

type Log = Arc<std::sync::Mutex<Vec<String>>>;

struct Recorder {
    name: &'static str,
    script: Script,
    log: Log,
}

impl Recorder {
    fn note(&self, event: String) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {event}", self.name));
    }
}

fn text(bytes: Option<Vec<u8>>) -> String {
    String::from_utf8(bytes.unwrap_or_default()).unwrap()
}

impl Stream for Recorder {
    fn on_request_headers(&mut self, host: &mut dyn Host, eos: bool) -> Action {
        self.note(format!("req-headers eos={eos}"));
        if self.script.reply_at_request_headers {
            host.send_local_reply(LocalReply {
                status: 429,
                headers: Vec::new(),
                body: Vec::new(),
                grpc_status: None,
            });
            return Action::Pause;
        }
        if self.script.pause_request_headers {
            Action::Pause
        } else {
            Action::Continue
        }
    }
    fn on_request_body(&mut self, host: &mut dyn Host, size: usize, eos: bool) -> Action {
        self.note(format!(
            "req-body {:?} eos={eos}",
            text(host.request_body(0, size))
        ));
        if self.script.buffer_request && !eos {
            Action::Pause
        } else {
            Action::Continue
        }
    }
    fn on_response_headers(&mut self, _: &mut dyn Host, eos: bool) -> Action {
        self.note(format!("resp-headers eos={eos}"));
        if self.script.pause_response_headers {
            Action::Pause
        } else {
            Action::Continue
        }
    }
    fn on_response_body(&mut self, host: &mut dyn Host, size: usize, eos: bool) -> Action {
        self.note(format!(
            "resp-body {:?} eos={eos}",
            text(host.response_body(0, size))
        ));
        if self.script.clear_response && eos {
            host.clear_response_body(0, size);
        }
        if self.script.buffer_response && !eos {
            Action::Pause
        } else {
            Action::Continue
        }
    }
    fn on_response_trailers(&mut self, _: &mut dyn Host) -> Action {
        self.note("resp-trailers".into());
        Action::Continue
    }
}

fn bundle(scripts: &[(&'static str, Script)]) -> (BundleStream, Log) {
    let log: Log = Arc::default();
    let members = scripts
        .iter()
        .map(|(name, script)| {
            Member::new(Box::new(Recorder {
                name,
                script: *script,
                log: Arc::clone(&log),
            }))
        })
        .collect();
    (BundleStream::of(members), log)
}

fn taken(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn a_pausing_member_holds_the_ones_after_it_and_each_sees_its_own_view() {
    let buffering = Script {
        pause_request_headers: true,
        buffer_request: true,
        ..Script::default()
    };
    let (mut stream, log) = bundle(&[
        ("a", Script::default()),
        ("b", buffering),
        ("c", Script::default()),
    ]);
    let mut host = TestHost::default();
    let mut proxy = BufferingProxy::default();
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert_eq!(
        taken(&log),
        ["a req-headers eos=false", "b req-headers eos=false"]
    );

    assert_eq!(
        proxy.request_chunk(&mut stream, &mut host, "ab", false),
        Action::Pause
    );
    assert_eq!(
        taken(&log),
        [
            r#"a req-body "ab" eos=false"#,
            r#"b req-body "ab" eos=false"#
        ]
    );

    assert_eq!(
        proxy.request_chunk(&mut stream, &mut host, "cd", true),
        Action::Continue
    );
    assert_eq!(
        taken(&log),
        [
            // a streams: only the new bytes; b buffers: all of them; c was held back.
            r#"a req-body "cd" eos=true"#,
            r#"b req-body "abcd" eos=true"#,
            "c req-headers eos=false",
            r#"c req-body "abcd" eos=true"#,
        ]
    );
}

#[test]
fn streaming_members_see_each_chunk_once() {
    let (mut stream, log) = bundle(&[("a", Script::default()), ("b", Script::default())]);
    let mut host = TestHost::default();
    let mut proxy = BufferingProxy::default();
    assert_eq!(
        stream.on_request_headers(&mut host, false),
        Action::Continue
    );
    proxy.request_chunk(&mut stream, &mut host, "ab", false);
    proxy.request_chunk(&mut stream, &mut host, "cd", true);
    assert_eq!(
        taken(&log)[2..],
        [
            r#"a req-body "ab" eos=false"#,
            r#"b req-body "ab" eos=false"#,
            r#"a req-body "cd" eos=true"#,
            r#"b req-body "cd" eos=true"#,
        ]
    );
}

#[test]
fn a_local_reply_stops_the_request_and_only_earlier_members_see_the_response() {
    let replier = Script {
        reply_at_request_headers: true,
        ..Script::default()
    };
    let (mut stream, log) = bundle(&[
        ("a", Script::default()),
        ("b", replier),
        ("c", Script::default()),
    ]);
    let mut host = TestHost::default();
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Pause);
    assert_eq!(host.reply.as_ref().map(|r| r.status), Some(429));
    assert_eq!(stream.on_request_body(&mut host, 0, true), Action::Pause);
    stream.on_response_headers(&mut host, true);
    assert_eq!(
        taken(&log),
        [
            "a req-headers eos=true",
            "b req-headers eos=true",
            "a resp-headers eos=true",
        ]
    );
}

#[test]
fn the_response_runs_in_reverse_and_a_cleared_body_shortens_the_rest() {
    let not_modified = Script {
        pause_response_headers: true,
        buffer_response: true,
        clear_response: true,
        ..Script::default()
    };
    // Request order a, b: b is nearest the upstream, so it sees the response first.
    let (mut stream, log) = bundle(&[("a", Script::default()), ("b", not_modified)]);
    let mut host = TestHost::default();
    stream.on_request_headers(&mut host, true);
    taken(&log);
    let mut proxy = BufferingProxy::default();
    assert_eq!(stream.on_response_headers(&mut host, false), Action::Pause);
    assert_eq!(
        proxy.response_chunk(&mut stream, &mut host, "{\"id\"", false),
        Action::Pause
    );
    assert_eq!(
        proxy.response_chunk(&mut stream, &mut host, ":1}", true),
        Action::Continue
    );
    assert_eq!(
        taken(&log),
        [
            "b resp-headers eos=false",
            r#"b resp-body "{\"id\"" eos=false"#,
            r#"b resp-body "{\"id\":1}" eos=true"#,
            "a resp-headers eos=false",
            r#"a resp-body "" eos=true"#,
        ]
    );
    assert!(host.response_body.is_empty());
}

#[test]
fn trailers_release_held_members_with_the_body_they_missed() {
    let holder = Script {
        pause_response_headers: true,
        buffer_response: true,
        ..Script::default()
    };
    let (mut stream, log) = bundle(&[("a", Script::default()), ("b", holder)]);
    let mut host = TestHost::default();
    stream.on_request_headers(&mut host, true);
    taken(&log);
    let mut proxy = BufferingProxy::default();
    stream.on_response_headers(&mut host, false);
    proxy.response_chunk(&mut stream, &mut host, "frame", false);
    assert_eq!(stream.on_response_trailers(&mut host), Action::Continue);
    assert_eq!(
        taken(&log),
        [
            "b resp-headers eos=false",
            r#"b resp-body "frame" eos=false"#,
            "b resp-trailers",
            "a resp-headers eos=false",
            r#"a resp-body "frame" eos=false"#,
            "a resp-trailers",
        ]
    );
}
