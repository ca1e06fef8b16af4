//! API secret and room tokens: HS256 JWTs that open exactly one room.

use bluecam_proto::{Identity, Permissions, RoomId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::{fmt, path::Path};

/// Leeway for `exp` and `nbf`, in seconds (DESIGN.md 2.2: at most 5).
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

/// The API secret with the keys derived from it. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Secret {
    text: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Wraps a secret given as text.
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            encoding: EncodingKey::from_secret(text.as_bytes()),
            decoding: DecodingKey::from_secret(text.as_bytes()),
            text,
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

    /// Compares a presented bearer secret in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.text.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

fn demo_mac(secret: &Secret, nonce: &str) -> hmac::Hmac<sha1::Sha1> {
    use hmac::Mac as _;
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"bluecam demo room\0");
    mac.update(nonce.as_bytes());
    mac
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
        Ok(text) if !text.trim().is_empty() => Ok((Secret::new(text.trim()), SecretOrigin::Loaded)),
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
