//! Verified JWTs name consumers: the signature (a JWKS key picked by `kid`,
//! or a shared secret), `exp`, `nbf`, `iss` and `aud` are checked; the
//! consumer is a claim (`sub` by default) and its plan another. Times are
//! checked here against an injected `now`, not by the JWT library's clock.
//! Verified tokens are cached by digest until they expire, so a client that
//! sends the same token again costs one hash and one lookup.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{digest, KeyDigest};

/// Seconds since the epoch: the `now` tokens are checked against.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Keys of one kind verify the algorithms of that kind only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    Rsa,
    Ec,
    Ed,
    Hmac,
}

pub(crate) fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Family::Rsa,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
    }
}

/// Where the verifying keys come from.
pub(crate) enum Keys {
    /// A shared secret (HS256, HS384, HS512).
    Secret(DecodingKey),
    /// A JWKS: keys by `kid`; a token without `kid` needs a set of one key.
    Set(Vec<(Option<String>, Family, DecodingKey)>),
}

impl Keys {
    pub(crate) fn secret(secret: &[u8]) -> Keys {
        Keys::Secret(DecodingKey::from_secret(secret))
    }

    /// The keys of a JWKS document: each one tollgate can verify with.
    pub(crate) fn from_set(set: JwkSet) -> Result<Keys, String> {
        if set.keys.is_empty() {
            return Err("the JWKS has no keys".into());
        }
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                // An empty secret would let anyone sign tokens for any
                // consumer and plan (as an empty `secret_env` is refused).
                AlgorithmParameters::OctetKey(oct) if oct.value.is_empty() => {
                    return Err(format!(
                        "key {i} ({}) is an HMAC key with an empty secret",
                        kid_text(&kid)
                    ))
                }
                AlgorithmParameters::OctetKey(_) => Family::Hmac,
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| format!("key {i} ({}) cannot be used: {e}", kid_text(&kid)))?;
            if kid.is_some() && keys.iter().any(|(k, _, _)| *k == kid) {
                return Err(format!("two keys have the kid {}", kid_text(&kid)));
            }
            keys.push((kid, family, key));
        }
        if keys.len() > 1 && keys.iter().any(|(kid, _, _)| kid.is_none()) {
            return Err("with more than one key, every key needs a `kid`".into());
        }
        Ok(Keys::Set(keys))
    }

    fn families(&self) -> Vec<Family> {
        match self {
            Keys::Secret(_) => vec![Family::Hmac],
            Keys::Set(keys) => keys.iter().map(|(_, f, _)| *f).collect(),
        }
    }

    fn pick(&self, kid: Option<&str>, family: Family) -> Result<&DecodingKey, TokenError> {
        match self {
            Keys::Secret(key) if family == Family::Hmac => Ok(key),
            Keys::Secret(_) => Err(TokenError::AlgorithmNotAllowed),
            Keys::Set(keys) => {
                let found = match (kid, keys.as_slice()) {
                    (None, [only]) => Some(only),
                    (None, _) => None,
                    (Some(kid), keys) => keys.iter().find(|(k, _, _)| k.as_deref() == Some(kid)),
                };
                match found {
                    Some((_, f, key)) if *f == family => Ok(key),
                    Some(_) => Err(TokenError::AlgorithmNotAllowed),
                    None => Err(TokenError::UnknownKeyId),
                }
            }
        }
    }
}

fn kid_text(kid: &Option<String>) -> String {
    kid.as_deref()
        .map_or_else(|| "without kid".into(), |k| format!("{k:?}"))
}

/// What an operator configures, compiled.
pub(crate) struct JwtSettings {
    pub(crate) keys: Keys,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub(crate) leeway: u64,
    pub(crate) consumer_claim: String,
    pub(crate) plan_claim: Option<String>,
    /// Plan names to plan indices.
    pub(crate) plans: HashMap<String, usize>,
    /// The plan of a token whose plan claim is missing or names no plan;
    /// `None`: such a token is refused.
    pub(crate) default_plan: Option<usize>,
    /// Claims kept for `key: { jwt_claim: NAME }` limits.
    pub(crate) kept_claims: Vec<String>,
}

/// Verifies tokens under one config; its cache lives as long as the snapshot,
/// so a key removed by a reload verifies nothing afterwards.
pub struct JwtVerifier {
    settings: JwtSettings,
    /// One validation per key family, with the configured algorithms of
    /// that family (the library refuses a mix).
    validations: HashMap<Family, Validation>,
    cache: TokenCache,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.settings.algorithms)
            .field("issuer", &self.settings.issuer)
            .field("audience", &self.settings.audience)
            .finish_non_exhaustive()
    }
}

/// A verified token: who it names, on which plan, until when.
#[derive(Debug)]
pub struct Verified {
    pub(crate) id: Arc<str>,
    pub(crate) plan: usize,
    /// `exp`, in seconds since the epoch.
    expires: u64,
    /// The values of the kept claims, in `kept_claims` order.
    claims: Box<[Option<Box<str>>]>,
}

impl Verified {
    /// A token replay takes the log's word for: its consumer and plan, no
    /// claims (the log does not keep them).
    pub(crate) fn recorded(id: &str, plan: usize) -> Self {
        Verified {
            id: id.into(),
            plan,
            expires: u64::MAX,
            claims: Box::default(),
        }
    }

    /// The value of kept claim number `slot`.
    pub(crate) fn claim(&self, slot: usize) -> Option<&str> {
        self.claims.get(slot)?.as_deref()
    }
}

/// Why a token is refused; each is named in the 401's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    AlgorithmNotAllowed,
    UnknownKeyId,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// `exp`, or the consumer claim, is missing.
    MissingClaim,
    /// The plan claim names no plan and there is no default plan.
    UnknownPlan,
}

impl TokenError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::UnknownKeyId => "unknown_key_id",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim => "missing_claim",
            TokenError::UnknownPlan => "unknown_plan",
        }
    }
}

impl JwtVerifier {
    /// Builds the verifier; `Err` when no key can verify any of the
    /// algorithms. (Some may lack a key: a JWKS being rotated from one kind
    /// of key to another.)
    pub(crate) fn new(settings: JwtSettings) -> Result<JwtVerifier, String> {
        let families = settings.keys.families();
        if !settings
            .algorithms
            .iter()
            .any(|&alg| families.contains(&family(alg)))
        {
            return Err(format!(
                "no key can verify any of {:?}",
                settings.algorithms
            ));
        }
        let mut validations = HashMap::new();
        for &alg in &settings.algorithms {
            let validation = validations
                .entry(family(alg))
                .or_insert_with(|| base_validation(&settings, alg));
            if !validation.algorithms.contains(&alg) {
                validation.algorithms.push(alg);
            }
        }
        Ok(JwtVerifier {
            settings,
            validations,
            cache: TokenCache::default(),
        })
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Verified>, TokenError> {
        let key = digest(token.as_bytes());
        if let Some(verified) = self.cache.get(&key) {
            return self.unexpired(verified, now);
        }
        let verified = Arc::new(self.verify_uncached(token, now)?);
        self.cache.insert(key, verified.clone(), now);
        Ok(verified)
    }

    fn unexpired(&self, verified: Arc<Verified>, now: u64) -> Result<Arc<Verified>, TokenError> {
        if now > verified.expires.saturating_add(self.settings.leeway) {
            return Err(TokenError::Expired);
        }
        Ok(verified)
    }

    /// Verifies without the cache: what a token seen for the first time
    /// costs (the benchmarks measure it).
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<Verified, TokenError> {
        let s = &self.settings;
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        if !s.algorithms.contains(&header.alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let family = family(header.alg);
        let key = s.keys.pick(header.kid.as_deref(), family)?;
        let validation = self
            .validations
            .get(&family)
            .ok_or(TokenError::AlgorithmNotAllowed)?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, validation)
            .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed,
            ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
            _ => TokenError::Malformed,
        })?;
        let claims = data.claims;
        // NumericDates may have fractions (RFC 7519 §2); a time that is not
        // a number is malformed, never ignored.
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            // Saturating: a negative time is 0, a huge one u64::MAX.
            Some(value) => value
                .as_f64()
                .map(|seconds| Some(seconds as u64))
                .ok_or(TokenError::Malformed),
        };
        let expires = time("exp")?.ok_or(TokenError::MissingClaim)?;
        if now > expires.saturating_add(s.leeway) {
            return Err(TokenError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(s.leeway)) {
            return Err(TokenError::NotYetValid);
        }
        let id = claim_text(&claims, &s.consumer_claim).ok_or(TokenError::MissingClaim)?;
        let named_plan = s
            .plan_claim
            .as_ref()
            .and_then(|c| claim_text(&claims, c))
            .and_then(|name| s.plans.get(name.as_ref()).copied());
        let plan = named_plan
            .or(s.default_plan)
            .ok_or(TokenError::UnknownPlan)?;
        let kept = s
            .kept_claims
            .iter()
            .map(|c| claim_text(&claims, c).map(|v| v.into_owned().into_boxed_str()))
            .collect();
        Ok(Verified {
            id: Arc::from(id.as_ref()),
            plan,
            expires,
            claims: kept,
        })
    }
}

/// Why a token's header does not decode: an `alg` the library does not know
/// (`none` above all), or no header at all.
fn header_error(token: &str) -> TokenError {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    match json.as_ref().and_then(|h| h.get("alg")) {
        Some(Value::String(_)) => TokenError::AlgorithmNotAllowed,
        _ => TokenError::Malformed,
    }
}

/// A claim as text: a string as it is, a number written out; nothing else.
fn claim_text<'a>(
    claims: &'a serde_json::Map<String, Value>,
    name: &str,
) -> Option<std::borrow::Cow<'a, str>> {
    match claims.get(name)? {
        Value::String(s) if !s.is_empty() => Some(std::borrow::Cow::Borrowed(s)),
        Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// `exp` and `nbf` are checked here, against the caller's `now`.
fn base_validation(settings: &JwtSettings, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.algorithms.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    // jsonwebtoken checks `iss` and `aud` only when the token has them: a
    // token without them (or with a number for one) would pass the check
    // the settings ask for.
    let mut required = Vec::new();
    if settings.issuer.is_some() {
        required.push("iss");
    }
    if settings.audience.is_some() {
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation.leeway = 0;
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
    }
    match &settings.audience {
        Some(audience) => validation.set_audience(&[audience]),
        None => validation.validate_aud = false,
    }
    validation
}

/// Verified tokens by digest, in shards so concurrent requests rarely meet
/// on one lock; each shard is bounded, and expired entries go first.
struct TokenCache {
    shards: [Mutex<HashMap<KeyDigest, Arc<Verified>>>; CACHE_SHARDS],
}

const CACHE_SHARDS: usize = 16;
/// Entries per shard: 16 × 4,096 tokens in all.
const CACHE_SHARD_ENTRIES: usize = 4096;

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl TokenCache {
    fn shard(&self, key: &KeyDigest) -> &Mutex<HashMap<KeyDigest, Arc<Verified>>> {
        &self.shards[usize::from(key[0]) % CACHE_SHARDS]
    }

    fn get(&self, key: &KeyDigest) -> Option<Arc<Verified>> {
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(key).cloned()
    }

    fn insert(&self, key: KeyDigest, verified: Arc<Verified>, now: u64) {
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= CACHE_SHARD_ENTRIES {
            shard.retain(|_, v| v.expires >= now);
            if shard.len() >= CACHE_SHARD_ENTRIES {
                shard.clear();
            }
        }
        shard.insert(key, verified);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn settings(keys: Keys, algorithms: Vec<Algorithm>) -> JwtSettings {
        JwtSettings {
            keys,
            algorithms,
            issuer: Some("https://auth.example".into()),
            audience: Some("api".into()),
            leeway: 30,
            consumer_claim: "sub".into(),
            plan_claim: Some("plan".into()),
            plans: HashMap::from([("free".into(), 0), ("pro".into(), 1)]),
            default_plan: None,
            kept_claims: vec!["tenant".into()],
        }
    }

    fn hs256() -> JwtVerifier {
        let keys = Keys::Secret(DecodingKey::from_secret(b"s3cret"));
        JwtVerifier::new(settings(keys, vec![Algorithm::HS256])).unwrap()
    }

    fn token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn claims() -> serde_json::Value {
        json!({ "sub": "acme", "plan": "pro", "tenant": "t-1", "exp": NOW + 60,
                "iss": "https://auth.example", "aud": "api" })
    }

    fn with(change: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let mut c = claims();
        change(&mut c);
        c
    }

    fn remove_exp(c: &mut serde_json::Value) {
        if let Some(claims) = c.as_object_mut() {
            claims.remove("exp");
        }
    }

    #[test]
    fn a_valid_token_names_its_consumer_plan_and_kept_claims() {
        let v = hs256().verify(&token(claims(), b"s3cret"), NOW).unwrap();
        assert_eq!((&*v.id, v.plan, v.claim(0)), ("acme", 1, Some("t-1")));
    }

    #[test]
    fn each_invalid_token_is_refused_with_its_reason() {
        let cases = [
            (token(claims(), b"other"), TokenError::BadSignature),
            (
                token(with(|c| c["exp"] = json!(NOW - 31)), b"s3cret"),
                TokenError::Expired,
            ),
            (
                token(with(|c| c["nbf"] = json!(NOW + 31)), b"s3cret"),
                TokenError::NotYetValid,
            ),
            (
                token(with(|c| c["aud"] = json!("web")), b"s3cret"),
                TokenError::WrongAudience,
            ),
            (
                token(with(|c| c["iss"] = json!("evil")), b"s3cret"),
                TokenError::WrongIssuer,
            ),
            (
                token(with(|c| c["plan"] = json!("gold")), b"s3cret"),
                TokenError::UnknownPlan,
            ),
            (token(with(remove_exp), b"s3cret"), TokenError::MissingClaim),
            ("not.a.token".to_string(), TokenError::Malformed),
        ];
        for (token, reason) in cases {
            assert_eq!(hs256().verify(&token, NOW).err(), Some(reason), "{token}");
        }
    }

    fn without(claim: &'static str) -> impl FnOnce(&mut serde_json::Value) {
        move |c| {
            if let Some(claims) = c.as_object_mut() {
                claims.remove(claim);
            }
        }
    }

    /// jsonwebtoken checks `iss` and `aud` only when a token has them.
    #[test]
    fn a_token_without_the_issuer_or_audience_the_settings_ask_for_is_refused() {
        for claims in [
            with(without("aud")),
            with(without("iss")),
            with(|c| c["aud"] = json!(7)),
            with(|c| c["iss"] = json!(7)),
        ] {
            let refused = hs256().verify(&token(claims.clone(), b"s3cret"), NOW);
            assert_eq!(refused.err(), Some(TokenError::MissingClaim), "{claims}");
        }
    }

    #[test]
    fn token_times_may_have_fractions_but_must_be_numbers() {
        let fraction = with(|c| c["exp"] = json!(NOW as f64 + 60.5));
        assert!(hs256().verify(&token(fraction, b"s3cret"), NOW).is_ok());
        let later = with(|c| c["nbf"] = json!(NOW as f64 + 3600.5));
        let refused = hs256().verify(&token(later, b"s3cret"), NOW);
        assert_eq!(refused.err(), Some(TokenError::NotYetValid));
        let text = with(|c| c["nbf"] = json!("9999999999"));
        let refused = hs256().verify(&token(text, b"s3cret"), NOW);
        assert_eq!(refused.err(), Some(TokenError::Malformed));
    }

    #[test]
    fn alg_none_is_refused() {
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let unsigned = format!("{header}.eyJzdWIiOiJhY21lIn0.");
        assert_eq!(
            hs256().verify(&unsigned, NOW).err(),
            Some(TokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn leeway_admits_a_token_just_past_exp() {
        let t = token(with(|c| c["exp"] = json!(NOW - 29)), b"s3cret");
        assert!(hs256().verify(&t, NOW).is_ok());
    }

    #[test]
    fn a_cached_token_still_expires() {
        let verifier = hs256();
        let t = token(claims(), b"s3cret");
        assert!(verifier.verify(&t, NOW).is_ok());
        assert_eq!(
            verifier.verify(&t, NOW + 91).err(),
            Some(TokenError::Expired)
        );
    }

    #[test]
    fn an_unknown_plan_gets_the_default_plan_when_there_is_one() {
        let keys = Keys::Secret(DecodingKey::from_secret(b"s3cret"));
        let mut s = settings(keys, vec![Algorithm::HS256]);
        s.default_plan = Some(0);
        let verifier = JwtVerifier::new(s).unwrap();
        let t = token(with(|c| c["plan"] = json!("gold")), b"s3cret");
        assert_eq!(verifier.verify(&t, NOW).unwrap().plan, 0);
    }

    #[test]
    fn an_algorithm_no_key_can_verify_is_a_config_error() {
        let keys = Keys::Secret(DecodingKey::from_secret(b"s3cret"));
        assert!(JwtVerifier::new(settings(keys, vec![Algorithm::RS256])).is_err());
    }

    #[test]
    fn a_jwks_with_two_keys_needs_their_kids() {
        let key = r#"{"kty":"oct","k":"czNjcmV0"}"#;
        let set = |text: &str| Keys::from_set(serde_json::from_str(text).unwrap());
        assert!(set(&format!(r#"{{"keys":[{key},{key}]}}"#)).is_err());
        assert!(set(&format!(r#"{{"keys":[{key}]}}"#)).is_ok());
        assert!(set(r#"{"keys":[]}"#).is_err());
    }

    #[test]
    fn a_jwks_hmac_key_with_an_empty_secret_is_refused() {
        let set: JwkSet =
            serde_json::from_str(r#"{"keys":[{"kty":"oct","kid":"x","k":""}]}"#).unwrap();
        let refused = Keys::from_set(set).err().unwrap();
        assert!(refused.contains("empty secret"), "{refused}");
    }
}
