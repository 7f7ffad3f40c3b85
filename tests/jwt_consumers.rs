//! Consumers named by verified JWTs, against a live gateway: each signature
//! algorithm, each refusal with its reason, a JWKS rotated by editing its
//! file, and limits keyed by a claim.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use common::{client, eventually, gateway_config, Gateway, Upstream};

/// A signing key with its public JWK.
struct SigningKey {
    kid: &'static str,
    alg: Algorithm,
    private: EncodingKey,
    jwk: Value,
}

fn rsa_key() -> SigningKey {
    let der = include_bytes!("jwt/rsa_private.der");
    let jwks: Value = serde_json::from_str(include_str!("jwt/rsa_public.jwks.json")).unwrap();
    SigningKey {
        kid: "rsa-1",
        alg: Algorithm::RS256,
        private: EncodingKey::from_rsa_der(der),
        jwk: jwks["keys"][0].clone(),
    }
}

fn ec_key(kid: &'static str) -> SigningKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref(); // 0x04, x, y
    SigningKey {
        kid,
        alg: Algorithm::ES256,
        private: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({ "kty": "EC", "crv": "P-256", "kid": kid,
                     "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                     "y": URL_SAFE_NO_PAD.encode(&point[33..]) }),
    }
}

fn ed_key() -> SigningKey {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    SigningKey {
        kid: "ed-1",
        alg: Algorithm::EdDSA,
        private: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({ "kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
                     "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()) }),
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token for `sub` on `plan`.
fn claims(sub: &str, plan: &str) -> Value {
    json!({ "sub": sub, "plan": plan, "tenant": "t-1", "iss": "https://auth.example",
            "aud": "api", "exp": now() + 600 })
}

fn sign(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.into());
    encode(&header, claims, &key.private).unwrap()
}

const CONFIG: &str = "
plans:
  free: { limits: [ { name: quota, key: consumer, rate: 5/hour, algorithm: fixed_window } ] }
  pro: { limits: [ { name: quota, key: consumer, rate: 15/hour, algorithm: fixed_window } ] }
consumers:
  jwt:
    keys: jwks.json
    algorithms: [RS256, ES256, EdDSA]
    issuer: https://auth.example
    audience: api
    plan_claim: plan
  forward: { id: x-consumer-id, plan: x-consumer-plan }
rules:
  - name: api
    match: { path: \"/api/**\" }
    upstream: api
    plan: true
  - name: tenants
    match: { path: \"/tenant/**\" }
    upstream: api
    limits:
      - { name: per-tenant, key: { jwt_claim: tenant }, rate: 3/hour, algorithm: fixed_window }
";

async fn start(keys: &[&SigningKey], upstream: &Upstream) -> Gateway {
    Gateway::start_with_files(
        &gateway_config("api", CONFIG),
        upstream.addr,
        &[("jwks.json", &jwks(keys))],
    )
    .await
}

async fn get(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    let answer = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_token_of_each_algorithm_names_its_consumer_and_plan() {
    let upstream = Upstream::start().await;
    let (rsa, ec, ed) = (rsa_key(), ec_key("ec-1"), ed_key());
    let gw = start(&[&rsa, &ec, &ed], &upstream).await;
    for (key, sub) in [(&rsa, "r"), (&ec, "e"), (&ed, "d")] {
        let (status, body) = get(&gw, "/api/x", &sign(key, &claims(sub, "pro"))).await;
        assert_eq!(status, 200, "{:?}: {body}", key.alg);
        let seen = upstream.last();
        assert_eq!(seen.header("x-consumer-id").as_deref(), Some(sub));
        assert_eq!(seen.header("x-consumer-plan").as_deref(), Some("pro"));
    }
}

#[tokio::test]
async fn each_consumer_gets_its_plans_quota() {
    let upstream = Upstream::start().await;
    let ec = ec_key("ec-1");
    let gw = start(&[&ec], &upstream).await;
    let (free, pro) = (
        sign(&ec, &claims("a", "free")),
        sign(&ec, &claims("b", "pro")),
    );
    let mut admitted = (0, 0);
    for _ in 0..20 {
        admitted.0 += usize::from(get(&gw, "/api/x", &free).await.0 == 200);
        admitted.1 += usize::from(get(&gw, "/api/x", &pro).await.0 == 200);
    }
    assert_eq!(admitted, (5, 15));
}

#[tokio::test]
async fn only_a_valid_token_is_admitted_and_each_refusal_names_its_reason() {
    let upstream = Upstream::start().await;
    let ec = ec_key("ec-1");
    let gw = start(&[&ec], &upstream).await;
    let impostor = ec_key("ec-1"); // same kid, another key
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims("a", "pro");
        change(&mut c);
        c
    };
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("a", "pro").to_string())
    );
    let cases = [
        (sign(&impostor, &claims("a", "pro")), "bad_signature"),
        (unsigned, "algorithm_not_allowed"),
        (
            sign(&ec, &with(&|c| c["exp"] = json!(now() - 120))),
            "expired",
        ),
        (
            sign(&ec, &with(&|c| c["nbf"] = json!(now() + 120))),
            "not_yet_valid",
        ),
        (
            sign(&ec, &with(&|c| c["aud"] = json!("web"))),
            "wrong_audience",
        ),
    ];
    for (token, reason) in cases {
        let (status, body) = get(&gw, "/api/x", &token).await;
        assert_eq!(status, 401, "{reason}: {body}");
        assert_eq!(body["error"], "invalid_token", "{body}");
        assert_eq!(body["reason"], reason, "{body}");
    }
    assert_eq!(upstream.count(), 0, "no refused token reached the upstream");
    let (status, _) = get(&gw, "/api/x", &sign(&ec, &claims("a", "pro"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_jwks_rotated_by_editing_its_file_takes_effect_without_a_restart() {
    let upstream = Upstream::start().await;
    let (old, new) = (ec_key("ec-1"), ec_key("ec-2"));
    let gw = start(&[&old], &upstream).await;
    let (old_token, new_token) = (
        sign(&old, &claims("a", "pro")),
        sign(&new, &claims("b", "pro")),
    );
    assert_eq!(get(&gw, "/api/x", &old_token).await.0, 200);
    assert_eq!(
        get(&gw, "/api/x", &new_token).await.1["reason"],
        "unknown_key_id"
    );
    gw.write_beside("jwks.json", &jwks(&[&old, &new]));
    eventually(
        Duration::from_secs(10),
        "the new key is accepted",
        || async { get(&gw, "/api/x", &new_token).await.0 == 200 },
    )
    .await;
    gw.write_beside("jwks.json", &jwks(&[&new]));
    eventually(
        Duration::from_secs(10),
        "the removed key is refused",
        || async { get(&gw, "/api/x", &old_token).await.1["reason"] == "unknown_key_id" },
    )
    .await;
    assert_eq!(get(&gw, "/api/x", &new_token).await.0, 200);
}

#[tokio::test]
async fn a_limit_keyed_by_a_claim_counts_every_consumer_with_that_claim_together() {
    let upstream = Upstream::start().await;
    let ec = ec_key("ec-1");
    let gw = start(&[&ec], &upstream).await;
    let tokens: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|sub| sign(&ec, &claims(sub, "free")))
        .collect();
    let mut statuses = Vec::new();
    for token in &tokens {
        statuses.push(get(&gw, "/tenant/x", token).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429], "one tenant, 3 an hour");
}

#[tokio::test]
async fn an_api_key_where_a_token_is_expected_is_refused_as_an_unknown_key() {
    let upstream = Upstream::start().await;
    let gw = start(&[&ec_key("ec-1")], &upstream).await;
    let (status, body) = get(&gw, "/api/x", "not-a-jwt").await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unknown_key")));
    let answer = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(answer.status(), 401);
}

/// Counted as the token's consumer while an upstream that reads the key
/// serves the key's: a client would pick the bucket it is counted in.
#[tokio::test]
async fn a_token_beside_an_api_key_is_refused_as_conflicting() {
    let upstream = Upstream::start().await;
    let key = ec_key("ec-1");
    let gw = start(&[&key], &upstream).await;
    let answer = client()
        .get(gw.url("/api/x"))
        .bearer_auth(sign(&key, &claims("mallory", "free")))
        .header("x-api-key", "pro-key-1")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "conflicting_key", "{body}");
    assert_eq!(upstream.count(), 0);
}

#[test]
fn a_jwks_that_does_not_parse_is_refused_with_its_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        "{\n  \"keys\": [ { \"kty\": \"RSA\", }\n}",
    )
    .unwrap();
    let config = dir.path().join("config.yaml");
    let [listen, admin, upstream] =
        ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:9"].map(|a| a.parse().unwrap());
    let text = common::render(&gateway_config("api", CONFIG), listen, admin, upstream);
    std::fs::write(&config, text).unwrap();
    let error = tollgate::config::load_file(&config).expect_err("a broken JWKS");
    assert_eq!(error.problems.len(), 1, "{error}");
    let problem = &error.problems[0];
    assert_eq!(
        problem.file.as_deref(),
        Some(dir.path().join("jwks.json").as_path())
    );
    assert_eq!((problem.line, problem.column), (2, 29), "{problem}");
    assert!(problem.message.contains("not a JWKS document"), "{problem}");
}
