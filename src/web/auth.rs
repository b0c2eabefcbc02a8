//! Who is calling: the sentinel token or an operator's JWT. Pure apart from
//! the clock that `jsonwebtoken` reads for `exp`/`nbf`.
//!
//! The algorithm comes from the configuration only (HS256, or EdDSA with a
//! public key): a token that names another one, `none` included, is refused
//! before its signature is looked at.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{JwtKey, Secrets, WebConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Operator,
    Admin,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The IDS's sentinel token: may only ingest alerts.
    Sentinel,
    User {
        sub: String,
        role: Role,
        /// The token's `exp` (seconds since the epoch): a long-lived event
        /// stream is closed once it passes (see `ws`).
        exp: u64,
    },
}

impl Principal {
    /// How the journal names it: the JWT's `sub`, or `sentinel`.
    pub fn label(&self) -> String {
        match self {
            Principal::Sentinel => "sentinel".into(),
            Principal::User { sub, .. } => sub.clone(),
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `POST /antibody/alert`: the sentinel or any operator.
    Ingest,
    Operator,
    Admin,
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no, malformed, wrong, expired or badly signed credentials.
    /// Counts as a failure for the peer's slow-down.
    Unauthenticated(String),
    /// 403: a valid credential that may not do this.
    Forbidden(String),
}

#[derive(Deserialize)]
struct Claims {
    /// Required by the validation (an Option here so that a token without
    /// it gets that error, naming exp, rather than a parse error).
    exp: Option<u64>,
    sub: Option<String>,
    role: Option<String>,
}

pub struct Verifier {
    /// SHA-256 of the sentinel token: comparing digests keeps the compare
    /// constant-time whatever the candidate's length.
    sentinel_digest: [u8; 32],
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    pub fn new(config: &WebConfig, secrets: &Secrets) -> Result<Verifier, String> {
        let (key, algorithm) = match &secrets.jwt_key {
            JwtKey::Hs256(secret) => (DecodingKey::from_secret(secret), Algorithm::HS256),
            JwtKey::EdDsaPem(pem) => (
                DecodingKey::from_ed_pem(pem).map_err(|e| format!("jwt_public_key_file: {e}"))?,
                Algorithm::EdDSA,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        // jsonwebtoken checks `iss` and `aud` only when the token has them:
        // a configured issuer or audience must also make them required, or
        // a token without them (from another issuer sharing the key) passes.
        // `sub` names the principal in the journal: no anonymous tokens.
        let mut required = vec!["exp", "sub"];
        if config.jwt_issuer.is_some() {
            required.push("iss");
        }
        if config.jwt_audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = config.jwt_leeway_secs;
        match &config.jwt_issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(aud) => validation.set_audience(&[aud]),
            // No audience configured: a token's `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        Ok(Verifier {
            sentinel_digest: Sha256::digest(&secrets.sentinel_token).into(),
            key,
            validation,
        })
    }

    /// When a principal's credential stops being accepted (seconds since
    /// the epoch): its `exp` plus the leeway the check allows; never for
    /// the sentinel token.
    pub fn expires_at(&self, principal: &Principal) -> Option<u64> {
        match principal {
            Principal::Sentinel => None,
            Principal::User { exp, .. } => Some(exp.saturating_add(self.validation.leeway)),
        }
    }

    /// Checks the bearer token against what the route needs.
    pub fn check(&self, token: Option<&str>, need: Need) -> Result<Principal, Refusal> {
        let token = token.ok_or_else(|| Refusal::Unauthenticated("no bearer token".into()))?;
        let principal = self.authenticate(token)?;
        authorize(&principal, need)?;
        Ok(principal)
    }

    fn authenticate(&self, token: &str) -> Result<Principal, Refusal> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if bool::from(digest.ct_eq(&self.sentinel_digest)) {
            return Ok(Principal::Sentinel);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| Refusal::Unauthenticated(describe_jwt_error(&e)))?;
        // Required above, so present; an empty one names no one.
        let sub = data
            .claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Refusal::Unauthenticated("the token's sub claim is empty".into()))?;
        let role = match data.claims.role.as_deref() {
            Some("operator") => Role::Operator,
            Some("admin") => Role::Admin,
            Some(other) => {
                return Err(Refusal::Forbidden(format!(
                    "the token's role {other:?} is neither operator nor admin"
                )))
            }
            None => {
                return Err(Refusal::Forbidden(
                    "the token has no role claim (operator or admin)".into(),
                ))
            }
        };
        Ok(Principal::User {
            sub,
            role,
            // Present, as required; were it not, the stream closes at once.
            exp: data.claims.exp.unwrap_or(0),
        })
    }
}

/// Whether `principal` may do what `need` names.
pub fn authorize(principal: &Principal, need: Need) -> Result<(), Refusal> {
    match (principal, need) {
        (Principal::Sentinel, Need::Ingest) => Ok(()),
        (Principal::Sentinel, _) => Err(Refusal::Forbidden(
            "the sentinel token may only ingest alerts".into(),
        )),
        (Principal::User { .. }, Need::Ingest | Need::Operator) => Ok(()),
        (Principal::User { role, .. }, Need::Admin) if *role == Role::Admin => Ok(()),
        (Principal::User { .. }, Need::Admin) => Err(Refusal::Forbidden(
            "this needs a token with role admin".into(),
        )),
    }
}

/// A short reason for the client; the details stay in our own log. It
/// never echoes the token.
fn describe_jwt_error(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidSignature => "the token's signature does not verify".into(),
        K::InvalidAlgorithm | K::InvalidAlgorithmName => {
            "the token's alg is not the one this bridge accepts".into()
        }
        K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        K::InvalidIssuer => "the token's iss is not accepted".into(),
        K::InvalidAudience => "the token's aud is not accepted".into(),
        _ => "the token is neither the sentinel token nor a valid JWT".into(),
    }
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        let secrets = Secrets {
            sentinel_token: b"sentinel-token-0123".to_vec(),
            jwt_key: JwtKey::Hs256(SECRET.to_vec()),
        };
        Verifier::new(&WebConfig::default(), &secrets).unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn unauthenticated(r: Result<Principal, Refusal>) -> String {
        match r {
            Err(Refusal::Unauthenticated(m)) => m,
            other => panic!("expected 401, got {other:?}"),
        }
    }

    #[test]
    fn sentinel_may_only_ingest() {
        let v = verifier();
        assert_eq!(
            v.check(Some("sentinel-token-0123"), Need::Ingest),
            Ok(Principal::Sentinel)
        );
        assert!(matches!(
            v.check(Some("sentinel-token-0123"), Need::Operator),
            Err(Refusal::Forbidden(_))
        ));
        // A prefix or extension of the sentinel is not the sentinel.
        unauthenticated(v.check(Some("sentinel-token-012"), Need::Ingest));
        unauthenticated(v.check(Some("sentinel-token-01234"), Need::Ingest));
    }

    #[test]
    fn roles_decide_what_a_jwt_may_do() {
        let v = verifier();
        let op = token(json!({"sub": "ann", "role": "operator", "exp": now() + 600}));
        let admin = token(json!({"sub": "bob", "role": "admin", "exp": now() + 600}));
        let viewer = token(json!({"sub": "cy", "role": "viewer", "exp": now() + 600}));
        let p = v.check(Some(&op), Need::Operator).unwrap();
        let Principal::User { sub, role, exp } = p.clone() else {
            panic!("{p:?}")
        };
        assert_eq!((sub.as_str(), role), ("ann", Role::Operator));
        assert!(exp.abs_diff(now() as u64 + 600) <= 1, "{p:?}");
        // exp plus the leeway (30 s by default); the sentinel never expires.
        assert_eq!(v.expires_at(&p), Some(exp + 30));
        assert_eq!(v.expires_at(&Principal::Sentinel), None);
        assert!(v.check(Some(&op), Need::Ingest).is_ok());
        assert!(matches!(
            v.check(Some(&op), Need::Admin),
            Err(Refusal::Forbidden(_))
        ));
        assert!(v.check(Some(&admin), Need::Admin).is_ok());
        assert!(matches!(
            v.check(Some(&viewer), Need::Operator),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn exp_is_required_and_nbf_honoured() {
        let v = verifier();
        let m = unauthenticated(v.check(
            Some(&token(json!({"sub": "a", "role": "operator"}))),
            Need::Operator,
        ));
        assert!(m.contains("exp"), "{m}");
        let m = unauthenticated(v.check(
            Some(&token(
                json!({"sub": "a", "role": "operator", "exp": now() - 3600}),
            )),
            Need::Operator,
        ));
        assert!(m.contains("expired"), "{m}");
        let m = unauthenticated(v.check(
            Some(&token(
                json!({"sub": "a", "role": "operator", "exp": now() + 7200, "nbf": now() + 3600}),
            )),
            Need::Operator,
        ));
        assert!(m.contains("nbf"), "{m}");
        unauthenticated(v.check(None, Need::Operator));
    }

    #[test]
    fn sub_is_required() {
        let v = verifier();
        let m = unauthenticated(v.check(
            Some(&token(json!({"role": "operator", "exp": now() + 600}))),
            Need::Operator,
        ));
        assert!(m.contains("sub"), "{m}");
        let m = unauthenticated(v.check(
            Some(&token(
                json!({"sub": "", "role": "operator", "exp": now() + 600}),
            )),
            Need::Operator,
        ));
        assert!(m.contains("sub"), "{m}");
    }

    #[test]
    fn configured_iss_and_aud_are_required_not_only_checked() {
        let secrets = Secrets {
            sentinel_token: b"sentinel-token-0123".to_vec(),
            jwt_key: JwtKey::Hs256(SECRET.to_vec()),
        };
        let config = WebConfig {
            jwt_issuer: Some("https://idp.example".into()),
            jwt_audience: Some("antibody".into()),
            ..WebConfig::default()
        };
        let v = Verifier::new(&config, &secrets).unwrap();
        let full = json!({"sub": "ann", "role": "operator", "exp": now() + 600,
            "iss": "https://idp.example", "aud": "antibody"});
        assert!(v.check(Some(&token(full.clone())), Need::Operator).is_ok());
        for (drop, claim) in [("iss", "iss"), ("aud", "aud")] {
            let mut claims = full.clone();
            claims.as_object_mut().unwrap().remove(drop);
            let m = unauthenticated(v.check(Some(&token(claims)), Need::Operator));
            assert!(m.contains(claim), "without {drop}: {m}");
        }
        let mut wrong = full.clone();
        wrong["iss"] = json!("https://other.example");
        assert!(unauthenticated(v.check(Some(&token(wrong)), Need::Operator)).contains("iss"));
        let mut wrong = full;
        wrong["aud"] = json!("someone-else");
        assert!(unauthenticated(v.check(Some(&token(wrong)), Need::Operator)).contains("aud"));
        // Without them configured, a token need not carry them.
        assert!(verifier()
            .check(
                Some(&token(
                    json!({"sub": "ann", "role": "operator", "exp": now() + 600})
                )),
                Need::Operator
            )
            .is_ok());
    }

    #[test]
    fn another_key_another_alg_or_none_is_refused() {
        let v = verifier();
        let claims = json!({"sub": "a", "role": "admin", "exp": now() + 600});
        let wrong_key = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"another key, also 32 bytes long!"),
        )
        .unwrap();
        assert!(unauthenticated(v.check(Some(&wrong_key), Need::Operator)).contains("signature"));
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(unauthenticated(v.check(Some(&hs384), Need::Operator)).contains("alg"));
        // alg "none" with an empty signature: hand-made, as an attacker would.
        let b64 = |v: &serde_json::Value| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        );
        unauthenticated(v.check(Some(&none), Need::Operator));
        unauthenticated(v.check(Some("not.a.jwt"), Need::Operator));
        unauthenticated(v.check(Some(""), Need::Operator));
    }

    /// A throwaway Ed25519 key pair of these tests (openssl genpkey).
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB21iM+CpPszRELO8ZNBk8iteSNBW3iv0EpjOX8FabEA\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAgH13k4peH5vokpfIssfVlktw7zPgCvbFemoPRpLbCK4=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn eddsa_when_configured_and_no_alg_confusion() {
        let secrets = Secrets {
            sentinel_token: b"sentinel-token-0123".to_vec(),
            jwt_key: JwtKey::EdDsaPem(ED_PUBLIC.as_bytes().to_vec()),
        };
        let v = Verifier::new(&WebConfig::default(), &secrets).unwrap();
        let claims = json!({"sub": "ann", "role": "admin", "exp": now() + 600});
        let signed = encode(
            &Header::new(Algorithm::EdDSA),
            &claims,
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(v.check(Some(&signed), Need::Admin).is_ok());
        // The classic confusion: HS256 "signed" with the public key as the
        // HMAC secret. The algorithm is the configuration's, so: refused.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(ED_PUBLIC.as_bytes()),
        )
        .unwrap();
        assert!(unauthenticated(v.check(Some(&confused), Need::Operator)).contains("alg"));
        // And an HS256 bridge refuses an EdDSA token.
        assert!(unauthenticated(verifier().check(Some(&signed), Need::Operator)).contains("alg"));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
