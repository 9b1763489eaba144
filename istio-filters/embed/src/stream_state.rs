//! One exchange's state, lent to the filters: the wasm guests reach it through the ABI
//! ([`StreamState`]), the native filters through [`crate::native`]'s host — the same maps,
//! buffers, properties and filter state either way.

use proxy_wasm_host::abi::v0_2_1::types::{BufferType, MapType, Status, StreamType};
use proxy_wasm_host::abi::v0_2_1::{Access, Invocation, LocalResponse, StreamState};
use proxy_wasm_host::{Buffer, HeaderMap, VecHeaderMap};

use crate::request::{Request, Response};

#[derive(Clone, Default)]
pub(crate) struct ExchangeState {
    pub(crate) request_headers: VecHeaderMap,
    pub(crate) request_body: Vec<u8>,
    pub(crate) response_headers: VecHeaderMap,
    pub(crate) response_body: Vec<u8>,
    pub(crate) response_trailers: VecHeaderMap,
    /// The request's properties (`request.path`, `source.address`, ...); few, so a list.
    properties: Vec<(&'static str, Vec<u8>)>,
    filter_state: Vec<(String, Vec<u8>)>,
    /// The local reply a filter sent (a later one replaces it, as in Envoy).
    pub(crate) local: Option<LocalResponse<'static>>,
}

fn to_map(pairs: &[(String, String)]) -> VecHeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase().into_bytes(), v.clone().into_bytes()))
        .collect()
}

pub(crate) fn from_map(map: &VecHeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let _ = map.for_each_pair(&mut |k, v| {
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
        std::ops::ControlFlow::Continue(())
    });
    out
}

impl ExchangeState {
    pub(crate) fn for_request(request: &Request) -> Self {
        let pseudo = [
            (":method", &request.method),
            (":path", &request.path),
            (":authority", &request.authority),
            (":scheme", &request.scheme),
        ];
        let request_headers = pseudo
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .chain(
                request
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase().into_bytes(), v.as_bytes().to_vec())),
            )
            .collect();
        let mut properties = vec![
            ("request.method", request.method.as_bytes().to_vec()),
            ("request.path", request.path.as_bytes().to_vec()),
            ("request.host", request.authority.as_bytes().to_vec()),
        ];
        if let Some(source) = &request.source_address {
            properties.push(("source.address", source.as_bytes().to_vec()));
        }
        if let Some(principal) = &request.peer_principal {
            properties.push((
                "connection.uri_san_peer_certificate",
                principal.as_bytes().to_vec(),
            ));
        }
        Self {
            request_headers,
            request_body: request.body.clone(),
            properties,
            ..Self::default()
        }
    }

    /// Copies the filters' request changes back (pseudo-headers into the fields).
    pub(crate) fn apply_to(&self, request: &mut Request) {
        let mut headers = Vec::new();
        for (k, v) in from_map(&self.request_headers) {
            match k.as_str() {
                ":method" => request.method = v,
                ":path" => request.path = v,
                ":authority" => request.authority = v,
                ":scheme" => request.scheme = v,
                _ => headers.push((k, v)),
            }
        }
        request.headers = headers;
        request.body.clone_from(&self.request_body);
    }

    pub(crate) fn set_response(&mut self, response: &Response) {
        let mut headers = vec![(":status".to_owned(), response.status.to_string())];
        headers.extend(response.headers.iter().cloned());
        self.response_headers = to_map(&headers);
        self.response_body.clone_from(&response.body);
        self.response_trailers = to_map(&response.trailers);
    }

    pub(crate) fn response(&self) -> Response {
        let mut status = 0;
        let mut headers = Vec::new();
        for (k, v) in from_map(&self.response_headers) {
            if k == ":status" {
                status = v.parse().unwrap_or(502);
            } else {
                headers.push((k, v));
            }
        }
        Response {
            status,
            headers,
            body: self.response_body.clone(),
            trailers: from_map(&self.response_trailers),
        }
    }

    /// A request property, else filter state set earlier (the latest value).
    pub(crate) fn property_value(&self, key: &str) -> Option<&[u8]> {
        self.properties
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_slice())
            .or_else(|| {
                self.filter_state
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.as_slice())
            })
    }

    pub(crate) fn set_filter_state(&mut self, key: String, value: &[u8]) {
        self.filter_state.retain(|(k, _)| *k != key);
        self.filter_state.push((key, value.to_vec()));
    }

    pub(crate) fn attributes(&self) -> Vec<(String, String)> {
        self.filter_state
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }
}

/// A property path as one dotted key (`["source", "address"]` → `source.address`).
pub(crate) fn joined(path: &[&[u8]]) -> String {
    let mut key = String::with_capacity(path.iter().map(|part| part.len() + 1).sum());
    for (index, part) in path.iter().enumerate() {
        if index > 0 {
            key.push('.');
        }
        key.push_str(&String::from_utf8_lossy(part));
    }
    key
}

impl StreamState for ExchangeState {
    fn header_map(
        &mut self,
        _: Invocation,
        _: Access,
        map: MapType,
    ) -> Result<&mut dyn HeaderMap, Status> {
        match map {
            MapType::HttpRequestHeaders => Ok(&mut self.request_headers),
            MapType::HttpResponseHeaders => Ok(&mut self.response_headers),
            MapType::HttpResponseTrailers => Ok(&mut self.response_trailers),
            _ => Err(Status::NotFound),
        }
    }

    fn buffer(
        &mut self,
        _: Invocation,
        _: Access,
        buffer: BufferType,
    ) -> Result<&mut dyn Buffer, Status> {
        match buffer {
            BufferType::HttpRequestBody => Ok(&mut self.request_body),
            BufferType::HttpResponseBody => Ok(&mut self.response_body),
            _ => Err(Status::NotFound),
        }
    }

    fn continue_stream(&mut self, _: Invocation, _: StreamType) -> Result<(), Status> {
        Ok(())
    }

    fn send_local_response(
        &mut self,
        _: Invocation,
        response: LocalResponse<'_>,
    ) -> Result<(), Status> {
        self.local = Some(response.into_owned());
        Ok(())
    }

    fn property(&mut self, _: Invocation, path: &[&[u8]], out: &mut Vec<u8>) -> Result<(), Status> {
        let value = self.property_value(&joined(path)).ok_or(Status::NotFound)?;
        out.extend_from_slice(value);
        Ok(())
    }

    fn set_property(&mut self, _: Invocation, path: &[&[u8]], value: &[u8]) -> Result<(), Status> {
        self.set_filter_state(joined(path), value);
        Ok(())
    }
}
