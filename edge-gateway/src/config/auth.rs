//! `gateway.auth` checked into [`AuthSettings`]: one key source, issuers and audiences named,
//! positive intervals, rules naming well-formed methods and routes with sound claim
//! requirements, each failure naming its key. Pure; whether the named methods and routes exist
//! in the loaded descriptors is checked at start (`crate::auth`), a relative JWKS file is
//! resolved by [`super::load`].

use std::time::Duration;

use super::{
    ConfigError, invalid,
    schema::{AuthRuleSection, AuthSection, ClaimSection, JwksSection},
};
use crate::auth::policy::{
    AuthRule, AuthSettings, ClaimCheck, ClaimRequirement, JwksSource, normalize_method,
};

/// Longest accepted leeway: beyond it `exp` means little.
const MAX_LEEWAY_SECS: u64 = 300;

fn positive_ms(key: &str, value: u64) -> Result<Duration, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(Duration::from_millis(value))
    }
}

fn jwks_source(section: &JwksSection) -> Result<JwksSource, ConfigError> {
    const KEY: &str = "gateway.auth.jwks";
    match (&section.file, &section.url) {
        (Some(file), None) if !file.as_os_str().is_empty() => Ok(JwksSource::File(file.clone())),
        (None, Some(url)) => {
            let uri: http::Uri = url.trim().parse().map_err(|e| {
                invalid(&format!("{KEY}.url"), format!("{url:?} is not a URL: {e}"))
            })?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(invalid(
                    &format!("{KEY}.url"),
                    format!("{url:?} must be an http:// or https:// URL with a host"),
                ));
            }
            Ok(JwksSource::Url(url.trim().to_owned()))
        }
        (Some(_), Some(_)) => Err(invalid(KEY, "set either file or url, not both")),
        _ => Err(invalid(
            KEY,
            "set file (a JWKS file) or url (the identity provider's jwks_uri)",
        )),
    }
}

fn names(key: &str, values: Vec<String>, what: &str) -> Result<Vec<String>, ConfigError> {
    if values.is_empty() {
        return Err(invalid(
            key,
            format!("at least one {what} is required: tokens are checked against it"),
        ));
    }
    if let Some(index) = values.iter().position(|v| v.trim().is_empty()) {
        return Err(invalid(&format!("{key}[{index}]"), "must not be empty"));
    }
    Ok(values)
}

fn claim(key: &str, section: ClaimSection) -> Result<ClaimRequirement, ConfigError> {
    if section.claim.trim().is_empty() {
        return Err(invalid(&format!("{key}.claim"), "must name a claim"));
    }
    let check = match (section.contains, section.equals) {
        (Some(_), Some(_)) => {
            return Err(invalid(key, "set contains or equals, not both"));
        }
        (Some(value), None) if value.is_empty() => {
            return Err(invalid(&format!("{key}.contains"), "must not be empty"));
        }
        (None, Some(value)) if value.is_empty() => {
            return Err(invalid(&format!("{key}.equals"), "must not be empty"));
        }
        (Some(value), None) => ClaimCheck::Contains(value),
        (None, Some(value)) => ClaimCheck::Equals(value),
        (None, None) => ClaimCheck::Present,
    };
    Ok(ClaimRequirement {
        claim: section.claim.trim().to_owned(),
        check,
    })
}

/// `METHOD /path`, as route labels are written (`POST /v1/users`, `PUT /v1/users/{id}`).
fn route_label(value: &str) -> Option<String> {
    let (method, path) = value.trim().split_once(' ')?;
    let method_ok = !method.is_empty() && method.chars().all(|c| c.is_ascii_uppercase());
    (method_ok && path.starts_with('/') && !path.contains(' ')).then(|| format!("{method} {path}"))
}

fn rule(index: usize, section: AuthRuleSection) -> Result<AuthRule, ConfigError> {
    let key = |field: &str| format!("gateway.auth.rules[{index}].{field}");
    if section.name.trim().is_empty() {
        return Err(invalid(&key("name"), "must not be empty"));
    }
    if section.methods.is_empty() && section.routes.is_empty() {
        return Err(invalid(
            &key("methods"),
            "a rule names gRPC methods, REST routes or both",
        ));
    }
    let methods = section
        .methods
        .iter()
        .enumerate()
        .map(|(i, name)| {
            normalize_method(name).ok_or_else(|| {
                invalid(
                    &key(&format!("methods[{i}]")),
                    format!("{name:?} is not a gRPC method (package.Service/Method)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let routes = section
        .routes
        .iter()
        .enumerate()
        .map(|(i, label)| {
            route_label(label).ok_or_else(|| {
                invalid(
                    &key(&format!("routes[{i}]")),
                    format!("{label:?} is not a REST route (`POST /v1/users`)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let claims = section
        .require_claims
        .into_iter()
        .enumerate()
        .map(|(i, c)| claim(&key(&format!("require_claims[{i}]")), c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuthRule {
        name: section.name.trim().to_owned(),
        methods,
        routes,
        claims,
    })
}

pub(super) fn auth_settings(section: AuthSection) -> Result<AuthSettings, ConfigError> {
    let jwks = jwks_source(&section.jwks)?;
    let refresh_interval = positive_ms(
        "gateway.auth.jwks.refresh_interval_ms",
        section.jwks.refresh_interval_ms,
    )?;
    let min_refresh_interval = positive_ms(
        "gateway.auth.jwks.min_refresh_interval_ms",
        section.jwks.min_refresh_interval_ms,
    )?;
    let fetch_timeout = positive_ms(
        "gateway.auth.jwks.fetch_timeout_ms",
        section.jwks.fetch_timeout_ms,
    )?;
    let issuers = names("gateway.auth.issuers", section.issuers, "issuer")?;
    let audiences = names("gateway.auth.audiences", section.audiences, "audience")?;
    if section.leeway_secs > MAX_LEEWAY_SECS {
        return Err(invalid(
            "gateway.auth.leeway_secs",
            format!("must be at most {MAX_LEEWAY_SECS}"),
        ));
    }
    if section.rules.is_empty() {
        return Err(invalid(
            "gateway.auth.rules",
            "no rule: nothing would need a token (remove gateway.auth to turn auth off)",
        ));
    }
    let mut rules: Vec<AuthRule> = Vec::with_capacity(section.rules.len());
    for (index, section) in section.rules.into_iter().enumerate() {
        let rule = rule(index, section)?;
        if rules.iter().any(|r| r.name == rule.name) {
            return Err(invalid(
                &format!("gateway.auth.rules[{index}].name"),
                format!("{:?} is used by an earlier rule", rule.name),
            ));
        }
        rules.push(rule);
    }
    Ok(AuthSettings {
        jwks,
        refresh_interval,
        min_refresh_interval,
        fetch_timeout,
        issuers,
        audiences,
        leeway: Duration::from_secs(section.leeway_secs),
        rules,
    })
}
