//! JWT bearer tokens at the edge (`gateway.auth`): which calls need one and what its claims
//! must say ([`policy`], pure), the JSON Web Key Set they are verified against ([`keys`],
//! pure), and here the I/O around them: the current key set (swapped whole on each good
//! fetch, kept on a bad one), its refresh on an interval and on an unknown key id
//! (rate-limited), and verification with `jsonwebtoken` (RS256, ES256; `iss`, `aud`, `exp`,
//! `nbf` with leeway).

mod jwks;
pub mod keys;
pub mod policy;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;
use jwks::Fetcher;
use keys::{ACCEPTED, KeySet};
use policy::{AuthFailure, AuthPolicy, AuthRule, AuthSettings, check_claims, payload_segment};

/// What a verified token sends upstream ([`policy::SUBJECT_HEADER`], [`policy::CLAIMS_HEADER`]).
#[derive(Debug, Clone)]
pub struct ForwardedClaims {
    pub subject: Option<HeaderValue>,
    pub claims: HeaderValue,
}

impl ForwardedClaims {
    /// The metadata pairs, for either kind of header map.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &HeaderValue)> {
        self.subject
            .iter()
            .map(|sub| (policy::SUBJECT_HEADER, sub))
            .chain(std::iter::once((policy::CLAIMS_HEADER, &self.claims)))
    }
}

/// The gateway's token checks: the policy, the current keys and their refresh.
pub struct Authenticator {
    policy: AuthPolicy,
    keys: ArcSwap<KeySet>,
    fetcher: Fetcher,
    /// Per accepted algorithm, in [`ACCEPTED`]'s order.
    validations: [Validation; 2],
    gate: Mutex<policy::RefreshGate>,
    refresh_now: Notify,
    /// Counts finished fetch attempts, so a request that asked for one can wait for it.
    attempts: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

fn validation(algorithm: Algorithm, settings: &AuthSettings) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&settings.issuers);
    validation.set_audience(&settings.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation
}

/// A `jsonwebtoken` failure as the client is told it.
fn failure(error: &jsonwebtoken::errors::Error) -> AuthFailure {
    match error.kind() {
        ErrorKind::InvalidSignature => AuthFailure::BadSignature,
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => {
            AuthFailure::MissingRegisteredClaim(claim.clone())
        }
        // A key of the set the library cannot use: the token cannot be verified with it.
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat => {
            tracing::warn!(%error, "a JWKS key cannot verify tokens");
            AuthFailure::BadSignature
        }
        _ => AuthFailure::Malformed,
    }
}

impl Authenticator {
    /// A file source is read now (a missing or unusable file stops the start); a URL is
    /// fetched by [`JwksRefresh`] once the server runs.
    pub fn new(settings: AuthSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let fetcher = Fetcher::new(&settings.jwks, settings.fetch_timeout)?;
        let keys = match fetcher.read_file_now() {
            Some(document) => {
                let document = document?;
                let (keys, skipped) = KeySet::parse(&document)
                    .map_err(|e| format!("gateway.auth.jwks {}: {e}", fetcher.describe()))?;
                log_skipped(&fetcher, &skipped);
                metrics.jwks_keys.set(keys.len() as i64);
                keys
            }
            None => KeySet::default(),
        };
        let validations = ACCEPTED.map(|algorithm| validation(algorithm, &settings));
        Ok(Self {
            gate: Mutex::new(policy::RefreshGate::new(settings.min_refresh_interval)),
            policy: AuthPolicy::new(settings),
            keys: ArcSwap::from_pointee(keys),
            fetcher,
            validations,
            refresh_now: Notify::new(),
            attempts: watch::Sender::new(0),
            metrics,
        })
    }

    pub fn policy(&self) -> &AuthPolicy {
        &self.policy
    }

    /// Checks the call's `Authorization` header against `rule`; counts the decision.
    pub async fn authenticate(
        &self,
        rule: &AuthRule,
        authorization: Option<&[u8]>,
    ) -> Result<ForwardedClaims, AuthFailure> {
        let result = self.check(rule, authorization).await;
        let outcome = match &result {
            Ok(_) => "allowed",
            Err(failure) => {
                tracing::debug!(rule = %rule.name, %failure, "call refused");
                failure.outcome()
            }
        };
        self.metrics
            .auth_decisions
            .with_label_values(&[outcome])
            .inc();
        result
    }

    async fn check(
        &self,
        rule: &AuthRule,
        authorization: Option<&[u8]>,
    ) -> Result<ForwardedClaims, AuthFailure> {
        let token = policy::bearer_token(authorization)?;
        let mut verified = self.verify(token);
        if matches!(verified, Err(AuthFailure::UnknownKey)) && self.refresh_for_unknown_key().await
        {
            verified = self.verify(token);
        }
        let claims = verified?;
        check_claims(rule, &claims)?;
        let claims_header = payload_segment(token)
            .and_then(|payload| HeaderValue::from_str(payload).ok())
            .ok_or(AuthFailure::Malformed)?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(|sub| HeaderValue::from_str(sub).ok());
        Ok(ForwardedClaims {
            subject,
            claims: claims_header,
        })
    }

    /// The token's claims if it verifies against the current keys.
    fn verify(&self, token: &str) -> Result<Value, AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Malformed)?;
        let Some(index) = ACCEPTED.iter().position(|a| *a == header.alg) else {
            return Err(AuthFailure::UnsupportedAlgorithm(format!(
                "{:?}",
                header.alg
            )));
        };
        let keys = self.keys.load();
        let mut outcome = Err(AuthFailure::UnknownKey);
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            match jsonwebtoken::decode::<Value>(token, &key.key, &self.validations[index]) {
                Ok(data) => return Ok(data.claims),
                Err(error) => {
                    let failure = failure(&error);
                    // Claims are checked after the signature: any other failure is final.
                    if failure != AuthFailure::BadSignature {
                        return Err(failure);
                    }
                    outcome = Err(failure);
                }
            }
        }
        outcome
    }

    /// A token names a key the set lacks (the provider may have rotated): fetch the set again
    /// now, unless that was done less than `min_refresh_interval` ago, and wait for it.
    async fn refresh_for_unknown_key(&self) -> bool {
        let allowed = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_start(Instant::now());
        if !allowed {
            return false;
        }
        let mut attempts = self.attempts.subscribe();
        attempts.mark_unchanged();
        self.refresh_now.notify_one();
        let wait = self.policy.settings.fetch_timeout + Duration::from_millis(500);
        matches!(
            tokio::time::timeout(wait, attempts.changed()).await,
            Ok(Ok(()))
        )
    }

    /// One fetch: a good set replaces the keys; a failed fetch or unusable document keeps
    /// them, counted and logged.
    async fn refresh(&self) {
        let fetched = self
            .fetcher
            .fetch()
            .await
            .and_then(|document| KeySet::parse(&document).map_err(|e| e.to_string()));
        match fetched {
            Ok((keys, skipped)) => {
                log_skipped(&self.fetcher, &skipped);
                self.metrics.jwks_keys.set(keys.len() as i64);
                tracing::debug!(source = %self.fetcher.describe(), keys = keys.len(), "JWKS refreshed");
                self.keys.store(Arc::new(keys));
            }
            Err(error) => {
                self.metrics.jwks_refresh_failures.inc();
                tracing::warn!(
                    source = %self.fetcher.describe(),
                    %error,
                    keys_kept = self.keys.load().len(),
                    "JWKS refresh failed; the last good keys stay in use"
                );
            }
        }
        self.attempts.send_modify(|n| *n += 1);
    }

    /// Fetches at once, then every `refresh_interval` and whenever an unknown key id asks.
    async fn refresh_loop(&self) {
        loop {
            self.refresh().await;
            tokio::select! {
                () = tokio::time::sleep(self.policy.settings.refresh_interval) => {}
                () = self.refresh_now.notified() => {}
            }
        }
    }
}

fn log_skipped(fetcher: &Fetcher, skipped: &[String]) {
    for why in skipped {
        tracing::warn!(source = %fetcher.describe(), key = %why, "JWKS key skipped");
    }
}

/// The key refresh as a pingora background service (stops with the server).
pub struct JwksRefresh(pub Arc<Authenticator>);

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            () = self.0.refresh_loop() => {}
            _ = shutdown.changed() => {}
        }
    }
}
