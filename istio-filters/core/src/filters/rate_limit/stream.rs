//! rate-limit's stream: the request identified (and its body read when a rule keys on a
//! message field), each applying rule's key built and its bucket taken; the first rule that
//! limits answers (or, in shadow mode, is only counted and logged).

use std::sync::Arc;

use super::reply::limited_reply;
use super::{Mode, Part, RateLimit, Rule};
use crate::bucket_table::Outcome;
use crate::filter::Stream;
use crate::host::{Action, Counters, Host, LogLevel};
use crate::inspect::{Decoded, RequestTarget};
use crate::token_bucket::Verdict;

pub struct RateLimitStream {
    root: Arc<RateLimit>,
    target: Option<Arc<RequestTarget>>,
    waiting_for_body: bool,
}

impl RateLimitStream {
    pub(super) fn new(root: Arc<RateLimit>) -> Self {
        Self {
            root,
            target: None,
            waiting_for_body: false,
        }
    }
}

impl Stream for RateLimitStream {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        let target = RequestTarget::identify(&self.root.catalog, host);
        let needs_body = self
            .root
            .rules
            .iter()
            .any(|r| r.applies_to(target.method) && r.needs_body());
        // Only a request whose body a rule reads needs its announced length.
        let body_fits = || {
            target
                .content_length()
                .is_none_or(|len| len <= self.root.max_body)
        };
        let mut wait = false;
        if needs_body && !end_of_stream {
            if body_fits() {
                wait = target.message_in_body();
            } else {
                self.root.counters.increment(host, "body_skipped");
            }
        }
        self.target = Some(target);
        if wait {
            self.waiting_for_body = true;
            return Action::Pause;
        }
        self.decide(host, &Decoded::Nothing)
    }

    fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !self.waiting_for_body {
            return Action::Continue;
        }
        if body_size > self.root.max_body {
            self.waiting_for_body = false;
            self.root.counters.increment(host, "body_skipped");
            return self.decide(host, &Decoded::Nothing);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.waiting_for_body = false;
        let decoded = match (&self.target, host.request_body(0, body_size)) {
            (Some(target), Some(body)) => match target.decode_request(&body) {
                Ok(decoded) => decoded,
                Err(problem) => {
                    self.root.counters.increment(host, "body_skipped");
                    host.log(
                        LogLevel::Debug,
                        &format!("rate-limit: body passed through: {problem}"),
                    );
                    Decoded::Nothing
                }
            },
            _ => Decoded::Nothing,
        };
        self.decide(host, &decoded)
    }
}

impl RateLimitStream {
    fn key(
        &self,
        rule: &Rule,
        host: &dyn Host,
        target: &RequestTarget,
        decoded: &Decoded,
    ) -> Option<Vec<u8>> {
        let mut key = Vec::with_capacity(64);
        for part in &rule.parts {
            let value = match part {
                Part::GrpcMethod => target.method_name()?,
                Part::Header(name) => target.header(name)?.to_owned(),
                Part::SourceAddress => strip_port(&text(host.property(&["source", "address"])?)),
                Part::Principal => {
                    text(host.property(&["connection", "uri_san_peer_certificate"])?)
                }
                Part::Field(path) => target.read_request_field(decoded, path)?,
            };
            // Unit separator between parts: ("a", "bc") and ("ab", "c") stay distinct.
            key.extend_from_slice(value.as_bytes());
            key.push(0x1f);
        }
        Some(key)
    }

    fn decide(&mut self, host: &mut dyn Host, decoded: &Decoded) -> Action {
        let Some(target) = self.target.take() else {
            return Action::Continue;
        };
        let root = Arc::clone(&self.root);
        let now = host.now_nanos();
        let mut limited: Option<(&Rule, Verdict)> = None;
        for rule in root.rules.iter().filter(|r| r.applies_to(target.method)) {
            let Some(key) = self.key(rule, host, &target, decoded) else {
                continue;
            };
            match rule.table.take(host, &rule.spec, &key, now) {
                Outcome::Decided { verdict, retries } => {
                    if retries > 0 {
                        add(host, &root.counters, "cas_retries", retries);
                    }
                    if !verdict.allowed && limited.is_none() {
                        limited = Some((rule, verdict));
                    }
                }
                Outcome::FailedOpen { retries } => {
                    add(host, &root.counters, "cas_retries", retries);
                    root.counters.increment(host, "failed_open");
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "rate-limit: rule {} failed open after {retries} CAS retries",
                            rule.name
                        ),
                    );
                }
            }
        }
        let Some((rule, verdict)) = limited else {
            root.counters.increment(host, "allowed");
            return Action::Continue;
        };
        if root.mode == Mode::Shadow {
            root.counters.increment(host, "shadow_limited");
            host.log(
                LogLevel::Info,
                &format!(
                    "rate-limit (shadow): rule {} would limit {}",
                    rule.name, target.path
                ),
            );
            return Action::Continue;
        }
        root.counters.increment(host, "limited");
        host.send_local_reply(limited_reply(rule, &verdict, &target));
        Action::Pause
    }
}

fn add(host: &mut dyn Host, counters: &Counters, name: &str, times: u32) {
    for _ in 0..times {
        counters.increment(host, name);
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `10.0.0.1:5555` → `10.0.0.1`, `[::1]:5555` → `::1`.
fn strip_port(address: &str) -> String {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_owned()
        }
        _ => address.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
    }
}
