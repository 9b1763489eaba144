//! Server-Sent Events (the WHATWG `text/event-stream` format), as the edge gateway writes a
//! server stream for REST clients: one event per message, comments as heartbeats.

/// The media type of an event stream.
pub const CONTENT_TYPE: &str = "text/event-stream";

/// One event: `event:` (when named), `id:` (when given), then `data` as `data:` lines (a data
/// line cannot hold a line break, so each line of `data` gets its own; clients join them with
/// `\n`), then the blank line that dispatches it. Line breaks in `name` are dropped: they
/// would start a field of their own.
pub fn event(name: Option<&str>, id: Option<u64>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend(name.bytes().filter(|b| !matches!(b, b'\r' | b'\n')));
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    for line in lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// A comment line, which clients ignore: keeps idle proxies from closing the connection.
pub fn comment(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(b':');
    if !text.is_empty() {
        out.push(b' ');
        out.extend(text.bytes().filter(|b| !matches!(b, b'\r' | b'\n')));
    }
    out.extend_from_slice(b"\n\n");
    out
}

/// The lines of `data` split at `\r\n`, `\r` or `\n` (the format's line ends); at least one.
fn lines(data: &str) -> impl Iterator<Item = &str> {
    data.split('\n')
        .flat_map(|line| line.strip_suffix('\r').unwrap_or(line).split('\r'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn an_event_is_its_fields_then_a_blank_line() {
        assert_eq!(
            text(event(Some("error"), Some(7), r#"{"code":8}"#)),
            "event: error\nid: 7\ndata: {\"code\":8}\n\n"
        );
        assert_eq!(text(event(None, None, "{}")), "data: {}\n\n");
    }

    #[test]
    fn every_line_of_the_data_gets_its_own_data_field() {
        assert_eq!(
            text(event(None, Some(1), "a\nb\r\nc\rd")),
            "id: 1\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(text(event(None, None, "")), "data: \n\n");
    }

    #[test]
    fn line_breaks_cannot_forge_fields() {
        assert_eq!(
            text(event(Some("x\ndata: forged"), None, "1")),
            "event: xdata: forged\ndata: 1\n\n"
        );
        assert_eq!(text(comment("keep\nalive")), ": keepalive\n\n");
        assert_eq!(text(comment("")), ":\n\n");
    }
}
