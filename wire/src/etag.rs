//! Entity-tag matching for conditional requests.

/// `If-None-Match` evaluation (RFC 9110 §13.1.2): `*` matches any current representation,
/// otherwise any listed tag equal to `etag` under weak comparison (`W/` ignored on both sides).
/// The list is read as entity-tags, so a comma inside a quoted tag does not split it.
pub fn if_none_match_hits(header: &str, etag: &str) -> bool {
    let ours = opaque(etag.trim());
    let mut rest = header.trim_start_matches([',', ' ', '\t']);
    while !rest.is_empty() {
        let (candidate, tail) = next_tag(rest);
        if candidate == "*" || opaque(candidate) == ours {
            return true;
        }
        rest = tail.trim_start_matches([',', ' ', '\t']);
    }
    false
}

/// A tag without its weakness indicator.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

/// The first list member of `list` (which starts at one) and what follows it: `[W/]"…"` up to
/// its closing quote, else up to the next comma.
fn next_tag(list: &str) -> (&str, &str) {
    let quoted_from = if list.starts_with("W/\"") {
        Some(2)
    } else if list.starts_with('"') {
        Some(0)
    } else {
        None
    };
    let end = quoted_from
        .and_then(|open| list[open + 1..].find('"').map(|close| open + close + 2))
        .unwrap_or_else(|| list.find(',').unwrap_or(list.len()));
    let (tag, tail) = list.split_at(end);
    (tag.trim_end(), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_comparison_over_the_list() {
        let tag = "\"a-ff\"";
        assert!(if_none_match_hits("\"a-ff\"", tag));
        assert!(if_none_match_hits("W/\"a-ff\"", tag));
        assert!(if_none_match_hits("\"x\", \"a-ff\"", tag));
        assert!(if_none_match_hits("\"x\",W/\"a-ff\"", tag));
        assert!(if_none_match_hits("W/\"a-ff\"", "W/\"a-ff\""));
        assert!(if_none_match_hits("*", tag));
        assert!(!if_none_match_hits("\"a-fe\"", tag));
        assert!(!if_none_match_hits("", tag));
        assert!(!if_none_match_hits("a-ff", tag));
    }

    #[test]
    fn a_comma_inside_a_tag_does_not_split_it() {
        assert!(if_none_match_hits("\"x\", \"a,b\"", "\"a,b\""));
        assert!(!if_none_match_hits("\"a,b\"", "\"b\""));
        assert!(!if_none_match_hits("\"a,b\"", "\"a"));
    }
}
