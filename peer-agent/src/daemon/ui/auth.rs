//! Who may use the web UI: one-time login tokens (printed by the daemon, like Jupyter's), the
//! sessions they open, and each session's CSRF token.
//!
//! Secrets are 32 random bytes from AWS-LC. Sessions are looked up by the SHA-256 of their id,
//! so a lookup's timing says nothing about the id itself; login tokens are few and short-lived,
//! each compared in constant time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{SHA256, digest};

/// How long a printed login URL stays usable.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// Sessions kept at once; the oldest is dropped beyond this, so repeated logins cannot grow
/// memory without bound.
const MAX_SESSIONS: usize = 32;

/// Login tokens kept at once (each `torrentguard ui` mints one); the oldest goes first.
const MAX_LOGIN_TOKENS: usize = 32;

type SessionKey = [u8; 32];

/// The UI's secrets: pending login tokens and open sessions.
pub struct UiAuth {
    token_ttl: Duration,
    login_tokens: Mutex<Vec<LoginToken>>,
    sessions: Mutex<HashMap<SessionKey, Session>>,
    /// Orders sessions by age, to drop the oldest beyond `MAX_SESSIONS`.
    next_serial: AtomicU64,
}

struct LoginToken {
    secret: [u8; 32],
    expires: Instant,
}

struct Session {
    csrf: String,
    serial: u64,
}

/// A session opened by a login: the cookie value to set and the page's CSRF token.
pub struct NewSession {
    pub id: String,
    pub csrf: String,
}

impl UiAuth {
    pub fn new() -> Arc<UiAuth> {
        UiAuth::with_token_ttl(LOGIN_TOKEN_TTL)
    }

    pub(crate) fn with_token_ttl(token_ttl: Duration) -> Arc<UiAuth> {
        Arc::new(UiAuth {
            token_ttl,
            login_tokens: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            next_serial: AtomicU64::new(0),
        })
    }

    /// Mints a fresh one-time login token and returns `{base}/login?token=…`.
    pub fn login_url(&self, base: &str) -> String {
        let secret = random_bytes();
        let now = Instant::now();
        let mut tokens = lock(&self.login_tokens);
        tokens.retain(|t| t.expires > now);
        if tokens.len() >= MAX_LOGIN_TOKENS {
            tokens.remove(0);
        }
        tokens.push(LoginToken {
            secret,
            expires: now + self.token_ttl,
        });
        format!(
            "{}/login?token={}",
            base.trim_end_matches('/'),
            to_hex(&secret)
        )
    }

    /// Spends a login token: a live, unused one opens a session, anything else opens nothing.
    pub fn redeem(&self, token: &str) -> Option<NewSession> {
        let presented = from_hex(token)?;
        let now = Instant::now();
        let mut tokens = lock(&self.login_tokens);
        tokens.retain(|t| t.expires > now);
        // Every token is compared, so the time taken does not say which one (if any) matched.
        let mut found = None;
        for (i, t) in tokens.iter().enumerate() {
            if verify_slices_are_equal(&t.secret, &presented).is_ok() {
                found = Some(i);
            }
        }
        tokens.remove(found?);
        drop(tokens);
        Some(self.open_session())
    }

    fn open_session(&self) -> NewSession {
        let id = to_hex(&random_bytes());
        let csrf = to_hex(&random_bytes());
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.serial)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        let session = Session {
            csrf: csrf.clone(),
            serial: self.next_serial.fetch_add(1, Ordering::Relaxed),
        };
        sessions.insert(session_key(&id), session);
        NewSession { id, csrf }
    }

    /// The CSRF token of the session whose id is `session_id`, if that session is open.
    pub fn session_csrf(&self, session_id: &str) -> Option<String> {
        lock(&self.sessions)
            .get(&session_key(session_id))
            .map(|s| s.csrf.clone())
    }

    /// Ends a session (logout); later requests with its cookie are refused.
    pub fn close_session(&self, session_id: &str) {
        lock(&self.sessions).remove(&session_key(session_id));
    }
}

/// True when `presented` is `expected`, in time independent of where they differ.
pub fn tokens_match(expected: &str, presented: &str) -> bool {
    verify_slices_are_equal(expected.as_bytes(), presented.as_bytes()).is_ok()
}

fn session_key(session_id: &str) -> SessionKey {
    let hash = digest(&SHA256, session_id.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(hash.as_ref());
    key
}

fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // AWS-LC's RAND_bytes always returns 1: it aborts the process itself if it ever cannot
    // produce randomness, so this error arm is unreachable.
    aws_lc_rs::rand::fill(&mut bytes).expect("AWS-LC's RAND_bytes cannot return failure");
    bytes
}

/// A poisoned lock only means another request panicked mid-update of a plain collection;
/// its data is still consistent, so go on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn from_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_of(url: &str) -> &str {
        url.split_once("token=").expect("the URL carries a token").1
    }

    #[test]
    fn login_url_carries_a_fresh_64_hex_token_each_time() {
        let auth = UiAuth::new();
        let a = auth.login_url("http://127.0.0.1:8080");
        let b = auth.login_url("http://127.0.0.1:8080/");
        assert!(a.starts_with("http://127.0.0.1:8080/login?token="), "{a}");
        assert!(b.starts_with("http://127.0.0.1:8080/login?token="), "{b}");
        assert_eq!(token_of(&a).len(), 64);
        assert_ne!(token_of(&a), token_of(&b));
    }

    #[test]
    fn a_login_token_opens_one_session_only_once() {
        let auth = UiAuth::new();
        let url = auth.login_url("http://127.0.0.1:1");
        let session = auth.redeem(token_of(&url)).expect("a fresh token logs in");
        assert_eq!(auth.session_csrf(&session.id), Some(session.csrf.clone()));
        assert!(
            auth.redeem(token_of(&url)).is_none(),
            "a token is single use"
        );
    }

    #[test]
    fn an_expired_or_unknown_or_malformed_token_opens_nothing() {
        let auth = UiAuth::with_token_ttl(Duration::ZERO);
        let url = auth.login_url("http://127.0.0.1:1");
        assert!(auth.redeem(token_of(&url)).is_none(), "expired");
        let auth = UiAuth::new();
        auth.login_url("http://127.0.0.1:1");
        assert!(auth.redeem(&"ab".repeat(32)).is_none(), "unknown");
        assert!(auth.redeem("zz").is_none(), "malformed");
        assert!(auth.redeem(&"zz".repeat(32)).is_none(), "not hex");
    }

    #[test]
    fn a_closed_or_unknown_session_has_no_csrf_token() {
        let auth = UiAuth::new();
        let url = auth.login_url("http://127.0.0.1:1");
        let session = auth.redeem(token_of(&url)).expect("logs in");
        assert!(auth.session_csrf("not-a-session").is_none());
        auth.close_session(&session.id);
        assert!(auth.session_csrf(&session.id).is_none());
    }

    #[test]
    fn sessions_are_bounded_dropping_the_oldest() {
        let auth = UiAuth::new();
        let first = auth.open_session();
        for _ in 0..MAX_SESSIONS {
            auth.open_session();
        }
        assert!(auth.session_csrf(&first.id).is_none());
        assert_eq!(lock(&auth.sessions).len(), MAX_SESSIONS);
    }

    #[test]
    fn hex_round_trips() {
        let bytes = random_bytes();
        assert_eq!(from_hex(&to_hex(&bytes)), Some(bytes));
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("abc", "ab"));
    }
}
