//! What resolving a consumer costs: an API key looked up in a table of
//! 100,000 consumers, and a bearer JWT verified per algorithm, the first
//! time (signature and claims) and again (from the cache of verified tokens).
//!
//! cargo bench --bench consumers

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::json;
use tollgate::config::load_str;

const CONSUMERS: usize = 100_000;

fn key_table(c: &mut Criterion) {
    let mut yaml = String::from(
        "upstreams: { api: { servers: [\"127.0.0.1:9\"] } }\n\
         plans: { free: { limits: [ { key: consumer, rate: 10/second } ] } }\n\
         consumers:\n  list:\n",
    );
    for i in 0..CONSUMERS {
        yaml.push_str(&format!(
            "    - {{ id: c{i}, plan: free, keys: [key-{i}] }}\n"
        ));
    }
    yaml.push_str(
        "rules: [ { name: api, match: { path: \"/**\" }, upstream: api, plan: true } ]\n",
    );
    let rt = load_str(&yaml, Path::new("bench.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let table = rt.consumers.as_ref().unwrap_or_else(|| unreachable!());
    let mut group = c.benchmark_group("api_key");
    group.bench_function(BenchmarkId::new("known", CONSUMERS), |b| {
        b.iter(|| black_box(table.lookup(black_box(b"key-73412"))))
    });
    group.bench_function(BenchmarkId::new("unknown", CONSUMERS), |b| {
        b.iter(|| black_box(table.lookup(black_box(b"no-such-key"))))
    });
    group.finish();
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// (algorithm, its signing key, its public JWK)
fn keys() -> Vec<(Algorithm, EncodingKey, serde_json::Value)> {
    let rng = SystemRandom::new();
    let rsa_jwks: serde_json::Value =
        serde_json::from_str(include_str!("../tests/jwt/rsa_public.jwks.json"))
            .unwrap_or_else(|_| unreachable!());
    let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .unwrap_or_else(|_| unreachable!());
    let ec_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref(), &rng)
        .unwrap_or_else(|_| unreachable!());
    let point = ec_pair.public_key().as_ref();
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap_or_else(|_| unreachable!());
    let ed_pair = Ed25519KeyPair::from_pkcs8(ed.as_ref()).unwrap_or_else(|_| unreachable!());
    vec![
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_der(include_bytes!("../tests/jwt/rsa_private.der")),
            rsa_jwks["keys"][0].clone(),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_der(ec.as_ref()),
            json!({ "kty": "EC", "crv": "P-256", "kid": "ec-1",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..]) }),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(ed.as_ref()),
            json!({ "kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
                    "x": URL_SAFE_NO_PAD.encode(ed_pair.public_key().as_ref()) }),
        ),
        (
            Algorithm::HS256,
            EncodingKey::from_secret(b"bench-secret"),
            json!({ "kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode(b"bench-secret") }),
        ),
    ]
}

fn jwt(c: &mut Criterion) {
    let keys = keys();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let jwks = json!({ "keys": keys.iter().map(|(_, _, jwk)| jwk.clone()).collect::<Vec<_>>() });
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let yaml = "upstreams: { api: { servers: [\"127.0.0.1:9\"] } }
plans: { free: { limits: [ { key: consumer, rate: 10/second } ] } }
consumers:
  jwt: { keys: jwks.json, algorithms: [RS256, ES256, EdDSA, HS256], audience: api, plan_claim: plan, default_plan: free }
rules: [ { name: api, match: { path: \"/**\" }, upstream: api, plan: true } ]
";
    let rt = load_str(yaml, &dir.path().join("bench.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let verifier = rt
        .consumers
        .as_ref()
        .and_then(|c| c.jwt())
        .unwrap_or_else(|| unreachable!());
    let claims = json!({ "sub": "acme", "plan": "free", "aud": "api", "exp": now() + 3600 });
    let mut group = c.benchmark_group("jwt");
    for (alg, key, jwk) in &keys {
        let mut header = Header::new(*alg);
        header.kid = jwk["kid"].as_str().map(String::from);
        let token = encode(&header, &claims, key).unwrap_or_else(|e| panic!("{e}"));
        let name = format!("{alg:?}");
        let at = now();
        assert!(verifier.verify_uncached(&token, at).is_ok(), "{name}");
        group.bench_function(BenchmarkId::new("first_sight", &name), |b| {
            b.iter(|| black_box(verifier.verify_uncached(black_box(&token), at)))
        });
        group.bench_function(BenchmarkId::new("cached", &name), |b| {
            b.iter(|| black_box(verifier.verify(black_box(&token), at)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = key_table, jwt
}
criterion_main!(benches);
