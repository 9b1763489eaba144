//! Which requests need a token and what their claims must say (pure): the validated
//! `gateway.auth` settings, the rule that applies to a call, claim requirements, the bearer
//! token of an `Authorization` header, and every way a call can be refused, each with the
//! message and challenge its client gets (no key material, no library error text).

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The metadata headers the edge forwards upstream for a verified token. Client-sent headers
/// with this prefix are dropped on every call, with or without auth, so a service behind the
/// edge can trust them.
pub const FORWARDED_PREFIX: &str = "x-jwt-";
/// The verified token's `sub`.
pub const SUBJECT_HEADER: &str = "x-jwt-sub";
/// The verified token's claims: its payload segment as sent (base64url JSON, as Istio's
/// `outputPayloadToHeader`).
pub const CLAIMS_HEADER: &str = "x-jwt-claims";

/// Where the JSON Web Key Set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    /// `http://` or `https://`.
    Url(String),
}

/// `gateway.auth`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    pub jwks: JwksSource,
    /// The keys are fetched again this often ...
    pub refresh_interval: Duration,
    /// ... and when a token names a key id the set lacks, at most this often.
    pub min_refresh_interval: Duration,
    /// One fetch (or file read) of the set.
    pub fetch_timeout: Duration,
    /// Accepted `iss` values (one must match).
    pub issuers: Vec<String>,
    /// Accepted `aud` values (one must be among the token's).
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    pub rules: Vec<AuthRule>,
}

/// Calls that need a token, and what its claims must say.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRule {
    pub name: String,
    /// gRPC methods as `/package.Service/Method` (all three protocols reach them).
    pub methods: Vec<String>,
    /// REST route labels, `POST /v1/users` (REST only).
    pub routes: Vec<String>,
    /// Every one must hold (403 otherwise).
    pub claims: Vec<ClaimRequirement>,
}

/// One claim the token must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRequirement {
    /// The claim's name; dots reach into objects (`realm_access.roles`).
    pub claim: String,
    pub check: ClaimCheck,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimCheck {
    /// The claim exists (and is not null).
    Present,
    /// A string claim holds the value as one of its space-separated words (OAuth `scope`),
    /// or an array claim holds it as an element.
    Contains(String),
    /// The claim is this string (or an array holding only it).
    Equals(String),
}

impl ClaimRequirement {
    fn value<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        let mut value = claims.get(self.claim.as_str());
        if value.is_none() && self.claim.contains('.') {
            value = self
                .claim
                .split('.')
                .try_fold(claims, |node, key| node.get(key));
        }
        value.filter(|v| !v.is_null())
    }

    /// Whether the verified claims meet this requirement.
    pub fn holds(&self, claims: &Value) -> bool {
        let Some(value) = self.value(claims) else {
            return false;
        };
        match &self.check {
            ClaimCheck::Present => true,
            ClaimCheck::Contains(wanted) => match value {
                Value::String(words) => words.split_ascii_whitespace().any(|w| w == wanted),
                Value::Array(items) => items.iter().any(|item| item.as_str() == Some(wanted)),
                _ => false,
            },
            ClaimCheck::Equals(wanted) => match value {
                Value::String(text) => text == wanted,
                Value::Array(items) => {
                    items.len() == 1 && items[0].as_str() == Some(wanted.as_str())
                }
                _ => false,
            },
        }
    }

    /// The requirement as the client is told it (`scope contains "users:write"`).
    pub fn describe(&self) -> String {
        match &self.check {
            ClaimCheck::Present => format!("claim {:?} is required", self.claim),
            ClaimCheck::Contains(value) => format!("claim {:?} must contain {value:?}", self.claim),
            ClaimCheck::Equals(value) => format!("claim {:?} must be {value:?}", self.claim),
        }
    }
}

/// The rules indexed for a lookup per request without allocating.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    pub settings: AuthSettings,
    by_method: HashMap<String, usize>,
    by_route: HashMap<String, usize>,
}

impl AuthPolicy {
    /// Rules apply in order: a method or route named by two rules gets the first.
    pub fn new(settings: AuthSettings) -> Self {
        let mut by_method = HashMap::new();
        let mut by_route = HashMap::new();
        for (index, rule) in settings.rules.iter().enumerate() {
            for method in &rule.methods {
                by_method.entry(method.clone()).or_insert(index);
            }
            for route in &rule.routes {
                by_route.entry(route.clone()).or_insert(index);
            }
        }
        Self {
            settings,
            by_method,
            by_route,
        }
    }

    /// The rule a call falls under: its REST route's, else its gRPC method's; `None`: no
    /// token needed.
    pub fn rule_for(&self, grpc_method: &str, rest_route: Option<&str>) -> Option<&AuthRule> {
        let index = rest_route
            .and_then(|route| self.by_route.get(route))
            .or_else(|| self.by_method.get(grpc_method))?;
        self.settings.rules.get(*index)
    }

    /// Every method and route the rules name (checked against the loaded descriptors at start).
    pub fn named_methods(&self) -> impl Iterator<Item = &str> {
        self.by_method.keys().map(String::as_str)
    }

    pub fn named_routes(&self) -> impl Iterator<Item = &str> {
        self.by_route.keys().map(String::as_str)
    }
}

/// `/package.Service/Method` from either spelling (`package.Service/Method` as Istio writes
/// it); `None` when it is not a method name.
pub fn normalize_method(name: &str) -> Option<String> {
    let trimmed = name.trim().trim_start_matches('/');
    let (service, method) = trimmed.split_once('/')?;
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    (valid(service) && service.contains('.') && valid(method) && !method.contains('.'))
        .then(|| format!("/{service}/{method}"))
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// Not a JWT (segments, base64, JSON), or another scheme than Bearer.
    Malformed,
    /// An algorithm other than RS256 / ES256 (`none`, HMAC, ...).
    UnsupportedAlgorithm(String),
    /// Its `kid` (or, without one, its algorithm) matches no key of the current set.
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A registered claim the checks need (`exp`, `iss`, `aud`) is absent or of the wrong type.
    MissingRegisteredClaim(String),
    /// Valid token, but a rule's claim requirement does not hold (403).
    Forbidden(String),
}

impl AuthFailure {
    /// 401, or 403 for [`AuthFailure::Forbidden`].
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Forbidden(_) => 403,
            _ => 401,
        }
    }

    /// The `outcome` label of `meshgate_gateway_auth_decisions_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed => "malformed_token",
            Self::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingRegisteredClaim(_) => "missing_registered_claim",
            Self::Forbidden(_) => "forbidden",
        }
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            Self::MissingToken => "missing bearer token (Authorization: Bearer <JWT>)".into(),
            Self::Malformed => "malformed bearer token: not a JWT".into(),
            Self::UnsupportedAlgorithm(alg) => {
                format!("token algorithm {alg:?} is not accepted (RS256, ES256)")
            }
            Self::UnknownKey => "token signed by an unknown key".into(),
            Self::BadSignature => "token signature is invalid".into(),
            Self::Expired => "token expired".into(),
            Self::NotYetValid => "token is not valid yet (nbf)".into(),
            Self::WrongIssuer => "token issuer is not accepted".into(),
            Self::WrongAudience => "token audience is not accepted".into(),
            Self::MissingRegisteredClaim(claim) => format!("token lacks the {claim:?} claim"),
            Self::Forbidden(requirement) => format!("permission denied: {requirement}"),
        }
    }

    /// `WWW-Authenticate` (RFC 6750): no error code without a token, `invalid_token` for a bad
    /// one, `insufficient_scope` for a valid one lacking a claim.
    pub fn challenge(&self) -> String {
        let error = match self {
            Self::MissingToken => return "Bearer realm=\"meshgate\"".into(),
            Self::Forbidden(_) => "insufficient_scope",
            _ => "invalid_token",
        };
        // The description is a quoted-string: the messages hold no `"` or `\` of their own
        // except around names, which are swapped for single quotes.
        let description = self.message().replace(['"', '\\'], "'");
        format!("Bearer realm=\"meshgate\", error=\"{error}\", error_description=\"{description}\"")
    }

    /// Every outcome label, so the series exist before the first decision.
    pub const OUTCOMES: [&'static str; 12] = [
        "allowed",
        "missing_token",
        "malformed_token",
        "unsupported_algorithm",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "missing_registered_claim",
        "forbidden",
    ];
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for AuthFailure {}

/// The token of an `Authorization` header: scheme `Bearer` (any case), a space, the token.
pub fn bearer_token(authorization: Option<&[u8]>) -> Result<&str, AuthFailure> {
    let header = authorization.ok_or(AuthFailure::MissingToken)?;
    let header = std::str::from_utf8(header).map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = header
        .trim()
        .split_once(' ')
        .ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Malformed);
    }
    Ok(token.trim())
}

/// The payload segment of a compact JWT (base64url claims), forwarded as [`CLAIMS_HEADER`].
pub fn payload_segment(token: &str) -> Option<&str> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some(payload)
}

/// The first requirement of `rule` the claims do not meet, as [`AuthFailure::Forbidden`].
pub fn check_claims(rule: &AuthRule, claims: &Value) -> Result<(), AuthFailure> {
    match rule.claims.iter().find(|r| !r.holds(claims)) {
        Some(unmet) => Err(AuthFailure::Forbidden(unmet.describe())),
        None => Ok(()),
    }
}

/// When a token naming an unknown key may make the set be fetched again: at most once per
/// `min_interval` (a stream of forged key ids costs one fetch per interval). Time is passed in.
#[derive(Debug)]
pub struct RefreshGate {
    min_interval: Duration,
    last: Option<Instant>,
}

impl RefreshGate {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            last: None,
        }
    }

    /// True (and the time is taken) when a refresh may start now.
    pub fn try_start(&mut self, now: Instant) -> bool {
        let allowed = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.min_interval);
        if allowed {
            self.last = Some(now);
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn settings(rules: Vec<AuthRule>) -> AuthSettings {
        AuthSettings {
            jwks: JwksSource::File("jwks.json".into()),
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(2),
            issuers: vec!["https://issuer.test".into()],
            audiences: vec!["meshgate".into()],
            leeway: Duration::from_secs(30),
            rules,
        }
    }

    fn rule(name: &str, methods: &[&str], routes: &[&str]) -> AuthRule {
        AuthRule {
            name: name.into(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
            claims: Vec::new(),
        }
    }

    fn requirement(claim: &str, check: ClaimCheck) -> ClaimRequirement {
        ClaimRequirement {
            claim: claim.into(),
            check,
        }
    }

    #[test]
    fn the_route_rule_wins_then_the_method_rule_then_none() {
        let policy = AuthPolicy::new(settings(vec![
            rule("writes", &["/user.UserService/CreateUser"], &[]),
            rule("rest-delete", &[], &["DELETE /v1/users/{id}"]),
            rule("again", &["/user.UserService/CreateUser"], &[]),
        ]));
        let create = policy.rule_for("/user.UserService/CreateUser", Some("POST /v1/users"));
        assert_eq!(create.map(|r| r.name.as_str()), Some("writes"));
        // gRPC and gRPC-web have no route: the method rule.
        let create = policy.rule_for("/user.UserService/CreateUser", None);
        assert_eq!(create.map(|r| r.name.as_str()), Some("writes"));
        // A rule naming only the REST route leaves gRPC calls of the method open.
        let delete = policy.rule_for(
            "/user.UserService/DeleteUser",
            Some("DELETE /v1/users/{id}"),
        );
        assert_eq!(delete.map(|r| r.name.as_str()), Some("rest-delete"));
        assert!(
            policy
                .rule_for("/user.UserService/DeleteUser", None)
                .is_none()
        );
        assert!(
            policy
                .rule_for("/user.UserService/GetUser", Some("GET /v1/users/{id}"))
                .is_none()
        );
    }

    #[test]
    fn contains_reads_scope_words_and_array_elements() {
        let wanted = requirement("scope", ClaimCheck::Contains("users:write".into()));
        assert!(wanted.holds(&json!({"scope": "users:read users:write"})));
        assert!(wanted.holds(&json!({"scope": ["users:write"]})));
        // A word, not a substring.
        assert!(!wanted.holds(&json!({"scope": "users:writer users:read"})));
        assert!(!wanted.holds(&json!({"scope": "users:read"})));
        assert!(!wanted.holds(&json!({"scope": 7})));
        assert!(!wanted.holds(&json!({})));
    }

    #[test]
    fn nested_claims_equals_and_present() {
        let role = requirement("realm_access.roles", ClaimCheck::Contains("admin".into()));
        assert!(role.holds(&json!({"realm_access": {"roles": ["user", "admin"]}})));
        assert!(!role.holds(&json!({"realm_access": {"roles": ["user"]}})));
        // A flat claim whose name has a dot is found as written.
        assert!(role.holds(&json!({"realm_access.roles": "admin"})));
        let tenant = requirement("tenant", ClaimCheck::Equals("acme".into()));
        assert!(tenant.holds(&json!({"tenant": "acme"})));
        assert!(tenant.holds(&json!({"tenant": ["acme"]})));
        assert!(!tenant.holds(&json!({"tenant": "acme-evil"})));
        let email = requirement("email", ClaimCheck::Present);
        assert!(email.holds(&json!({"email": "a@b"})));
        assert!(!email.holds(&json!({"email": null})));
    }

    #[test]
    fn the_first_unmet_requirement_is_named() {
        let mut writes = rule("writes", &["/a.B/C"], &[]);
        writes.claims = vec![
            requirement("scope", ClaimCheck::Contains("users:write".into())),
            requirement("tenant", ClaimCheck::Equals("acme".into())),
        ];
        assert_eq!(
            check_claims(&writes, &json!({"scope": "users:write", "tenant": "other"})),
            Err(AuthFailure::Forbidden(
                "claim \"tenant\" must be \"acme\"".into()
            ))
        );
        assert!(check_claims(&writes, &json!({"scope": "users:write", "tenant": "acme"})).is_ok());
    }

    #[test]
    fn bearer_tokens_are_taken_from_the_header() {
        let token = |header: &'static [u8]| bearer_token(Some(header));
        assert_eq!(bearer_token(None), Err(AuthFailure::MissingToken));
        assert_eq!(token(b"Bearer a.b.c"), Ok("a.b.c"));
        assert_eq!(token(b"bearer  a.b.c "), Ok("a.b.c"));
        assert_eq!(token(b"Bearer "), Err(AuthFailure::Malformed));
        assert_eq!(token(b"Bearer  "), Err(AuthFailure::Malformed));
        assert_eq!(token(b"Basic dTpw"), Err(AuthFailure::Malformed));
        assert_eq!(token(b"a.b.c"), Err(AuthFailure::Malformed));
        assert_eq!(token(b"Bearer \xff"), Err(AuthFailure::Malformed));
    }

    #[test]
    fn failures_map_to_statuses_messages_and_challenges() {
        assert_eq!(AuthFailure::MissingToken.http_status(), 401);
        assert_eq!(AuthFailure::Forbidden("x".into()).http_status(), 403);
        assert_eq!(
            AuthFailure::MissingToken.challenge(),
            "Bearer realm=\"meshgate\""
        );
        assert_eq!(
            AuthFailure::Expired.challenge(),
            "Bearer realm=\"meshgate\", error=\"invalid_token\", error_description=\"token expired\""
        );
        let forbidden = AuthFailure::Forbidden("claim \"scope\" must contain \"w\"".into());
        assert!(
            forbidden
                .challenge()
                .contains("error=\"insufficient_scope\"")
        );
        assert!(
            forbidden.challenge().ends_with(
                "error_description=\"permission denied: claim 'scope' must contain 'w'\""
            )
        );
        for failure in [
            AuthFailure::MissingToken,
            AuthFailure::Malformed,
            AuthFailure::UnsupportedAlgorithm("HS256".into()),
            AuthFailure::UnknownKey,
            AuthFailure::BadSignature,
            AuthFailure::Expired,
            AuthFailure::NotYetValid,
            AuthFailure::WrongIssuer,
            AuthFailure::WrongAudience,
            AuthFailure::MissingRegisteredClaim("exp".into()),
            AuthFailure::Forbidden("x".into()),
        ] {
            assert!(
                AuthFailure::OUTCOMES.contains(&failure.outcome()),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn method_names_take_both_spellings() {
        assert_eq!(
            normalize_method("user.UserService/CreateUser").as_deref(),
            Some("/user.UserService/CreateUser")
        );
        assert_eq!(
            normalize_method("/user.UserService/CreateUser").as_deref(),
            Some("/user.UserService/CreateUser")
        );
        for bad in [
            "CreateUser",
            "/UserService/CreateUser",
            "/a.B/",
            "/a.B/C/D",
            "POST /v1",
        ] {
            assert_eq!(normalize_method(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_payload_segment_is_the_middle_one() {
        assert_eq!(payload_segment("h.p.s"), Some("p"));
        assert_eq!(payload_segment("h.p"), None);
        assert_eq!(payload_segment("h.p.s.x"), None);
    }

    #[test]
    fn unknown_key_refreshes_are_rate_limited() {
        let mut gate = RefreshGate::new(Duration::from_secs(10));
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert!(gate.try_start(at(100)));
        assert!(!gate.try_start(at(105)));
        assert!(!gate.try_start(at(109)));
        assert!(gate.try_start(at(110)));
        assert!(!gate.try_start(at(111)));
    }
}
