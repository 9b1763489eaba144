//! Downstream connection limits, host-independent: admission against the total and per-client
//! caps ([`Admission`]), the effective cap under the open-file limit ([`effective_max`]) and the
//! deadline by which a connection must have delivered a complete request header
//! ([`HeaderDeadline`]). The listener seam that applies them is [`crate::listener`].

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// `gateway.connections`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionSettings {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max: usize,
    /// 0: no per-client cap.
    pub max_per_client_ip: usize,
}

/// Descriptors kept free for upstream connections, DNS sockets, health checks and files.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// The connection cap that keeps the process below its open-file limit: reaching the limit
/// would make every upstream connect (and so every client's next request) fail too.
pub fn effective_max(configured: usize, open_file_limit: Option<u64>) -> usize {
    match open_file_limit {
        Some(limit) => {
            let room = limit.saturating_sub(RESERVED_DESCRIPTORS).max(1);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    PerClientIp,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::PerClientIp => "max_per_client_ip",
        }
    }
}

/// Open connections, in total and per client address.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    max_per_client: usize,
    open: usize,
    per_client: HashMap<IpAddr, usize>,
}

impl Admission {
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            max,
            max_per_client,
            open: 0,
            per_client: HashMap::new(),
        }
    }

    pub fn open(&self) -> usize {
        self.open
    }

    /// Counts the connection in, or says why not. Every admitted connection is released once.
    pub fn admit(&mut self, client: Option<IpAddr>) -> Result<(), Refusal> {
        if self.open >= self.max {
            return Err(Refusal::MaxConnections);
        }
        if let Some(ip) = client
            && self.max_per_client > 0
        {
            let count = self.per_client.entry(ip).or_insert(0);
            if *count >= self.max_per_client {
                return Err(Refusal::PerClientIp);
            }
            *count += 1;
        }
        self.open += 1;
        Ok(())
    }

    pub fn release(&mut self, client: Option<IpAddr>) {
        self.open = self.open.saturating_sub(1);
        if let Some(ip) = client
            && self.max_per_client > 0
            && let Some(count) = self.per_client.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&ip);
            }
        }
    }
}

/// When a connection must have delivered a complete request header. Armed when it opens and,
/// on HTTP/1.1, again when a request ends (the idle time plus the header time); disarmed while
/// a request is in progress and, on HTTP/2, for good after the first request (its idle
/// connections are closed by the HTTP/2 idle timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderDeadline {
    at: Option<Instant>,
    http2: bool,
}

impl HeaderDeadline {
    pub fn opened(now: Instant, settings: &ConnectionSettings) -> Self {
        Self {
            at: Some(now + settings.header_read_timeout),
            http2: false,
        }
    }

    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// A complete request header arrived.
    pub fn request_started(&mut self, http2: bool) {
        self.at = None;
        self.http2 |= http2;
    }

    /// A request ended; the connection may carry the next one. True when this armed the
    /// deadline: only then must a watcher waiting on the disarmed deadline be woken (clearing
    /// or keeping it needs no wake-up: a watcher sleeping until an older instant re-reads it).
    #[must_use]
    pub fn request_ended(&mut self, now: Instant, settings: &ConnectionSettings) -> bool {
        if self.http2 {
            return false;
        }
        self.at = Some(now + settings.idle_timeout + settings.header_read_timeout);
        true
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: ConnectionSettings = ConnectionSettings {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max: 3,
        max_per_client_ip: 2,
    };

    #[test]
    fn admission_caps_total_and_per_client() {
        let a: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let b: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let mut admission = Admission::new(S.max, S.max_per_client_ip);
        assert_eq!(admission.admit(a), Ok(()));
        assert_eq!(admission.admit(a), Ok(()));
        assert_eq!(admission.admit(a), Err(Refusal::PerClientIp));
        assert_eq!(admission.admit(b), Ok(()));
        assert_eq!(admission.admit(None), Err(Refusal::MaxConnections));
        assert_eq!(admission.open(), 3);
        admission.release(a);
        assert_eq!(admission.admit(None), Ok(()));
        admission.release(None);
        admission.release(a);
        admission.release(b);
        assert_eq!(admission.open(), 0);
        assert!(admission.per_client.is_empty(), "no entries left behind");
        // Without a per-client cap, one address may take every slot.
        let mut admission = Admission::new(2, 0);
        assert_eq!(admission.admit(a), Ok(()));
        assert_eq!(admission.admit(a), Ok(()));
        assert_eq!(admission.admit(b), Err(Refusal::MaxConnections));
    }

    #[test]
    fn the_cap_stays_below_the_open_file_limit() {
        assert_eq!(effective_max(4096, None), 4096);
        assert_eq!(effective_max(4096, Some(1_048_576)), 4096);
        assert_eq!(effective_max(4096, Some(1024)), 768);
        assert_eq!(effective_max(4096, Some(100)), 1);
    }

    #[test]
    fn header_deadline_follows_the_request_cycle() {
        let start = Instant::now();
        let mut deadline = HeaderDeadline::opened(start, &S);
        assert!(!deadline.expired(start + Duration::from_secs(9)));
        assert!(deadline.expired(start + Duration::from_secs(10)));
        deadline.request_started(false);
        assert!(!deadline.expired(start + Duration::from_secs(3600)));
        let ended = start + Duration::from_secs(20);
        assert!(
            deadline.request_ended(ended, &S),
            "re-armed: the watcher must wake"
        );
        assert!(!deadline.expired(ended + Duration::from_secs(69)));
        assert!(deadline.expired(ended + Duration::from_secs(70)));
        // HTTP/2: disarmed for good after the first request.
        let mut deadline = HeaderDeadline::opened(start, &S);
        deadline.request_started(true);
        assert!(
            !deadline.request_ended(ended, &S),
            "nothing to wake on HTTP/2"
        );
        assert_eq!(deadline.at(), None);
    }
}
