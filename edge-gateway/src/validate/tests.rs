use prost_reflect::DescriptorPool;
use serde_json::json;

use super::*;

fn kitchen() -> DescriptorPool {
    DescriptorPool::decode(meshgate_test_support::kitchen::DESCRIPTOR_SET).unwrap()
}

fn order(pool: &DescriptorPool, value: Json) -> DynamicMessage {
    let descriptor = pool.get_message_by_name("kitchen.v1.Order").unwrap();
    DynamicMessage::deserialize(descriptor, value).unwrap()
}

/// (field, rule id) of each violation.
type Broken = Vec<(String, String)>;

/// The violations, checked with protobuf presence and as a REST document.
fn broken(pool: &DescriptorPool, value: Json) -> (Broken, Broken) {
    let validators = Validators::from_pool(pool).unwrap();
    let message = order(pool, value.clone());
    let pairs = |violations: Vec<Violation>| {
        violations
            .into_iter()
            .map(|v| (v.field, v.rule_id))
            .collect::<Vec<_>>()
    };
    let document = value.as_object().unwrap().clone();
    (
        pairs(validators.check(&message, Presence::Proto)),
        pairs(validators.check(&message, Presence::Document(&document))),
    )
}

fn pair(field: &str, rule: &str) -> (String, String) {
    (field.to_owned(), rule.to_owned())
}

#[test]
fn rules_come_from_the_descriptors_of_any_service() {
    let pool = kitchen();
    let valid = json!({"sku": "SKU-1", "quantity": 3, "discount": 0.5, "channel": "web",
                       "shipTo": {"city": "Oslo", "zip": "01234"}});
    assert_eq!(broken(&pool, valid), (vec![], vec![]));
    let (proto, rest) = broken(
        &pool,
        json!({"sku": "X-1", "quantity": 11, "discount": 1.0, "channel": "fax",
               "ship_to": {"city": "O", "zip": "1"}}),
    );
    let expected = vec![
        pair("sku", "string.prefix"),
        pair("quantity", "uint32.lte"),
        pair("discount", "double.lt"),
        pair("ship_to.city", "string.min_len"),
        pair("ship_to.zip", "string.len"),
        pair("channel", "string.in"),
    ];
    assert_eq!(proto, expected);
    assert_eq!(rest, expected);
}

#[test]
fn presence_is_protobuf_for_grpc_and_the_request_for_rest() {
    let pool = kitchen();
    // Nothing sent: `sku` is required; `quantity` (no `ignore`) is checked as its zero value;
    // `channel` (IGNORE_IF_ZERO_VALUE) is skipped; `ship_to` is unset.
    let (proto, rest) = broken(&pool, json!({}));
    let expected = vec![pair("sku", "required"), pair("quantity", "uint32.gt")];
    assert_eq!(proto, expected);
    assert_eq!(rest, expected);
    // Zero values named by a REST client are checked; protobuf cannot tell them from unset.
    let (proto, rest) = broken(
        &pool,
        json!({"sku": "", "quantity": 1, "channel": "", "shipTo": {"city": "Oslo", "zip": ""}}),
    );
    assert_eq!(proto, vec![pair("sku", "required")]);
    assert_eq!(
        rest,
        vec![
            pair("sku", "string.prefix"),
            pair("ship_to.zip", "string.len"),
            pair("channel", "string.in"),
        ]
    );
}

#[test]
fn violations_carry_their_bounds() {
    let pool = kitchen();
    let validators = Validators::from_pool(&pool).unwrap();
    let message = order(
        &pool,
        json!({"sku": "SKU-1", "quantity": 0, "discount": -0.5}),
    );
    let kinds: Vec<_> = validators
        .check(&message, Presence::Proto)
        .into_iter()
        .map(|v| v.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            ViolationKind::Below {
                bound: Number::Int(0),
                inclusive: false
            },
            ViolationKind::Below {
                bound: Number::Float(0.0),
                inclusive: true
            },
        ]
    );
}

#[test]
fn the_contract_rules() {
    let pool = meshgate_proto::descriptor_pool();
    let validators = Validators::from_pool(pool).unwrap();
    let create = pool.get_message_by_name("user.CreateUserRequest").unwrap();
    let check = |value: Json| {
        let message = DynamicMessage::deserialize(create.clone(), value).unwrap();
        validators
            .check(&message, Presence::Proto)
            .into_iter()
            .map(|v| (v.field, v.rule_id, v.message))
            .collect::<Vec<_>>()
    };
    assert!(check(json!({"name": "Ada", "email": "ada@example.com", "age": 36})).is_empty());
    assert_eq!(
        check(json!({"name": "x".repeat(101), "email": "ada@", "age": 151})),
        [
            (
                "name".to_owned(),
                "string.max_len".to_owned(),
                "value length must be at most 100 characters".to_owned()
            ),
            (
                "email".to_owned(),
                "string.email".to_owned(),
                "value must be a valid email address".to_owned()
            ),
            (
                "age".to_owned(),
                "int32.lte".to_owned(),
                "value must be less than or equal to 150".to_owned()
            ),
        ]
    );
    // Length counts characters, not bytes.
    assert!(check(json!({"name": "é".repeat(100), "email": "a@b.io", "age": 1})).is_empty());
    let get = pool.get_message_by_name("user.GetUserRequest").unwrap();
    let id = |id: &str| {
        let message = DynamicMessage::deserialize(get.clone(), json!({ "id": id })).unwrap();
        validators.check(&message, Presence::Proto)
    };
    assert!(id("3F0C6A0E-9A51-4D2E-8F7A-1B2C3D4E5F60").is_empty());
    for bad in [
        "3f0c6a0e9a514d2e8f7a1b2c3d4e5f60",
        "not-a-uuid",
        "{3f0c6a0e-9a51-4d2e-8f7a-1b2c3d4e5f60}",
    ] {
        assert_eq!(id(bad)[0].rule_id, "string.uuid", "{bad}");
    }
    assert_eq!(id("")[0].rule_id, "string.uuid_empty");
}

#[test]
fn schema_keywords_follow_the_rules() {
    let pool = kitchen();
    let order = pool.get_message_by_name("kitchen.v1.Order").unwrap();
    let field = |name: &str| schema_keywords(&pool, &order.get_field_by_name(name).unwrap());
    let (quantity, required) = field("quantity");
    assert!(!required);
    assert_eq!(
        Json::Object(quantity),
        json!({"exclusiveMinimum": 0, "maximum": 10})
    );
    let (channel, _) = field("channel");
    assert_eq!(channel["enum"], json!(["web", "store"]));
    assert!(field("sku").1, "sku is required");
    assert!(field("notes").0.is_empty());
}

#[test]
fn unsupported_rules_are_refused_not_skipped() {
    let pool = DescriptorPool::decode(meshgate_test_support::kitchen::UNSUPPORTED_RULES).unwrap();
    let error = Validators::from_pool(&pool).unwrap_err().to_string();
    assert!(error.contains("unsupported.v1.Code.value"), "{error}");
    assert!(error.contains("string.pattern"), "{error}");
}

#[test]
fn pools_without_buf_validate_have_no_rules() {
    let validators = Validators::from_pool(&DescriptorPool::new()).unwrap();
    assert!(validators.is_empty());
}
