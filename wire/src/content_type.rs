//! `content-type` parsing: a media type's essence, and which gRPC protocol (if any) it names.

/// A `content-type`'s essence: `type/subtype` in lowercase, parameters dropped.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// How a request speaks, from its `content-type` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `application/grpc[+codec]`.
    Grpc,
    /// `application/grpc-web[+codec]`.
    GrpcWeb,
    /// `application/grpc-web-text[+codec]`: the frames base64-encoded.
    GrpcWebText,
    /// Anything else: REST/JSON or plain HTTP.
    Http,
}

impl Protocol {
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        content_type.map_or(Self::Http, |value| grpc_parts(value).0)
    }

    pub fn is_grpc_family(self) -> bool {
        !matches!(self, Self::Http)
    }
}

/// The protocol of a content type, and whether its messages are protobuf (the type names no
/// codec, or `+proto`).
fn grpc_parts(content_type: &str) -> (Protocol, bool) {
    let media = media_type(content_type);
    let (base, protobuf) = match media.split_once('+') {
        Some((base, codec)) => (base, codec == "proto"),
        None => (media.as_str(), true),
    };
    let protocol = match base {
        "application/grpc" => Protocol::Grpc,
        "application/grpc-web" => Protocol::GrpcWeb,
        "application/grpc-web-text" => Protocol::GrpcWebText,
        _ => Protocol::Http,
    };
    (protocol, protobuf)
}

/// The gRPC protocol of a content type whose messages are protobuf (no codec, or `+proto`);
/// `None` for other codecs (`+json`) and for anything that is not gRPC.
pub fn grpc_protobuf(content_type: &str) -> Option<Protocol> {
    match grpc_parts(content_type) {
        (protocol, true) if protocol.is_grpc_family() => Some(protocol),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_drops_parameters_and_case() {
        assert_eq!(
            media_type(" Application/JSON ; charset=utf-8"),
            "application/json"
        );
        assert_eq!(media_type(""), "");
    }

    #[test]
    fn classifies_content_types() {
        for (content_type, protocol) in [
            ("application/grpc", Protocol::Grpc),
            ("application/grpc+proto", Protocol::Grpc),
            ("application/grpc+json", Protocol::Grpc),
            ("Application/GRPC", Protocol::Grpc),
            ("application/grpc-web+proto", Protocol::GrpcWeb),
            (
                "Application/GRPC-WEB-TEXT; charset=x",
                Protocol::GrpcWebText,
            ),
            ("application/json", Protocol::Http),
            ("application/grpcx", Protocol::Http),
        ] {
            assert_eq!(
                Protocol::from_content_type(Some(content_type)),
                protocol,
                "{content_type}"
            );
        }
        assert_eq!(Protocol::from_content_type(None), Protocol::Http);
        assert!(Protocol::GrpcWebText.is_grpc_family() && !Protocol::Http.is_grpc_family());
    }

    #[test]
    fn protobuf_codec_only() {
        assert_eq!(
            grpc_protobuf("application/grpc-web"),
            Some(Protocol::GrpcWeb)
        );
        assert_eq!(
            grpc_protobuf("application/grpc-web-text+proto"),
            Some(Protocol::GrpcWebText)
        );
        assert_eq!(grpc_protobuf("application/grpc-web+json"), None);
        assert_eq!(grpc_protobuf("text/plain"), None);
    }
}
