//! JSON body + query string → request message, for every REST route of the contract.
//! Input layout: first byte picks the route, then `query \0 body`.
#![no_main]

use std::sync::OnceLock;

use edge_gateway::routes::Router;
use libfuzzer_sys::fuzz_target;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| Router::from_pool(meshgate_proto::descriptor_pool()).expect("contract routes build"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let routes = router().routes();
    let route = &routes[usize::from(pick) % routes.len()];
    let (query, body) = match rest.iter().position(|&b| b == 0) {
        Some(split) => (&rest[..split], &rest[split + 1..]),
        None => (&[][..], rest),
    };
    let query = std::str::from_utf8(query).ok();
    let bindings = vec![("id".to_owned(), "fuzz".to_owned())];
    if let Ok(message) = edge_gateway::transcode::build_request(route, &bindings, query, body) {
        // Whatever parses must encode and render back without panicking.
        let bytes = edge_gateway::transcode::encode(&message);
        let _ = edge_gateway::transcode::decode_response(&route.input(), &bytes);
    }
});
