//! Bearer tokens: JWTs with a subject, a role and an expiry.
//!
//! Two kinds of keys: an HS256 secret (`AUTH_JWT_SECRET`), shared by whoever mints and whoever
//! verifies, or a key pair (`AUTH_JWT_PUBLIC_KEY_FILE`, Ed25519 for EdDSA or RSA for RS256), where
//! a service that only verifies holds the public key and so cannot mint. The algorithm is pinned
//! to the key's, so a token that names another algorithm (`none`, or HS256 signed with the public
//! key as its secret) is refused before its signature is looked at. `iss` and `aud` are checked
//! unless configured `any`.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The shortest secret accepted: HS256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 32;

/// Who a caller is to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Staff: may do everything.
    Admin,
    /// Other services (payment, inventory): status changes and stock.
    System,
    /// A shopper: its own orders only.
    Customer,
    /// The chat assistant: chat orders and chat links.
    Ai,
}

impl Role {
    /// The name used in tokens and in audit events' `user_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::System => "system",
            Role::Customer => "customer",
            Role::Ai => "ai",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims this service reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
    /// Optional (RFC 7519): many identity providers' minimal tokens leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// Why the auth settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The secret is too short.
    #[error(
        "AUTH_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes, got {0}; `make run` generates a development secret"
    )]
    SecretTooShort(usize),
    /// A key file is not a PEM key of a kind tokens can be signed with.
    #[error("{0}")]
    Key(String),
    /// Minting needs the private key, which this side does not hold.
    #[error(
        "tokens are verified with a public key here; minting one needs AUTH_JWT_PRIVATE_KEY_FILE"
    )]
    CannotMint,
}

/// Why a caller is turned away; the API answers 401 or 403 with the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No valid credentials (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials, not allowed to do this (403).
    #[error("{0}")]
    NotAllowed(String),
}

/// Verifies and issues tokens.
#[derive(Clone)]
pub struct Auth {
    algorithm: Algorithm,
    /// `None` where only the public key is held.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// The issuer and audience the service writes into its tokens and requires of every token unless
/// configured otherwise (`AUTH_JWT_ISSUER`, `AUTH_JWT_AUDIENCE`).
pub const TOKEN_PARTY: &str = "order-service";

impl Auth {
    /// Auth with this secret and the default issuer and audience, [`TOKEN_PARTY`]: what a
    /// service with only `AUTH_JWT_SECRET` set accepts.
    pub fn with_default_parties(secret: &str) -> Result<Auth, AuthConfigError> {
        Auth::new(
            secret,
            Some(TOKEN_PARTY.to_owned()),
            Some(TOKEN_PARTY.to_owned()),
        )
    }

    /// Auth with this secret, and the issuer and audience tokens must name when given.
    pub fn new(
        secret: &str,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Auth, AuthConfigError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthConfigError::SecretTooShort(secret.len()));
        }
        Ok(Auth::with_keys(
            Algorithm::HS256,
            DecodingKey::from_secret(secret.as_bytes()),
            Some(EncodingKey::from_secret(secret.as_bytes())),
            issuer,
            audience,
        ))
    }

    /// Auth with a key pair: `public_pem` (an Ed25519 key for EdDSA, or an RSA key for RS256, as
    /// `openssl pkey -pubout` writes it) verifies; `private_pem` (PKCS#8), when given, mints.
    pub fn with_public_key(
        public_pem: &[u8],
        private_pem: Option<&[u8]>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<Auth, AuthConfigError> {
        let key_error = |which: &str, e: jsonwebtoken::errors::Error| {
            AuthConfigError::Key(format!(
                "the {which} key is neither an Ed25519 nor an RSA PEM key: {e}"
            ))
        };
        let (algorithm, decoding) = match DecodingKey::from_ed_pem(public_pem) {
            Ok(key) => (Algorithm::EdDSA, key),
            Err(_) => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(public_pem).map_err(|e| key_error("public", e))?,
            ),
        };
        let encoding = private_pem
            .map(|pem| match algorithm {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                _ => EncodingKey::from_rsa_pem(pem),
            })
            .transpose()
            .map_err(|e| key_error("private", e))?;
        let auth = Auth::with_keys(algorithm, decoding, encoding, issuer, audience);
        // A private key that does not belong to the public one would mint refused tokens.
        if auth.encoding.is_some() {
            let probe = auth.issue(Uuid::nil(), Role::Customer, Duration::from_secs(60))?;
            auth.verify(&probe).map_err(|_| {
                AuthConfigError::Key("the private key does not match the public key".into())
            })?;
        }
        Ok(auth)
    }

    fn with_keys(
        algorithm: Algorithm,
        decoding: DecodingKey,
        encoding: Option<EncodingKey>,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Auth {
        let mut validation = Validation::new(algorithm);
        // A configured issuer or audience must be present, not merely right when present.
        let mut required = vec!["exp", "sub"];
        required.extend(issuer.as_ref().map(|_| "iss"));
        required.extend(audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        // `nbf` is checked when present and never required.
        validation.validate_nbf = true;
        match &issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        Auth {
            algorithm,
            encoding,
            decoding,
            validation,
            issuer,
            audience,
        }
    }

    /// A signed token for `sub` in `role`, valid for `ttl`; refused where only the public key is
    /// held.
    pub fn issue(&self, sub: Uuid, role: Role, ttl: Duration) -> Result<String, AuthConfigError> {
        let encoding = self.encoding.as_ref().ok_or(AuthConfigError::CannotMint)?;
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            sub: sub.to_string(),
            role: role.as_str().to_owned(),
            iat: Some(now),
            exp: now + ttl.as_secs(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding)
            .map_err(|e| AuthConfigError::Key(format!("signing a token failed: {e}")))
    }

    /// The caller behind a token, or why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::InvalidAlgorithm => {
                        return Refusal::Unauthenticated(format!(
                            "the token must be signed with {:?}",
                            self.algorithm
                        ));
                    }
                    ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
                    ErrorKind::InvalidAudience => "the token's audience is not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                };
                Refusal::Unauthenticated(why.to_owned())
            })?;
        // An `iat` beyond the clock-skew leeway is a token from the future: refused like an
        // `nbf` still ahead.
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        if data
            .claims
            .iat
            .is_some_and(|iat| iat > now + self.validation.leeway)
        {
            return Err(Refusal::Unauthenticated(
                "the token is issued in the future (iat)".into(),
            ));
        }
        let user_id = Uuid::parse_str(&data.claims.sub)
            .map_err(|_| Refusal::Unauthenticated("the token's subject is not a UUID".into()))?;
        let role = match data.claims.role.as_str() {
            "admin" => Role::Admin,
            "system" => Role::System,
            "customer" => Role::Customer,
            "ai" => Role::Ai,
            other => {
                return Err(Refusal::Unauthenticated(format!(
                    "the token's role `{other}` is not one of admin, system, customer, ai"
                )));
            }
        };
        Ok(Caller { user_id, role })
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject.
    pub user_id: Uuid,
    /// The token's role.
    pub role: Role,
}

impl Caller {
    /// Ok when the caller has one of `roles`, else refused (403).
    pub fn require(&self, roles: &[Role]) -> Result<(), Refusal> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(Refusal::NotAllowed(format!(
                "role `{}` may not do this; allowed: {}",
                self.role,
                allowed.join(", ")
            )))
        }
    }

    /// Whether the caller is this customer.
    pub fn is_customer(&self, customer_id: Uuid) -> bool {
        self.role == Role::Customer && self.user_id == customer_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn refuses_short_secrets() {
        assert!(Auth::new("short", None, None).is_err());
    }

    #[test]
    fn issued_tokens_verify_and_carry_role() {
        let auth = Auth::new(SECRET, Some("shop".into()), Some("orders".into())).unwrap();
        let sub = Uuid::now_v7();
        let caller = auth
            .verify(&auth.issue(sub, Role::Ai, Duration::from_secs(60)).unwrap())
            .unwrap();
        assert_eq!(
            caller,
            Caller {
                user_id: sub,
                role: Role::Ai
            }
        );
    }

    #[test]
    fn refuses_other_issuers_and_secrets() {
        let a = Auth::new(SECRET, Some("shop".into()), None).unwrap();
        let b = Auth::new(SECRET, Some("elsewhere".into()), None).unwrap();
        let c = Auth::new(
            "ffffffffffffffffffffffffffffffff",
            Some("shop".into()),
            None,
        )
        .unwrap();
        let token = b.issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(60));
        assert!(a.verify(&token.unwrap()).is_err());
        let token = c.issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(60));
        assert!(a.verify(&token.unwrap()).is_err());
    }
}
