//! The host as one member of the bundle sees it: what the members of one callback read is
//! fetched from the proxy once and shared, each member's body view starts where it last
//! continued, and its local reply and removed response bytes are noted for the stream.

use std::cell::RefCell;
use std::sync::Arc;

use super::stream::SharedTarget;
use crate::catalog::Catalog;
use crate::host::{Host, HostLayer, LocalReply, header_value, set_header_value};
use crate::inspect::RequestTarget;

/// What the members of one bundle callback read from the proxy, fetched once and shared:
/// each fetch crosses the wasm boundary and copies, and two or three members read the same
/// headers and bodies. Kept in step with the members' own changes.
#[derive(Default)]
pub(super) struct ReadCache {
    request_headers: RefCell<Option<Vec<(String, String)>>>,
    response_headers: RefCell<Option<Vec<(String, String)>>>,
    /// The last body read: (absolute start, size, bytes).
    request_body: RefCell<Option<(usize, usize, Vec<u8>)>>,
    response_body: RefCell<Option<(usize, usize, Vec<u8>)>>,
}

/// `fetch` once per (start, size); later reads of the same range are copies from the cache.
fn cached_body(
    slot: &RefCell<Option<(usize, usize, Vec<u8>)>>,
    start: usize,
    size: usize,
    fetch: impl FnOnce() -> Option<Vec<u8>>,
) -> Option<Vec<u8>> {
    let mut slot = slot.borrow_mut();
    if let Some((s, n, bytes)) = slot.as_ref()
        && (*s, *n) == (start, size)
    {
        return Some(bytes.clone());
    }
    let bytes = fetch()?;
    *slot = Some((start, size, bytes.clone()));
    Some(bytes)
}

pub(super) struct MemberHost<'h, 'c> {
    inner: &'h mut dyn Host,
    cache: &'c ReadCache,
    target: &'c SharedTarget,
    /// Where this member's body view starts in the proxy's buffer.
    body_offset: usize,
    /// It sent a local reply.
    pub(super) replied: bool,
    /// Response body bytes it removed (a 304).
    pub(super) response_removed: usize,
}

impl<'h, 'c> MemberHost<'h, 'c> {
    pub(super) fn new(
        inner: &'h mut dyn Host,
        cache: &'c ReadCache,
        target: &'c SharedTarget,
        body_offset: usize,
    ) -> Self {
        Self {
            inner,
            cache,
            target,
            body_offset,
            replied: false,
            response_removed: 0,
        }
    }
}

impl HostLayer for MemberHost<'_, '_> {
    fn inner(&self) -> &dyn Host {
        &*self.inner
    }
    fn inner_mut(&mut self) -> &mut dyn Host {
        &mut *self.inner
    }

    fn request_header(&self, name: &str) -> Option<String> {
        let mut cached = self.cache.request_headers.borrow_mut();
        header_value(
            cached.get_or_insert_with(|| self.inner.request_headers()),
            name,
        )
        .map(str::to_owned)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        // The first identification takes the whole list (and shares its target), so a
        // fetched list is handed over, not copied into the cache as well.
        match &*self.cache.request_headers.borrow() {
            Some(headers) => headers.clone(),
            None => self.inner.request_headers(),
        }
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        self.inner.set_request_header(name, value);
        if let Some(headers) = self.cache.request_headers.borrow_mut().as_mut() {
            set_header_value(headers, name, value);
        }
        if let Some((_, target)) = self.target.borrow_mut().as_mut() {
            Arc::make_mut(target).set_header(name, value);
        }
    }
    fn response_header(&self, name: &str) -> Option<String> {
        let mut cached = self.cache.response_headers.borrow_mut();
        header_value(
            cached.get_or_insert_with(|| self.inner.response_headers()),
            name,
        )
        .map(str::to_owned)
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        let mut cached = self.cache.response_headers.borrow_mut();
        cached
            .get_or_insert_with(|| self.inner.response_headers())
            .clone()
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        self.inner.set_response_header(name, value);
        if let Some(headers) = self.cache.response_headers.borrow_mut().as_mut() {
            set_header_value(headers, name, value);
        }
    }
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let start = self.body_offset.saturating_add(start);
        cached_body(&self.cache.request_body, start, size, || {
            self.inner.request_body(start, size)
        })
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        let start = self.body_offset.saturating_add(start);
        cached_body(&self.cache.response_body, start, size, || {
            self.inner.response_body(start, size)
        })
    }
    fn clear_response_body(&mut self, start: usize, size: usize) {
        self.inner
            .clear_response_body(self.body_offset.saturating_add(start), size);
        self.cache.response_body.replace(None);
        self.response_removed = self.response_removed.saturating_add(size);
    }
    fn send_local_reply(&mut self, reply: LocalReply) {
        self.replied = true;
        self.inner.send_local_reply(reply);
    }
    fn shared_target(&self, catalog: &Arc<Catalog>) -> Option<Arc<RequestTarget>> {
        match &*self.target.borrow() {
            Some((known, target)) if Arc::ptr_eq(known, catalog) => Some(Arc::clone(target)),
            _ => None,
        }
    }
    fn share_target(&self, catalog: &Arc<Catalog>, target: &Arc<RequestTarget>) {
        *self.target.borrow_mut() = Some((Arc::clone(catalog), Arc::clone(target)));
    }
}
