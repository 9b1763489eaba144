//! The bundle's stream: each member's own stream context, run in the chain's order with
//! Envoy's filter-chain semantics (pauses hold later members, per-member body views, local
//! replies seen only by the members before the replier).

use std::cell::RefCell;
use std::sync::Arc;

use super::member_host::{MemberHost, ReadCache};
use crate::catalog::Catalog;
use crate::filter::Stream;
use crate::host::{Action, Host};
use crate::inspect::RequestTarget;

/// The request identified once per stream: `RequestTarget::identify` asks the host first.
pub(super) type SharedTarget = RefCell<Option<(Arc<Catalog>, Arc<RequestTarget>)>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

pub(super) struct Member {
    stream: Box<dyn Stream + Send>,
    progress: [Progress; 2],
}

/// How far one side's body has reached a member, in absolute bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// The member continued past these bytes.
    seen: usize,
    /// The last callback showed it up to here (a pausing member is shown the growing buffer).
    shown: usize,
    /// It has had its end-of-stream body callback.
    ended: bool,
}

impl Member {
    pub(super) fn new(stream: Box<dyn Stream + Send>) -> Self {
        Self {
            stream,
            progress: [Progress::default(); 2],
        }
    }
}

/// One direction's progress through the members.
#[derive(Debug, Default)]
struct Flow {
    /// Absolute offset where the proxy's current body buffer starts: it moves on when the
    /// bundle continues (the proxy forwards and drains) and stays while the bundle pauses.
    base: usize,
    /// Absolute end of the body seen so far.
    end: usize,
    /// How many members (in this side's order) have had their headers callback.
    headers_delivered: usize,
    headers_end_of_stream: bool,
}

pub struct BundleStream {
    members: Vec<Member>,
    /// The request as the first member identified it, for the others (same catalog).
    target: SharedTarget,
    request: Flow,
    response: Flow,
    /// Request-order index of the member that sent a local reply.
    replied_by: Option<usize>,
}

/// A body callback to deliver: where the buffer ends (absolute) and whether it is the last.
#[derive(Clone, Copy)]
struct Body {
    end: usize,
    end_of_stream: bool,
}

impl BundleStream {
    pub(super) fn of(members: Vec<Member>) -> Self {
        Self {
            members,
            target: SharedTarget::default(),
            request: Flow::default(),
            response: Flow::default(),
            replied_by: None,
        }
    }

    /// Member indices in this side's order: the response runs in reverse, and after a local
    /// reply only the members before the replier see it.
    fn order(&self, side: Side) -> impl Iterator<Item = usize> + use<> {
        let count = self.replied_by.unwrap_or(self.members.len());
        (0..count).map(move |position| match side {
            Side::Request => position,
            Side::Response => count - 1 - position,
        })
    }

    fn flow(&mut self, side: Side) -> &mut Flow {
        match side {
            Side::Request => &mut self.request,
            Side::Response => &mut self.response,
        }
    }

    /// Delivers what each member has not seen yet, in order, until one pauses or replies.
    fn advance(&mut self, side: Side, host: &mut dyn Host, mut body: Option<Body>) -> Action {
        if side == Side::Request && self.replied_by.is_some() {
            return Action::Pause;
        }
        let slot = side as usize;
        let cache = ReadCache::default();
        for (position, index) in self.order(side).enumerate() {
            if position >= self.flow(side).headers_delivered {
                let end_of_stream = self.flow(side).headers_end_of_stream;
                let mut view = MemberHost::new(host, &cache, &self.target, 0);
                let stream = &mut self.members[index].stream;
                let action = match side {
                    Side::Request => stream.on_request_headers(&mut view, end_of_stream),
                    Side::Response => stream.on_response_headers(&mut view, end_of_stream),
                };
                let replied = view.replied;
                self.flow(side).headers_delivered = position + 1;
                // A pause at headers holds the members after it; with a body at hand, the
                // member goes on to its body callback first (as Envoy passes buffered data on
                // to a filter that just received its headers).
                let paused = if body.is_some() {
                    Action::Continue
                } else {
                    action
                };
                if let Some(action) = self.after_call(side, index, paused, replied) {
                    return action;
                }
            }
            let Some(current) = body else {
                continue;
            };
            let base = self.flow(side).base;
            let progress = self.members[index].progress[slot];
            let from = progress.seen.max(base);
            if progress.ended || (from >= current.end && !current.end_of_stream) {
                continue;
            }
            let mut view = MemberHost::new(host, &cache, &self.target, from - base);
            let size = current.end.saturating_sub(from);
            let stream = &mut self.members[index].stream;
            let action = match side {
                Side::Request => stream.on_request_body(&mut view, size, current.end_of_stream),
                Side::Response => stream.on_response_body(&mut view, size, current.end_of_stream),
            };
            // A member that removed response bytes (a 304) shortened the buffer for the rest.
            let end = current.end.saturating_sub(view.response_removed);
            let replied = view.replied;
            let progress = &mut self.members[index].progress[slot];
            progress.shown = end;
            if let Some(action) = self.after_call(side, index, action, replied) {
                return action;
            }
            let progress = &mut self.members[index].progress[slot];
            progress.seen = end;
            progress.ended = current.end_of_stream;
            body = Some(Body { end, ..current });
        }
        if let Some(body) = body {
            let flow = self.flow(side);
            flow.base = body.end;
            flow.end = body.end;
        }
        Action::Continue
    }

    /// `Some(action)` when the callback ends the pass: a local reply, or a pause.
    fn after_call(
        &mut self,
        side: Side,
        index: usize,
        action: Action,
        replied: bool,
    ) -> Option<Action> {
        if replied && side == Side::Request {
            self.replied_by = Some(index);
            return Some(Action::Pause);
        }
        (action == Action::Pause).then_some(Action::Pause)
    }

    fn body(&mut self, side: Side, host: &mut dyn Host, size: usize, eos: bool) -> Action {
        let flow = self.flow(side);
        let end = flow.base.saturating_add(size);
        flow.end = end;
        self.advance(
            side,
            host,
            Some(Body {
                end,
                end_of_stream: eos,
            }),
        )
    }
}

impl Stream for BundleStream {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        self.request.headers_end_of_stream = end_of_stream;
        self.advance(Side::Request, host, None)
    }

    fn on_request_body(&mut self, host: &mut dyn Host, body_size: usize, eos: bool) -> Action {
        self.body(Side::Request, host, body_size, eos)
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        self.response.headers_end_of_stream = end_of_stream;
        self.advance(Side::Response, host, None)
    }

    fn on_response_body(&mut self, host: &mut dyn Host, body_size: usize, eos: bool) -> Action {
        self.body(Side::Response, host, body_size, eos)
    }

    fn on_response_trailers(&mut self, host: &mut dyn Host) -> Action {
        // Trailers end the body: members a pause held back get their headers and the body
        // they have not been shown (without end of stream: the trailers are the end), then
        // every member the trailers. Nothing is left to wait for, so pauses hold no one now.
        let (base, end) = (self.response.base, self.response.end);
        let cache = ReadCache::default();
        for (position, index) in self.order(Side::Response).enumerate() {
            let held_back = position >= self.response.headers_delivered;
            let member = &mut self.members[index];
            if held_back {
                let mut view = MemberHost::new(host, &cache, &self.target, 0);
                member.stream.on_response_headers(&mut view, false);
                self.response.headers_delivered = position + 1;
            }
            let progress = &mut member.progress[1];
            let from = progress.shown.max(base);
            if from < end && !progress.ended {
                let mut view = MemberHost::new(host, &cache, &self.target, from - base);
                member.stream.on_response_body(&mut view, end - from, false);
                progress.shown = end;
                progress.seen = end;
            }
            let mut view = MemberHost::new(host, &cache, &self.target, 0);
            member.stream.on_response_trailers(&mut view);
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests;
