//! The schema against prost-reflect on the same descriptor set: the same routes, methods and
//! fields, the same verdict on bytes, the same text for every scalar kind the set has.
// Against prost-reflect, which the `descriptors` feature brings.
#![cfg(feature = "descriptors")]

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind as ReflectKind, ReflectMessage, Value as ReflectValue};
use rand::{Rng, SeedableRng};

use super::*;
use crate::routes::Router;

fn pool() -> &'static prost_reflect::DescriptorPool {
    meshgate_proto::descriptor_pool()
}

fn schema() -> Schema {
    Schema::decode(meshgate_proto::FILE_DESCRIPTOR_SET).unwrap()
}

fn message_id(schema: &Schema, name: &str) -> MessageId {
    schema
        .messages
        .iter()
        .position(|m| m.full_name == name)
        .unwrap()
}

#[test]
fn routes_are_the_pools_routes() {
    let schema = schema();
    let ours = schema.router().unwrap();
    let theirs = Router::from_pool(pool()).unwrap();
    assert_eq!(ours.routes().len(), theirs.routes().len());
    assert!(!ours.routes().is_empty());
    for (a, b) in ours.routes().iter().zip(theirs.routes()) {
        assert_eq!(a.label(), b.label());
        assert_eq!(a.grpc_path, b.grpc_path);
        assert_eq!(a.body, b.body);
        assert_eq!(a.response_body, b.response_body);
        assert_eq!(a.success_code, b.success_code);
        assert_eq!(a.location, b.location);
        let method = &schema.methods[a.method];
        assert_eq!(
            format!("{}.{}", method.service, method.name),
            b.method.full_name()
        );
    }
    let (route, bindings) = ours.lookup(&http::Method::GET, "/v1/users/u1").unwrap();
    assert_eq!(route.grpc_path, "/user.UserService/GetUser");
    assert_eq!(bindings, vec![("id".to_owned(), "u1".to_owned())]);
}

#[test]
fn methods_and_fields_are_the_pools() {
    let schema = schema();
    for service in pool().services() {
        for method in service.methods() {
            let id = schema.method(service.full_name(), method.name()).unwrap();
            let ours = &schema.methods[id];
            assert_eq!(
                schema.messages[ours.input].full_name,
                method.input().full_name()
            );
            assert_eq!(
                schema.messages[ours.output].full_name,
                method.output().full_name()
            );
            assert_eq!(ours.server_streaming, method.is_server_streaming());
        }
    }
    assert!(schema.method("user.UserService", "Nope").is_none());
    for message in pool().all_messages() {
        let ours = &schema.messages[message_id(&schema, message.full_name())];
        assert_eq!(
            ours.fields.len(),
            message.fields().len(),
            "{}",
            message.full_name()
        );
        for field in message.fields() {
            let f = ours.field(field.name()).unwrap();
            assert_eq!(f.number, field.number());
            assert_eq!(f.json_name, field.json_name());
            assert_eq!(f.repeated, field.is_list() || field.is_map());
            assert_eq!(
                f.presence,
                field.supports_presence(),
                "{}",
                field.full_name()
            );
        }
    }
}

/// prost-reflect's value of a field, as text the way the filters always spelled it.
fn reflect_text(message: &DynamicMessage, name: &str) -> Option<String> {
    let field = message.descriptor().get_field_by_name(name)?;
    if !message.has_field(&field) {
        return None;
    }
    Some(match message.get_field(&field).into_owned() {
        ReflectValue::Bool(v) => v.to_string(),
        ReflectValue::I32(v) => v.to_string(),
        ReflectValue::I64(v) => v.to_string(),
        ReflectValue::U32(v) => v.to_string(),
        ReflectValue::U64(v) => v.to_string(),
        ReflectValue::F32(v) => v.to_string(),
        ReflectValue::F64(v) => v.to_string(),
        ReflectValue::String(v) => v,
        ReflectValue::Bytes(v) => base64::engine::general_purpose::STANDARD.encode(v),
        ReflectValue::EnumNumber(n) => match field.kind() {
            ReflectKind::Enum(e) => e
                .get_value(n)
                .map_or_else(|| n.to_string(), |v| v.name().to_owned()),
            _ => n.to_string(),
        },
        _ => return None,
    })
}

/// A value of each scalar kind: `zero` for the default, else a non-default one.
fn sample(kind: &ReflectKind, zero: bool, rng: &mut impl Rng) -> Option<ReflectValue> {
    Some(match kind {
        ReflectKind::Double => ReflectValue::F64(if zero {
            0.0
        } else {
            rng.random::<f64>() * 1e6 - 5e5
        }),
        ReflectKind::Float => ReflectValue::F32(if zero {
            0.0
        } else {
            rng.random::<f32>() * 1e3 - 5e2
        }),
        ReflectKind::Int32 | ReflectKind::Sint32 | ReflectKind::Sfixed32 => {
            ReflectValue::I32(if zero {
                0
            } else {
                rng.random_range(-1_000_000..1_000_000)
            })
        }
        ReflectKind::Int64 | ReflectKind::Sint64 | ReflectKind::Sfixed64 => {
            ReflectValue::I64(if zero { 0 } else { rng.random::<i64>() })
        }
        ReflectKind::Uint32 | ReflectKind::Fixed32 => {
            ReflectValue::U32(if zero { 0 } else { rng.random::<u32>() | 1 })
        }
        ReflectKind::Uint64 | ReflectKind::Fixed64 => {
            ReflectValue::U64(if zero { 0 } else { rng.random::<u64>() | 1 })
        }
        ReflectKind::Bool => ReflectValue::Bool(!zero),
        ReflectKind::String => {
            ReflectValue::String(if zero { String::new() } else { "é-x".into() })
        }
        ReflectKind::Bytes => {
            ReflectValue::Bytes(if zero { Vec::new() } else { vec![0, 255, 7] }.into())
        }
        ReflectKind::Enum(e) => {
            let numbers: Vec<i32> = e.values().map(|v| v.number()).collect();
            ReflectValue::EnumNumber(if zero {
                0
            } else {
                numbers[rng.random_range(0..numbers.len())] + i32::from(rng.random::<bool>()) * 1000
            })
        }
        ReflectKind::Message(_) => return None,
    })
}

#[test]
fn every_scalar_kind_reads_as_prost_reflect_reads_it() {
    let schema = schema();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut kinds_seen = std::collections::BTreeSet::new();
    for message in pool().all_messages() {
        let id = message_id(&schema, message.full_name());
        for field in message.fields() {
            if field.is_list() || field.is_map() {
                continue;
            }
            for zero in [false, true] {
                let Some(value) = sample(&field.kind(), zero, &mut rng) else {
                    continue;
                };
                kinds_seen.insert(
                    format!("{:?}", field.kind())
                        .chars()
                        .take(6)
                        .collect::<String>(),
                );
                let mut dynamic = DynamicMessage::new(message.clone());
                dynamic.set_field(&field, value);
                // Written even at its default, as a peer may do.
                let mut bytes = dynamic.encode_to_vec();
                if bytes.is_empty() {
                    bytes = explicit_default(&field);
                }
                let decoded = DynamicMessage::decode(message.clone(), bytes.as_slice()).unwrap();
                schema.check(id, &bytes).unwrap();
                assert_eq!(
                    schema.read_text(id, &bytes, &[field.name()]),
                    reflect_text(&decoded, field.name()),
                    "{} zero={zero} bytes={bytes:?}",
                    field.full_name()
                );
            }
        }
    }
    assert!(kinds_seen.len() >= 10, "{kinds_seen:?}");
}

/// A field at its default written out (tag and zero value).
fn explicit_default(field: &prost_reflect::FieldDescriptor) -> Vec<u8> {
    let number = u64::from(field.number());
    let (wire, value): (u64, &[u8]) = match field.kind() {
        ReflectKind::Double | ReflectKind::Fixed64 | ReflectKind::Sfixed64 => (1, &[0; 8]),
        ReflectKind::Float | ReflectKind::Fixed32 | ReflectKind::Sfixed32 => (5, &[0; 4]),
        ReflectKind::String | ReflectKind::Bytes => (2, &[0]),
        _ => (0, &[0]),
    };
    let mut out = Vec::new();
    prost::encoding::encode_varint(number << 3 | wire, &mut out);
    out.extend_from_slice(value);
    out
}

#[test]
fn nested_paths_merge_and_last_value_wins() {
    let schema = schema();
    let id = message_id(&schema, "user.GetUserResponse");
    let user = |email: &str, age: i32| meshgate_proto::user::GetUserResponse {
        user: Some(meshgate_proto::user::User {
            email: email.into(),
            age,
            ..Default::default()
        }),
        message: String::new(),
    };
    let mut bytes = user("a@x", 36).encode_to_vec();
    bytes.extend(user("b@x", 0).encode_to_vec());
    let decoded = DynamicMessage::decode(
        pool().get_message_by_name("user.GetUserResponse").unwrap(),
        bytes.as_slice(),
    )
    .unwrap();
    schema.check(id, &bytes).unwrap();
    assert_eq!(
        schema.read_text(id, &bytes, &["user", "email"]).as_deref(),
        Some("b@x")
    );
    // The second `user` has no age: the first one's stays (messages merge).
    assert_eq!(
        schema.read_text(id, &bytes, &["user", "age"]).as_deref(),
        Some("36")
    );
    let nested = decoded
        .get_field_by_name("user")
        .unwrap()
        .as_message()
        .unwrap()
        .clone();
    assert_eq!(reflect_text(&nested, "age").as_deref(), Some("36"));
    for unreadable in [
        &["user"][..],
        &["user", "nope"],
        &["nope", "x"],
        &["message"],
        &[],
    ] {
        assert_eq!(
            schema.read_text(id, &bytes, unreadable),
            None,
            "{unreadable:?}"
        );
    }
    let list = message_id(&schema, "user.ListUsersResponse");
    let listed = meshgate_proto::user::ListUsersResponse {
        users: vec![Default::default()],
        total: 1,
        message: String::new(),
    }
    .encode_to_vec();
    assert_eq!(schema.read_text(list, &listed, &["users", "id"]), None);
    assert_eq!(
        schema.read_text(list, &listed, &["total"]).as_deref(),
        Some("1")
    );
}

#[test]
fn the_verdict_on_bytes_is_prost_reflects() {
    let schema = schema();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let seeds: Vec<Vec<u8>> = vec![
        meshgate_proto::user::GetUserResponse {
            user: Some(meshgate_proto::user::User {
                id: "u".into(),
                email: "e".into(),
                age: 3,
                created_at: 99,
                ..Default::default()
            }),
            message: "m".into(),
        }
        .encode_to_vec(),
        vec![0x0a, 0x02, 0xff, 0xfe],
        vec![0x12, 0x01, 0xc3],
        vec![0x0b, 0x08, 0x01, 0x0c],
        vec![0x08, 0x01],
    ];
    for name in [
        "user.GetUserResponse",
        "user.User",
        "google.protobuf.FieldDescriptorProto",
    ] {
        let descriptor = pool().get_message_by_name(name).unwrap();
        let id = message_id(&schema, name);
        let mut cases = seeds.clone();
        for _ in 0..3000 {
            let mut bytes = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                match rng.random_range(0..3) {
                    0 if !bytes.is_empty() => {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                    1 if !bytes.is_empty() => {
                        bytes.truncate(rng.random_range(0..bytes.len()));
                    }
                    _ => bytes.push(rng.random()),
                }
            }
            cases.push(bytes);
        }
        for bytes in cases {
            assert_eq!(
                schema.check(id, &bytes).is_ok(),
                DynamicMessage::decode(descriptor.clone(), bytes.as_slice()).is_ok(),
                "{name}: {bytes:?}"
            );
        }
    }
}

#[test]
fn garbage_is_not_a_descriptor_set() {
    assert!(matches!(
        Schema::decode(&[0xff, 0xff, 0xff]),
        Err(SchemaError::Decode(_))
    ));
    // A file whose field names a type the set does not have.
    let file = prost_types::FileDescriptorProto {
        name: Some("x.proto".into()),
        package: Some("x".into()),
        message_type: vec![prost_types::DescriptorProto {
            name: Some("M".into()),
            field: vec![prost_types::FieldDescriptorProto {
                name: Some("other".into()),
                number: Some(1),
                label: Some(1),
                r#type: Some(11),
                type_name: Some(".x.Missing".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let set = prost_types::FileDescriptorSet { file: vec![file] }.encode_to_vec();
    assert_eq!(
        Schema::decode(&set).unwrap_err(),
        SchemaError::Unresolved {
            field: "x.M.other".into(),
            type_name: ".x.Missing".into()
        }
    );
}
