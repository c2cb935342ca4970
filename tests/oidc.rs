//! OIDC sign-in against a real server: JWTs from a test issuer (a key pair made here, its
//! JWKS in a file the server config names), mapped to users and groups that role bindings
//! name; and every way a JWT can be wrong, refused with its reason and audited.

// Test code: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;
use infraos_client::Method;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use support::*;

const V1: &str = "/apis/infraos.io/v1";
const ISSUER: &str = "https://issuer.test";

struct Issuer {
    key: EncodingKey,
    jwk: serde_json::Value,
}

fn issuer(kid: &str) -> Issuer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw());
    Issuer {
        key: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt(issuer: &Issuer, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &issuer.key).unwrap()
}

fn claims(overrides: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "iss": ISSUER, "aud": "infraos", "sub": "alice",
        "groups": ["devs"], "iat": now(), "exp": now() + 600,
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

#[tokio::test]
async fn oidc_tokens_sign_in_and_bad_ones_are_refused_with_reasons() {
    let trusted = issuer("k1");
    let impostor = issuer("k1");
    let keys = tempfile::tempdir().unwrap();
    let jwks = keys.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [trusted.jwk]}).to_string()).unwrap();
    let server = TestServer::start_with_config(&format!(
        "oidc:\n  issuer: {ISSUER}\n  audiences: [infraos]\n  jwksFile: {}\n",
        jwks.display()
    ))
    .await;
    let admin = server.client();
    apply_yaml(
        &admin,
        r#"
apiVersion: infraos.io/v1
kind: Tenant
metadata: {name: t}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {name: p}
spec: {tenant: t}
---
apiVersion: infraos.io/v1
kind: Project
metadata: {name: other}
spec: {tenant: t}
---
apiVersion: infraos.io/v1
kind: RoleBinding
metadata: {name: devs-in-p}
spec:
  role: project-member
  scope: {project: p}
  subjects: [{kind: Group, name: "oidc:devs"}]
"#,
    )
    .await;
    let call = |token: String, project: &'static str| {
        let c = admin.clone();
        async move {
            c.raw(
                Method::GET,
                &format!("{V1}/namespaces/{project}/claims"),
                None,
                Vec::new(),
                Some(&token),
            )
            .await
            .unwrap()
        }
    };

    // A good token: its group's binding applies, and only where it is bound.
    let good = jwt(&trusted, "k1", claims(json!({})));
    let (code, body) = call(good.clone(), "p").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call(good.clone(), "other").await;
    assert_eq!(code, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("user:oidc:alice"),
        "{body}"
    );

    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"guess").unwrap(),
    )
    .unwrap();
    let cases = [
        (
            "expired",
            jwt(&trusted, "k1", claims(json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "not yet valid",
            jwt(&trusted, "k1", claims(json!({"nbf": now() + 600}))),
            "not valid yet",
        ),
        (
            "wrong audience",
            jwt(&trusted, "k1", claims(json!({"aud": "someone-else"}))),
            "audience",
        ),
        (
            "wrong issuer",
            jwt(&trusted, "k1", claims(json!({"iss": "https://evil.test"}))),
            "issuer",
        ),
        (
            "forged signature",
            jwt(&impostor, "k1", claims(json!({}))),
            "signature",
        ),
        ("unknown key", jwt(&trusted, "k9", claims(json!({}))), "k9"),
        (
            "no expiry",
            jwt(&trusted, "k1", claims(json!({"exp": null}))),
            "exp",
        ),
        (
            "no user claim",
            jwt(&trusted, "k1", claims(json!({"sub": null}))),
            "sub",
        ),
        ("shared-secret algorithm", hs256, "algorithm"),
    ];
    for (what, token, reason) in cases {
        let (code, body) = call(token, "p").await;
        assert_eq!(code, 401, "{what}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{what}: {message}");
    }

    // Each refusal is in the audit chain with its reason; no token is.
    let records = admin.get_path(&format!("{V1}/auditrecords")).await.unwrap();
    let reasons: Vec<String> = records["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["entry"]["verb"] == "authenticate")
        .map(|r| {
            r["entry"]["result"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(reasons.len() >= 9, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("expired")));
    assert!(!records.to_string().contains(&good));
}
