//! Two host calls made directly, where the SDK's wrappers cost more guest work than the call:
//! - a header map: the SDK's `get_map` checks and copies each name and value on its own (and
//!   traps on one that is not UTF-8); here the strings are checked as one block, and a map with
//!   invalid UTF-8 is decoded lossily instead of trapping;
//! - a one-segment property (every `meshgate.*` filter-state key): the SDK serialises the path
//!   into a new buffer, but a one-segment path is its own serialisation.
//!
//! Same imports as the SDK's (`env.proxy_get_header_map_pairs`, `env.proxy_set_property`), so
//! the module's ABI does not change.

use std::ptr::null_mut;

use proxy_wasm::types::MapType;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

/// Every pair of a header map (empty when the host has none or refuses).
pub fn header_map(map: MapType) -> Vec<(String, String)> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes the address and size of a buffer it allocated in this module
    // (through `proxy_on_memory_allocate`), or leaves them alone.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    if status != 0 || data.is_null() {
        return Vec::new();
    }
    // SAFETY: the buffer is ours now; the SDK's `proxy_on_memory_allocate` made it as a
    // `Vec<u8>` of capacity and length `size` (its own `get_map` frees it the same way).
    let bytes = unsafe { Vec::from_raw_parts(data, size, size) };
    decode_map(&bytes)
}

/// Sets filter state at `key` (a one-segment property path).
pub fn set_property(key: &str, value: &[u8]) {
    // SAFETY: both slices are valid for the call; the host copies them.
    unsafe {
        proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len());
    }
}

/// The proxy-wasm serialised map: a u32 count, a (name size, value size) u32 pair per entry,
/// then each name and value followed by a NUL. A malformed tail is dropped.
fn decode_map(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| -> Option<usize> {
        let raw = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(raw.try_into().ok()?) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let Some(strings) = count
        .checked_mul(8)
        .and_then(|table| table.checked_add(4))
        .and_then(|end| bytes.get(end..))
    else {
        return Vec::new();
    };
    // One check for all the strings (NULs are ASCII, so they stay on char boundaries).
    let text = std::str::from_utf8(strings).ok();
    let piece = |from: usize, len: usize| -> Option<String> {
        let end = from.checked_add(len)?;
        match text {
            Some(text) => text.get(from..end).map(str::to_owned),
            None => Some(String::from_utf8_lossy(strings.get(from..end)?).into_owned()),
        }
    };
    let mut pairs = Vec::with_capacity(count.min(strings.len() / 2));
    let mut at = 0usize;
    for entry in 0..count {
        let (Some(name_len), Some(value_len)) = (word(4 + entry * 8), word(8 + entry * 8)) else {
            break;
        };
        let Some(name) = piece(at, name_len) else {
            break;
        };
        at = at.saturating_add(name_len).saturating_add(1);
        let Some(value) = piece(at, value_len) else {
            break;
        };
        at = at.saturating_add(value_len).saturating_add(1);
        pairs.push((name, value));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialise(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut bytes = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            for part in [name, value] {
                bytes.extend_from_slice(part);
                bytes.push(0);
            }
        }
        bytes
    }

    #[test]
    fn decodes_the_serialised_map() {
        let bytes = serialise(&[
            (b":path", b"/v1/users/7"),
            (b"x-empty", b""),
            (b"x-name", "Zoë".as_bytes()),
        ]);
        assert_eq!(
            decode_map(&bytes),
            [
                (":path".to_owned(), "/v1/users/7".to_owned()),
                ("x-empty".to_owned(), String::new()),
                ("x-name".to_owned(), "Zoë".to_owned()),
            ]
        );
        assert!(decode_map(&serialise(&[])).is_empty());
        assert!(decode_map(&[]).is_empty());
    }

    #[test]
    fn bad_utf8_is_lossy_and_a_truncated_map_keeps_its_whole_entries() {
        let bytes = serialise(&[(b"a", b"\xff1"), (b"b", b"2")]);
        assert_eq!(
            decode_map(&bytes),
            [
                ("a".to_owned(), "\u{fffd}1".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
        let bytes = serialise(&[(b"a", b"1"), (b"b", b"22")]);
        assert_eq!(
            decode_map(&bytes[..bytes.len() - 2]),
            [("a".to_owned(), "1".to_owned())]
        );
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_map(&huge).is_empty());
    }
}
