//! API secret and room tokens: HS256 JWTs that open exactly one room.
//!
//! The API secret is the bearer credential of the HTTP API and nothing else: every other key is
//! derived from it with HKDF-SHA256 under a label of its own (the token signing key, the demo's
//! room-id MAC, the HTTP transport's session-id MAC), so holding one of them (a minting service
//! holds the token key) gives neither the API nor the others.

use bluecam_proto::{Identity, Permissions, RoomId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{fmt, path::Path};

/// Leeway for `exp` and `nbf`, in seconds (docs/http-api.md: 5 s at most).
pub const LEEWAY_SECS: u64 = 5;

/// The claims of a BlueCam token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Identity,
    pub room: RoomId,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
}

/// Why a token was refused. The text is safe to show the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token signature invalid")]
    BadSignature,
    #[error("token malformed")]
    Malformed,
    #[error("token is for another room")]
    WrongRoom,
}

/// Shortest API secret accepted: 32 characters (a generated one is 43, 256 random bits). A
/// token holder can test guesses of the secret offline against the token's signature, so a
/// short one is refused rather than warned about.
pub const MIN_SECRET_LEN: usize = 32;

/// HKDF labels of the keys derived from the API secret (changing one invalidates what it
/// protects: tokens, demo links or transport sessions).
const TOKEN_KEY_LABEL: &[u8] = b"bluecam v1 token signing";
const DEMO_KEY_LABEL: &[u8] = b"bluecam v1 demo room id";
const SID_KEY_LABEL: &[u8] = b"bluecam v1 http transport session id";

/// The API secret with the keys derived from it. `Debug` never prints any of them.
#[derive(Clone)]
pub struct Secret {
    text: String,
    /// The HS256 key of tokens, as text (URL-safe base64 of 32 derived bytes): any JWT library
    /// takes it as the secret string.
    token_key: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The API secret itself as an HS256 key: tokens signed before the keys were derived
    /// (before 2026-12), which clients still hold and resume with, are still accepted, so an
    /// upgrade ends no call. Nothing is signed with it any more.
    legacy: DecodingKey,
    demo_key: [u8; 32],
    sid_key: [u8; 32],
}

/// 32 bytes derived from the API secret for one purpose.
fn derive(secret: &str, label: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8,160-byte maximum: this cannot fail.
    hkdf::Hkdf::<sha2::Sha256>::new(None, secret.as_bytes())
        .expand(label, &mut out)
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 length"));
    out
}

/// An HMAC-SHA256 under `key` (which takes keys of any length: this cannot fail).
fn mac(key: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac as _;
    hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Wraps a secret given as text, deriving its keys.
    pub fn new(text: impl Into<String>) -> Self {
        use base64::Engine as _;
        let text = text.into();
        let token_key =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(derive(&text, TOKEN_KEY_LABEL));
        Self {
            encoding: EncodingKey::from_secret(token_key.as_bytes()),
            decoding: DecodingKey::from_secret(token_key.as_bytes()),
            legacy: DecodingKey::from_secret(text.as_bytes()),
            token_key,
            demo_key: derive(&text, DEMO_KEY_LABEL),
            sid_key: derive(&text, SID_KEY_LABEL),
            text,
        }
    }

    /// The key tokens are signed with (HS256, the text itself as the secret string), for a
    /// backend that mints tokens offline: it cannot call the API.
    pub fn token_key(&self) -> &str {
        &self.token_key
    }

    /// A tag binding an HTTP transport session id to this secret (22 characters): any node of
    /// the cluster can tell a session id it made from a forged one without asking anyone.
    pub fn sid_tag(&self, sid: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        let mut m = mac(&self.sid_key);
        m.update(sid.as_bytes());
        let tag = m.finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..SID_TAG_BYTES])
    }

    /// Whether `tag` is [`Secret::sid_tag`] of `sid` (compared in constant time).
    pub fn sid_tag_matches(&self, sid: &str, tag: &str) -> bool {
        use base64::Engine as _;
        use hmac::Mac as _;
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) {
            Ok(tag) if tag.len() == SID_TAG_BYTES => {
                let mut m = mac(&self.sid_key);
                m.update(sid.as_bytes());
                m.verify_truncated_left(&tag).is_ok()
            }
            _ => false,
        }
    }

    /// 256 random bits, URL-safe base64.
    pub fn generate() -> Self {
        Self::new(random_token(32))
    }

    /// The secret text (for printing once on first start, and for bearer comparison).
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// Compares a presented bearer secret in constant time (MACs of both under a fresh key
    /// are compared, so neither the content nor the length of the secret leaks by timing).
    pub fn matches(&self, presented: &str) -> bool {
        use hmac::Mac as _;
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut theirs = mac(&key);
        theirs.update(presented.as_bytes());
        let mut ours = mac(&key);
        ours.update(self.text.as_bytes());
        theirs.verify(&ours.finalize().into_bytes()).is_ok()
    }

    /// Signs claims into a token.
    pub fn mint(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }

    /// Verifies a token's signature and times, whatever its room.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub", "room"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .or_else(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    jsonwebtoken::decode::<Claims>(token, &self.legacy, &validation)
                }
                _ => Err(e),
            })
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => TokenError::Expired,
                    K::ImmatureSignature => TokenError::NotYetValid,
                    K::InvalidSignature => TokenError::BadSignature,
                    _ => TokenError::Malformed,
                }
            })
    }
}

/// Draws `bytes` random bytes as URL-safe base64 without padding.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine as _;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A random room id: like [`random_token`], redrawn until it starts with a letter or digit, so
/// it never reads as an option on a command line (`bluecam room get -dX…` was a flag).
pub fn random_id(bytes: usize) -> String {
    loop {
        let id = random_token(bytes);
        if id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return id;
        }
    }
}

/// Demo room ids: `demo-` + 12 random characters + a 20-character MAC of them under the API
/// secret, so the demo's secret-less token endpoint can tell its own rooms from the backend's
/// without a lookup (and without telling a stranger which other room ids exist).
const DEMO_PREFIX: &str = "demo-";
const DEMO_NONCE_LEN: usize = 12;
const DEMO_MAC_BYTES: usize = 15;
/// Bytes of a transport session id's tag (128 bits).
const SID_TAG_BYTES: usize = 16;

fn demo_mac(secret: &Secret, nonce: &str) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac as _;
    let mut m = mac(&secret.demo_key);
    m.update(nonce.as_bytes());
    m
}

/// A new demo room id.
pub fn demo_room_id(secret: &Secret) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let nonce = random_token(9); // 12 characters
    let tag = demo_mac(secret, &nonce).finalize().into_bytes();
    let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..DEMO_MAC_BYTES]);
    format!("{DEMO_PREFIX}{nonce}{tag}")
}

/// Whether `id` was made by [`demo_room_id`] with this secret (compared in constant time).
pub fn is_demo_room_id(secret: &Secret, id: &str) -> bool {
    use base64::Engine as _;
    use hmac::Mac as _;
    let Some(rest) = id.strip_prefix(DEMO_PREFIX) else {
        return false;
    };
    let (Some(nonce), Some(tag)) = (rest.get(..DEMO_NONCE_LEN), rest.get(DEMO_NONCE_LEN..)) else {
        return false;
    };
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(tag) {
        Ok(tag) if tag.len() == DEMO_MAC_BYTES => {
            demo_mac(secret, nonce).verify_truncated_left(&tag).is_ok()
        }
        _ => false,
    }
}

/// Whether the secret came from the data dir (just made, or read back) or from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretOrigin {
    Configured,
    Generated,
    Loaded,
}

/// Loads the API secret from `dir/api-secret`, creating it (mode 0600) on first start.
pub fn load_or_create_secret(dir: &Path) -> std::io::Result<(Secret, SecretOrigin)> {
    let path = dir.join("api-secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => {
            tighten(&path)?;
            Ok((Secret::new(text.trim()), SecretOrigin::Loaded))
        }
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is empty: delete it to generate a new secret",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = Secret::generate();
            write_private(&path, secret.expose())?;
            Ok((secret, SecretOrigin::Generated))
        }
        Err(e) => Err(e),
    }
}

/// Makes a secret file that others may read this user's alone (0600), saying so once.
fn tighten(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            tracing::info!(path = %path.display(), "the API secret file was readable by others: made private (0600)");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64, nbf: Option<u64>) -> Claims {
        Claims {
            sub: Identity::new("alice"),
            room: RoomId::new("r1"),
            exp,
            iat: now(),
            nbf,
            name: None,
            metadata: None,
            permissions: None,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn round_trip_and_time_checks() {
        let s = Secret::new("k");
        let t = s.mint(&claims(now() + 60, None)).unwrap();
        assert_eq!(s.verify(&t).unwrap().sub.as_str(), "alice");
        let t = s.mint(&claims(now() - 60, None)).unwrap();
        assert_eq!(s.verify(&t).unwrap_err(), TokenError::Expired);
        // Within the leeway an expired token still passes.
        let t = s.mint(&claims(now() - 2, None)).unwrap();
        assert!(s.verify(&t).is_ok());
        let t = s.mint(&claims(now() + 60, Some(now() + 30))).unwrap();
        assert_eq!(s.verify(&t).unwrap_err(), TokenError::NotYetValid);
        let other = Secret::new("other");
        assert_eq!(other.verify(&t).unwrap_err(), TokenError::BadSignature);
        assert_eq!(s.verify("nonsense").unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn each_key_is_derived_for_one_purpose_and_none_is_the_api_secret() {
        let s = Secret::new("an-api-secret-of-thirty-two-chars!");
        // Tokens are signed with the derived key, which any JWT library takes as text...
        let claims = claims(now() + 60, None);
        let by_key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(s.token_key().as_bytes()),
        )
        .unwrap();
        assert_eq!(s.verify(&by_key).unwrap().sub.as_str(), "alice");
        // ...and one signed with the API secret itself, as every token was before, still opens
        // (clients resume with the tokens they hold across an upgrade); a token under any other
        // key does not.
        let by_secret = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(s.expose().as_bytes()),
        )
        .unwrap();
        assert_eq!(s.verify(&by_secret).unwrap().sub.as_str(), "alice");
        let by_other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"another-secret-of-thirty-two-chars"),
        )
        .unwrap();
        assert_eq!(s.verify(&by_other).unwrap_err(), TokenError::BadSignature);
        // Minting never uses the API secret.
        let minted = s.mint(&claims).unwrap();
        let legacy_only = jsonwebtoken::decode::<Claims>(
            &minted,
            &DecodingKey::from_secret(s.expose().as_bytes()),
            &Validation::new(Algorithm::HS256),
        );
        assert!(legacy_only.is_err());
        // The token key is no bearer secret; the secret is.
        assert!(!s.matches(s.token_key()));
        assert!(s.matches(s.expose()));
        assert!(!s.matches(""));
        // Session-id tags and demo ids are bound to the secret and to what they tag.
        let tag = s.sid_tag("node.abc");
        assert!(s.sid_tag_matches("node.abc", &tag));
        assert!(!s.sid_tag_matches("node.abd", &tag));
        assert!(
            !Secret::new("another-secret-of-thirty-two-chars").sid_tag_matches("node.abc", &tag)
        );
        let demo = demo_room_id(&s);
        assert!(is_demo_room_id(&s, &demo));
        assert!(!is_demo_room_id(&Secret::new("x"), &demo));
    }

    #[test]
    fn generated_room_ids_never_start_like_an_option() {
        // One in 32 raw tokens starts with `-` or `_`: 2,000 draws would show it.
        for _ in 0..2000 {
            let id = random_id(16);
            assert_eq!(id.len(), 22);
            assert!(id.starts_with(|c: char| c.is_ascii_alphanumeric()), "{id}");
        }
    }

    #[test]
    fn secret_file_is_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("bluecam-secret-{}", random_token(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, oa) = load_or_create_secret(&dir).unwrap();
        let (b, ob) = load_or_create_secret(&dir).unwrap();
        assert_eq!((oa, ob), (SecretOrigin::Generated, SecretOrigin::Loaded));
        assert_eq!(a.expose(), b.expose());
        // A secret file others may read is made private when it is read.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let file = dir.join("api-secret");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            load_or_create_secret(&dir).unwrap();
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("api-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
