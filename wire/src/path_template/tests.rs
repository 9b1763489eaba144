use super::*;

fn bind(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    PathTemplate::parse(template).unwrap().matches(path)
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn simple_variable() {
    assert_eq!(
        bind("/v1/users/{id}", "/v1/users/42"),
        Some(pairs(&[("id", "42")]))
    );
    assert_eq!(bind("/v1/users/{id}", "/v1/users"), None);
    assert_eq!(bind("/v1/users/{id}", "/v1/users/42/x"), None);
    assert_eq!(bind("/v1/users/{id}", "/v1/users/"), None);
}

#[test]
fn literal_only() {
    assert_eq!(bind("/v1/users", "/v1/users"), Some(vec![]));
    assert_eq!(bind("/v1/users", "/v1/user"), None);
}

#[test]
fn nested_field_with_multi_segment_pattern() {
    let got = bind("/v1/{name=shelves/*/books/**}", "/v1/shelves/1/books/a/b");
    assert_eq!(got, Some(pairs(&[("name", "shelves/1/books/a/b")])));
    let got = bind("/v1/{book.name=shelves/*}/x", "/v1/shelves/7/x");
    assert_eq!(got, Some(pairs(&[("book.name", "shelves/7")])));
    assert_eq!(bind("/v1/{book.name=shelves/*}/x", "/v1/racks/7/x"), None);
}

#[test]
fn explicit_single_wildcard_variable() {
    assert_eq!(
        bind("/v1/{id=*}", "/v1/a%20b"),
        Some(pairs(&[("id", "a b")]))
    );
}

#[test]
fn anonymous_wildcards() {
    assert_eq!(bind("/v1/*/items", "/v1/anything/items"), Some(vec![]));
    assert_eq!(bind("/static/**", "/static/a/b/c"), Some(vec![]));
    assert_eq!(bind("/static/**", "/static"), Some(vec![]));
}

#[test]
fn verb_suffix() {
    let template = PathTemplate::parse("/v1/{name=operations/*}:cancel").unwrap();
    assert_eq!(template.verb.as_deref(), Some("cancel"));
    assert_eq!(
        template.matches("/v1/operations/9:cancel"),
        Some(pairs(&[("name", "operations/9")]))
    );
    assert_eq!(template.matches("/v1/operations/9"), None);
    assert_eq!(template.matches("/v1/operations/9:undo"), None);
}

#[test]
fn multi_segment_keeps_encoded_slash() {
    assert_eq!(
        bind("/files/{path=**}", "/files/a%2Fb/c"),
        Some(pairs(&[("path", "a%2Fb/c")]))
    );
    assert_eq!(
        bind("/files/{id}", "/files/a%2Fb"),
        Some(pairs(&[("id", "a/b")]))
    );
}

#[test]
fn multi_segment_variable_keeps_encoded_slash_on_one_segment_too() {
    // Found by the rest_router fuzz target: a `**` variable matching a single segment used to
    // decode "%2F", so "/files/a%2Fb" and "/files/a/b" bound the same value.
    assert_eq!(
        bind("/files/{path=**}", "/files/a%2Fb"),
        Some(pairs(&[("path", "a%2Fb")]))
    );
    assert_eq!(
        bind("/files/{path=**}", "/files/a/b"),
        Some(pairs(&[("path", "a/b")]))
    );
    assert_eq!(
        bind("/{name=**}", "/%2F%28"),
        Some(pairs(&[("name", "%2F(")]))
    );
    assert_eq!(bind("/{name=**}", "/"), Some(pairs(&[("name", "")])));
    assert_eq!(
        bind("/v1/{name=shelves}", "/v1/shelves"),
        Some(pairs(&[("name", "shelves")]))
    );
}

#[test]
fn rejects_bad_templates() {
    for bad in [
        "v1/users",
        "/v1/{id",
        "/v1/{}",
        "/v1/**/x",
        "/v1/{a={b}}",
        "/v1/{id}/{id}",
        "/v1//x",
        "/v1/x:",
        "/v1/{a..b}",
        "/v1/{=x}",
        "/v1/**/**",
        "/v1/{a b}",
        "/v1/{é}",
    ] {
        assert!(
            PathTemplate::parse(bad).is_err(),
            "{bad} should be rejected"
        );
    }
}

#[test]
fn bad_percent_encoding_does_not_match() {
    assert_eq!(bind("/v1/{id}", "/v1/%zz"), None);
    assert_eq!(bind("/v1/{id}", "/v1/%f"), None);
    // Found by the rest_router fuzz target: a sign is not a hex digit.
    for bad in ["%+F", "%-1", "%+0", "a%+Fb"] {
        assert_eq!(bind("/v1/{id}", &format!("/v1/{bad}")), None, "{bad}");
    }
    assert_eq!(bind("/v1/{id}", "/v1/%4a%4A"), Some(pairs(&[("id", "JJ")])));
}

#[test]
fn query_and_fragment_are_ignored() {
    assert_eq!(
        bind("/v1/users/{id}", "/v1/users/abc?x=1"),
        Some(pairs(&[("id", "abc")]))
    );
    assert_eq!(bind("/v1/users", "/v1/users#top"), Some(vec![]));
    assert_eq!(bind("/v1/users/{id}", "/v1/users?id=1"), None);
}

#[test]
fn nested_field_paths_in_several_variables() {
    assert_eq!(
        bind(
            "/v1/{name=shelves/*}/books/{book.id}",
            "/v1/shelves/s1/books/b2"
        ),
        Some(pairs(&[("name", "shelves/s1"), ("book.id", "b2")]))
    );
    assert_eq!(
        bind("/v1/{name=files/**}", "/v1/files/a/b/c"),
        Some(pairs(&[("name", "files/a/b/c")]))
    );
    assert_eq!(
        bind("/v1/{name=files/**}", "/v1/files"),
        Some(pairs(&[("name", "files")]))
    );
}

#[test]
fn specificity_prefers_literals() {
    let literal = PathTemplate::parse("/v1/users/me").unwrap();
    let variable = PathTemplate::parse("/v1/users/{id}").unwrap();
    assert!(literal.specificity() > variable.specificity());
}

#[test]
fn segment_counts_agree_with_matching() {
    assert_eq!(request_segments("/"), Some(0));
    assert_eq!(request_segments("/v1/users/7?x=/y#/z"), Some(3));
    assert_eq!(request_segments("/v1/users:watch"), Some(2));
    assert_eq!(request_segments("v1/users"), None);
    let templates = [
        "/v1/users/{id}",
        "/v1/users",
        "/v1/users:watch",
        "/v1/{name=shelves/*/books/*}",
        "/files/{path=**}",
        "/a/**",
    ];
    let paths = [
        "/v1/users/7",
        "/v1/users",
        "/v1/users:watch",
        "/v1/shelves/1/books/2",
        "/files",
        "/files/a/b/c",
        "/a",
        "/a/b",
        "/",
        "/v1/users/7/x?y",
    ];
    for template in templates {
        let template = PathTemplate::parse(template).unwrap();
        for path in paths {
            if template.matches(path).is_some() {
                assert!(
                    template.accepts_segments(request_segments(path).unwrap()),
                    "{template} should accept {path}"
                );
            }
        }
    }
}
