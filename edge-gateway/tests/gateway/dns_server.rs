//! A real DNS server on loopback (hickory-server over UDP and TCP) whose answers the tests
//! change while traffic runs: A/AAAA records with a TTL, SERVFAIL, or no answer at all.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Metadata, ResponseCode},
        rr::{
            Name, RData, Record, RecordType,
            rdata::{A, AAAA},
        },
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Answer,
    ServFail,
    /// Never answers (the resolver times out).
    Silent,
}

#[derive(Debug)]
struct Zone {
    records: HashMap<String, Vec<IpAddr>>,
    ttl: u32,
    behaviour: Behaviour,
    queries: usize,
}

#[derive(Clone)]
struct Handler(Arc<Mutex<Zone>>);

fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let (behaviour, answers, ttl, name, query_type) = {
            let mut zone = self.0.lock().unwrap();
            zone.queries += 1;
            let query = &request.queries.queries()[0];
            let name = query.name().to_string();
            let answers = zone.records.get(&normalise(&name)).cloned();
            (zone.behaviour, answers, zone.ttl, name, query.query_type())
        };
        let builder = MessageResponseBuilder::new(&request.queries, None);
        let sent = match (behaviour, answers) {
            (Behaviour::Silent, _) => std::future::pending().await,
            (Behaviour::ServFail, _) => {
                response
                    .send_response(builder.error_msg(&request.metadata, ResponseCode::ServFail))
                    .await
            }
            (Behaviour::Answer, None) => {
                response
                    .send_response(builder.error_msg(&request.metadata, ResponseCode::NXDomain))
                    .await
            }
            (Behaviour::Answer, Some(addresses)) => {
                let owner = Name::from_ascii(&name).unwrap();
                let records: Vec<Record> = addresses
                    .into_iter()
                    .filter_map(|ip| match (ip, query_type) {
                        (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(v4))),
                        (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
                        _ => None,
                    })
                    .map(|rdata| Record::from_rdata(owner.clone(), ttl, rdata))
                    .collect();
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.authoritative = true;
                response
                    .send_response(builder.build(metadata, records.iter(), [], [], []))
                    .await
            }
        };
        sent.unwrap_or_else(|e| panic!("test DNS server could not answer: {e}"))
    }
}

/// The running server; dropped with the test's runtime.
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    _server: Server<Handler>,
}

impl TestDns {
    /// Serves on a loopback port (the same port for UDP and TCP) with records of `ttl` seconds.
    pub async fn start(ttl: u32) -> Self {
        let zone = Arc::new(Mutex::new(Zone {
            records: HashMap::new(),
            ttl,
            behaviour: Behaviour::Answer,
            queries: 0,
        }));
        let mut server = Server::new(Handler(zone.clone()));
        // Find a port free for both protocols.
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        Self {
            addr,
            zone,
            _server: server,
        }
    }

    /// Makes `name` resolve to `addresses` (A for IPv4, AAAA for IPv6).
    pub fn set(&self, name: &str, addresses: &[IpAddr]) {
        self.zone
            .lock()
            .unwrap()
            .records
            .insert(normalise(name), addresses.to_vec());
    }

    pub fn behave(&self, behaviour: Behaviour) {
        self.zone.lock().unwrap().behaviour = behaviour;
    }

    /// Queries received so far (A and AAAA count separately).
    pub fn queries(&self) -> usize {
        self.zone.lock().unwrap().queries
    }
}
