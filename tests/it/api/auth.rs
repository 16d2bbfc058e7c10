//! Tokens that must be refused with 401, and the `token` command.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use order_service::auth::{Auth, Role};

use crate::app::{SECRET, TestApp, User, simple_order, spawn_app, spawn_app_with};
use crate::identities::openssl;

fn sign(claims: serde_json::Value, secret: &str, alg: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// An admin's claims, expiring `exp_offset` seconds from now, for the default issuer and
/// audience.
fn claims(exp_offset: i64) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": Uuid::now_v7(), "role": "admin", "iat": now, "exp": now + exp_offset,
        "iss": "order-service", "aud": "order-service"
    })
}

async fn list_with(app: &TestApp, authorization: Option<&str>) -> (StatusCode, serde_json::Value) {
    let mut req = app.client.get(app.url("/api/v1/orders"));
    if let Some(value) = authorization {
        req = req.header("Authorization", value);
    }
    crate::app::into_json(req.send().await.unwrap()).await
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401() {
    let app = spawn_app().await;
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(3600).to_string())
    );
    let cases = [
        ("missing", None),
        ("not bearer", Some("Basic dXNlcjpwYXNz".to_owned())),
        ("malformed", Some("Bearer not-a-jwt".to_owned())),
        (
            "bad signature",
            Some(format!(
                "Bearer {}",
                sign(
                    claims(3600),
                    "another-secret-another-secret-0000",
                    Algorithm::HS256
                )
            )),
        ),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        (
            "other algorithm",
            Some(format!(
                "Bearer {}",
                sign(claims(3600), SECRET, Algorithm::HS512)
            )),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                sign(claims(-3600), SECRET, Algorithm::HS256)
            )),
        ),
        (
            "no role",
            Some(format!(
                "Bearer {}",
                sign(
                    json!({"sub": Uuid::now_v7(), "exp": chrono::Utc::now().timestamp() + 60}),
                    SECRET,
                    Algorithm::HS256
                )
            )),
        ),
        (
            "subject not a uuid",
            Some(format!(
                "Bearer {}",
                sign(
                    json!({"sub": "bob", "role": "admin", "exp": chrono::Utc::now().timestamp() + 60}),
                    SECRET,
                    Algorithm::HS256
                )
            )),
        ),
        (
            "unknown role",
            Some(format!(
                "Bearer {}",
                sign(
                    json!({"sub": Uuid::now_v7(), "role": "root", "exp": chrono::Utc::now().timestamp() + 60}),
                    SECRET,
                    Algorithm::HS256
                )
            )),
        ),
    ];
    for (what, header) in cases {
        let (status, body) = list_with(&app, header.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"], "unauthorized", "{what}");
    }
    let good = sign(claims(3600), SECRET, Algorithm::HS256);
    let (status, _) = list_with(&app, Some(&format!("Bearer {good}"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_by_default() {
    let app = spawn_app().await;
    let token = |iss: Option<&str>, aud: Option<&str>| {
        let mut c = claims(3600);
        let c = c.as_object_mut().unwrap();
        c.remove("iss");
        c.remove("aud");
        iss.map(|iss| c.insert("iss".into(), json!(iss)));
        aud.map(|aud| c.insert("aud".into(), json!(aud)));
        format!("Bearer {}", sign(json!(c), SECRET, Algorithm::HS256))
    };
    let ours = Some("order-service");
    for (iss, aud) in [
        (None, None),
        (ours, None),
        (None, ours),
        (Some("another-service"), ours),
        (ours, Some("another-service")),
    ] {
        let (status, body) = list_with(&app, Some(&token(iss, aud))).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "iss {iss:?} aud {aud:?}: {body}"
        );
    }
    let (status, _) = list_with(&app, Some(&token(ours, ours))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn any_accepts_every_issuer_and_audience() {
    let app = spawn_app_with(|c| {
        c.auth_jwt_issuer = "any".into();
        c.auth_jwt_audience = "any".into();
    })
    .await;
    let mut bare = claims(3600);
    bare.as_object_mut()
        .unwrap()
        .retain(|k, _| k != "iss" && k != "aud");
    let bare = format!("Bearer {}", sign(bare, SECRET, Algorithm::HS256));
    assert_eq!(list_with(&app, Some(&bare)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let app = spawn_app_with(|c| {
        c.auth_jwt_issuer = "shop".into();
        c.auth_jwt_audience = "order-service".into();
    })
    .await;
    let with = |iss: &str, aud: &str| {
        let mut c = claims(3600);
        c["iss"] = json!(iss);
        c["aud"] = json!(aud);
        format!("Bearer {}", sign(c, SECRET, Algorithm::HS256))
    };
    assert_eq!(
        list_with(&app, Some(&with("shop", "order-service")))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        list_with(&app, Some(&with("elsewhere", "order-service")))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        list_with(&app, Some(&with("shop", "billing"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    let bare = format!("Bearer {}", sign(claims(3600), SECRET, Algorithm::HS256));
    assert_eq!(
        list_with(&app, Some(&bare)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_token_command_prints_a_token_the_service_accepts() {
    let app = spawn_app().await;
    let sub = Uuid::now_v7();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
        .args([
            "token",
            "--role",
            "customer",
            "--sub",
            &sub.to_string(),
            "--ttl",
            "10m",
        ])
        .env("AUTH_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let response = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&token)
        .json(&simple_order())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: serde_json::Value = response.json().await.unwrap();
    assert_eq!(order["customer_id"], sub.to_string());
}

#[tokio::test]
async fn the_service_refuses_to_start_without_a_strong_secret() {
    for secret in [None, Some("short-secret")] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
        cmd.env_remove("AUTH_JWT_SECRET")
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env(
                "DATABASE_PATH",
                std::env::temp_dir().join(format!("{}.db", Uuid::now_v7())),
            );
        if let Some(s) = secret {
            cmd.env("AUTH_JWT_SECRET", s);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_JWT_SECRET"));
    }
}

#[tokio::test]
async fn iat_and_nbf_are_optional_and_honoured_when_present() {
    // About iat and nbf: tokens without iss and aud are taken.
    let app = spawn_app_with(|c| {
        c.auth_jwt_issuer = "any".into();
        c.auth_jwt_audience = "any".into();
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let bearer =
        |claims: serde_json::Value| format!("Bearer {}", sign(claims, SECRET, Algorithm::HS256));
    let minimal = json!({"sub": Uuid::now_v7(), "role": "admin", "exp": now + 60});
    let cases = [
        ("sub, role and exp only", minimal.clone(), StatusCode::OK),
        (
            "nbf in the past",
            json!({"sub": Uuid::now_v7(), "role": "admin", "exp": now + 60, "nbf": now - 60}),
            StatusCode::OK,
        ),
        (
            "iat in the past",
            json!({"sub": Uuid::now_v7(), "role": "admin", "exp": now + 60, "iat": now - 60}),
            StatusCode::OK,
        ),
        (
            "nbf an hour ahead",
            json!({"sub": Uuid::now_v7(), "role": "admin", "exp": now + 7200, "nbf": now + 3600}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "iat an hour ahead",
            json!({"sub": Uuid::now_v7(), "role": "admin", "exp": now + 7200, "iat": now + 3600}),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "no exp",
            json!({"sub": Uuid::now_v7(), "role": "admin", "iat": now}),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (what, claims, expected) in cases {
        let (status, body) = list_with(&app, Some(&bearer(claims))).await;
        assert_eq!(status, expected, "{what}: {body}");
    }
    let (status, order) = {
        let response = app
            .client
            .post(app.url("/api/v1/orders"))
            .header("Authorization", bearer(minimal))
            .json(&json!({
                "customer_id": Uuid::now_v7(),
                "items": [{"product_id": Uuid::now_v7(), "quantity": 1, "unit_price": 10.00}],
                "shipping_address": {"street": "1 A St", "city": "B", "postal_code": "1", "country": "C"}
            }))
            .send()
            .await
            .unwrap();
        crate::app::into_json(response).await
    };
    assert_eq!(status, StatusCode::CREATED, "{order}");
}

/// An `openssl` key pair in `dir`: `<name>.pem` (private, PKCS#8) and `<name>.pub.pem`.
fn key_pair(dir: &std::path::Path, name: &str, algorithm: &[&str]) -> (PathBuf, PathBuf) {
    let (private, public) = (format!("{name}.pem"), format!("{name}.pub.pem"));
    let mut generate = vec!["genpkey"];
    generate.extend_from_slice(algorithm);
    generate.extend(["-out", &private]);
    openssl(dir, &generate);
    openssl(dir, &["pkey", "-in", &private, "-pubout", "-out", &public]);
    (dir.join(private), dir.join(public))
}

#[tokio::test]
async fn a_key_pair_verifies_tokens_and_only_its_private_key_mints_them() {
    let dir = tempfile::tempdir().unwrap();
    let ed25519 = ["-algorithm", "ed25519"].as_slice();
    let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"].as_slice();
    for (name, algorithm, alg) in [("ed", ed25519, "EdDSA"), ("rsa", rsa, "RS256")] {
        let (private, public) = key_pair(dir.path(), name, algorithm);
        let (stranger, stranger_public) =
            key_pair(dir.path(), &format!("{name}-stranger"), algorithm);
        let app = spawn_app_with(|c| {
            c.auth_jwt_secret = None;
            c.auth_jwt_public_key_file = Some(public.clone());
            c.auth_jwt_private_key_file = Some(private.clone());
        })
        .await;
        // Minted with the private key: taken, for every role's rights.
        let admin = User::new(Role::Admin);
        let (status, body) = app.get(admin, "/api/v1/orders").await;
        assert_eq!(status, StatusCode::OK, "{alg}: {body}");
        let header = jsonwebtoken::decode_header(app.token(admin)).unwrap();
        assert_eq!(format!("{:?}", header.alg), alg);

        // Signed by another key of the same kind, or HS256 with the public key as the secret
        // (the algorithm confusion of a verifier that trusts the header): refused.
        let stranger = Auth::with_public_key(
            &std::fs::read(&stranger_public).unwrap(),
            Some(&std::fs::read(&stranger).unwrap()),
            Some("order-service".into()),
            Some("order-service".into()),
        )
        .unwrap();
        let forged = stranger
            .issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(60))
            .unwrap();
        let (status, body) = list_with(&app, Some(&format!("Bearer {forged}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let public_as_secret = std::fs::read(&public).unwrap();
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(3600),
            &EncodingKey::from_secret(&public_as_secret),
        )
        .unwrap();
        let (status, body) = list_with(&app, Some(&format!("Bearer {confused}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(
            body["message"],
            format!("the token must be signed with {alg}")
        );

        // Where only the public key is, nothing can be minted; with the private key, the
        // command mints what the service takes.
        let token = |with_private: bool| {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"));
            command
                .args(["token", "--role", "admin"])
                .env_remove("AUTH_JWT_SECRET")
                .env("AUTH_JWT_PUBLIC_KEY_FILE", &public);
            if with_private {
                command.env("AUTH_JWT_PRIVATE_KEY_FILE", &private);
            }
            command.output().unwrap()
        };
        let refused = token(false);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("AUTH_JWT_PRIVATE_KEY_FILE"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        let minted = token(true);
        assert!(
            minted.status.success(),
            "{}",
            String::from_utf8_lossy(&minted.stderr)
        );
        let minted = String::from_utf8(minted.stdout).unwrap();
        let (status, body) = list_with(&app, Some(&format!("Bearer {}", minted.trim()))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
