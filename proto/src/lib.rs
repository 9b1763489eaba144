//! The meshgate API contract.
//!
//! - [`user`]: prost messages of `proto/user.proto` and, with the `grpc` feature,
//!   the tonic `user_service_client` / `user_service_server` stubs.
//! - [`user::v2`]: the same for `proto/user/v2/user.proto` (`user.v2.UserService`, served
//!   beside `user.UserService`; see proto/README.md, "API versioning").
//! - [`google::api`], [`google::rpc`], [`meshgate::api`]: the annotation and error-model types.
//! - [`FILE_DESCRIPTOR_SET`]: every file above plus its imports, encoded, with the
//!   `google.api.http` options intact — what reflection serves and what the edge gateway
//!   and the wasm filters build their routes from.
//!
//! Builds for `wasm32-wasip1` with `default-features = false` (no tonic).
#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

/// Encoded `google.protobuf.FileDescriptorSet` of the contract, imports included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meshgate_descriptor.bin"));

/// Fully-qualified name of the user service (v1, the replaced service's contract).
pub const USER_SERVICE: &str = "user.UserService";

/// Fully-qualified name of the user service's version 2.
pub const USER_SERVICE_V2: &str = "user.v2.UserService";

/// The contract as a prost-reflect pool (decoded once).
#[cfg(feature = "reflect")]
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the descriptor set is produced by build.rs from valid protos")
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn descriptor_set_carries_http_annotations() {
        // Decoded with prost-reflect: prost_types would drop the extension as an unknown field.
        let pool = prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
        let service = pool.get_service_by_name(USER_SERVICE).unwrap();
        let names: Vec<_> = service.methods().map(|m| m.name().to_owned()).collect();
        assert_eq!(
            names,
            [
                "CreateUser",
                "GetUser",
                "UpdateUser",
                "DeleteUser",
                "ListUsers",
                "ListUserEvents",
                "WatchUsers",
                "TestError"
            ]
        );
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        for method in service.methods() {
            assert!(
                method.options().has_extension(&http),
                "{} lacks google.api.http",
                method.name()
            );
        }
        let rest = pool.get_extension_by_name("meshgate.api.rest").unwrap();
        let create = service
            .methods()
            .find(|m| m.name() == "CreateUser")
            .unwrap();
        let options = create.options().get_extension(&rest).into_owned();
        let options = options.as_message().unwrap();
        assert_eq!(
            options.get_field_by_name("success_code").unwrap().as_u32(),
            Some(201)
        );
    }

    #[test]
    fn v2_is_a_second_annotated_service_in_the_same_set() {
        let pool = prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
        let v2 = pool.get_service_by_name(USER_SERVICE_V2).unwrap();
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        for method in v2.methods() {
            let rule = method.options().get_extension(&http).into_owned();
            let rule = rule.as_message().unwrap();
            let path = ["get", "post", "put", "delete"]
                .iter()
                .find_map(|verb| {
                    rule.get_field_by_name(verb)
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .filter(|p| !p.is_empty())
                })
                .unwrap();
            assert!(path.starts_with("/v2/"), "{}: {path}", method.name());
        }
        let created_at = pool
            .get_message_by_name("user.v2.User")
            .unwrap()
            .get_field_by_name("created_at")
            .unwrap();
        assert_eq!(
            created_at.kind().as_message().unwrap().full_name(),
            "google.protobuf.Timestamp"
        );
        // v1 is untouched by v2's presence: same package, same messages.
        assert!(pool.get_service_by_name(USER_SERVICE).is_some());
        assert_eq!(
            pool.get_message_by_name("user.User")
                .unwrap()
                .get_field_by_name("created_at")
                .unwrap()
                .kind(),
            prost_reflect::Kind::Int64
        );
    }

    #[test]
    fn wire_numbers_match_the_replaced_service() {
        // A User encoded by hand with the legacy field numbers must decode into the same values.
        let mut buf = Vec::new();
        prost::encoding::string::encode(1, &"id-1".to_string(), &mut buf);
        prost::encoding::string::encode(2, &"Ada".to_string(), &mut buf);
        prost::encoding::string::encode(3, &"ada@example.com".to_string(), &mut buf);
        prost::encoding::int32::encode(4, &36, &mut buf);
        prost::encoding::int64::encode(5, &1_700_000_000, &mut buf);
        prost::encoding::int64::encode(6, &1_700_000_001, &mut buf);
        let user = user::User::decode(buf.as_slice()).unwrap();
        assert_eq!(user.id, "id-1");
        assert_eq!(user.name, "Ada");
        assert_eq!(user.email, "ada@example.com");
        assert_eq!(user.age, 36);
        assert_eq!(user.created_at, 1_700_000_000);
        assert_eq!(user.updated_at, 1_700_000_001);
    }

    #[cfg(feature = "reflect")]
    #[test]
    fn validation_rules_survive_the_slimmed_schema() {
        let pool = descriptor_pool();
        let rules = pool.get_extension_by_name("buf.validate.field").unwrap();
        let name = pool
            .get_message_by_name("user.CreateUserRequest")
            .unwrap()
            .get_field_by_name("name")
            .unwrap();
        let value = name.options().get_extension(&rules).into_owned();
        let string = value
            .as_message()
            .unwrap()
            .get_field_by_name("string")
            .unwrap()
            .into_owned();
        let string = string.as_message().unwrap();
        assert_eq!(
            string.get_field_by_name("max_len").unwrap().as_u64(),
            Some(100)
        );
        // buf/validate is carried without its comments; the contract keeps its own.
        let file = |name: &str| {
            pool.files()
                .find(|f| f.name() == name)
                .unwrap()
                .file_descriptor_proto()
                .source_code_info
                .is_some()
        };
        assert!(!file("buf/validate/validate.proto"));
        assert!(
            !file("google/rpc/error_details.proto"),
            "vendored comments are dropped"
        );
        assert!(file("user.proto"));
        assert!(file("user/v2/user.proto"));
        assert!(
            FILE_DESCRIPTOR_SET.len() < 64 * 1024,
            "the wasm filters embed it"
        );
    }

    #[cfg(feature = "reflect")]
    #[test]
    fn pool_resolves_the_http_extension() {
        let pool = descriptor_pool();
        let service = pool.get_service_by_name(USER_SERVICE).unwrap();
        let ext = pool.get_extension_by_name("google.api.http").unwrap();
        let get = service.methods().find(|m| m.name() == "GetUser").unwrap();
        let rule = get.options().get_extension(&ext).into_owned();
        let rule = rule.as_message().unwrap();
        assert_eq!(
            rule.get_field_by_name("get").unwrap().as_str(),
            Some("/v1/users/{id}")
        );
    }
}
