//! JSON Web Key Sets: the keys client JWTs are checked against when they rotate. The set comes
//! from a file (`jwt_jwks_file`) or a URL (`jwt_jwks_url`, feature `jwks-url`), is read at
//! start (a set that cannot be read stops the start), and is read again every
//! `jwt_jwks_refresh` and when a token names a key id the set does not hold (at most once per
//! [`UNKNOWN_KID_EVERY`]) by one thread of its own. A read that fails keeps the keys already
//! held. Several keys are held at once: a token picks its key by its `kid` header.
//!
//! Bounds: a document of at most [`MAX_JWKS_BYTES`], at most [`MAX_KEYS`] keys, a fetch of at
//! most `FETCH_TIMEOUT` (10 s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

pub(crate) use crate::config::JwksSource;

/// The largest JWKS document read.
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;
/// The most keys one set may hold.
pub(crate) const MAX_KEYS: usize = 64;
/// How long a fetch of the URL may take, connecting included.
#[cfg(feature = "jwks-url")]
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A token with an unknown `kid` makes the set be read again at most this often.
pub(crate) const UNKNOWN_KID_EVERY: Duration = Duration::from_secs(10);
/// After a failed read, the next one comes this soon (or at the refresh, if sooner).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// One usable key of a set.
pub(crate) struct Key {
    /// What the token's header must name (`alg`).
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The keys of one read, by `kid` (`None`: a key without one, usable only by a token without
/// one while it is the set's only key).
#[derive(Default)]
pub(crate) struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    lone: Option<Arc<Key>>,
}

impl Keys {
    /// The key for a token whose header names `kid`.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned(),
            None => self.lone.clone(),
        }
    }

    /// How many keys it holds.
    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + usize::from(self.lone.is_some())
    }
}

/// Parses a JWKS document. Keys for signatures with RS256 (`kty` RSA) or ES256 (`kty` EC,
/// `crv` P-256) are kept; encryption keys (`use: enc`) and other algorithms are left out. A
/// document with none usable, more than [`MAX_KEYS`], or two keys with one `kid` is refused.
pub(crate) fn parse(doc: &[u8]) -> Result<Keys, String> {
    if doc.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    let set: JwkSet = serde_json::from_slice(doc)
        .map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    if set.keys.len() > MAX_KEYS {
        return Err(format!(
            "{} keys; at most {MAX_KEYS} are read",
            set.keys.len()
        ));
    }
    let mut keys = Keys::default();
    let mut without_kid = 0;
    for jwk in &set.keys {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            format!(
                "key {}: {e}",
                jwk.common.key_id.as_deref().unwrap_or("without kid")
            )
        })?;
        let key = Arc::new(Key { alg, key });
        match &jwk.common.key_id {
            Some(kid) => {
                if keys.by_kid.insert(kid.clone(), key).is_some() {
                    return Err(format!("two keys with kid `{kid}`"));
                }
            }
            None => {
                without_kid += 1;
                keys.lone = Some(key);
            }
        }
    }
    if keys.len() == 0 {
        return Err("no RS256 or ES256 (P-256) signature key in it".into());
    }
    // A key without `kid` is unambiguous only as the set's only key; beside others it is left
    // out (a token could not name it).
    if without_kid > 1 || (without_kid == 1 && !keys.by_kid.is_empty()) {
        keys.lone = None;
    }
    if keys.len() == 0 {
        return Err(format!(
            "{without_kid} keys without a kid: with more than one key, each needs a kid for \
             tokens to name"
        ));
    }
    Ok(keys)
}

/// Reads the document from `source`.
pub(crate) fn load(source: &JwksSource) -> Result<Keys, String> {
    let doc = match source {
        JwksSource::File(path) => crate::config::read_small_file(path, MAX_JWKS_BYTES as u64)
            .map_err(|e| e.to_string())?,
        JwksSource::Url { url, ca_file } => fetch(url, ca_file.as_deref())?,
    };
    parse(&doc)
}

#[cfg(feature = "jwks-url")]
fn fetch(url: &str, ca_file: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .max_redirects(3);
    if let Some(path) = ca_file {
        let pem = crate::config::read_small_file(path, MAX_JWKS_BYTES as u64)
            .map_err(|e| format!("jwt_jwks_ca_file {}: {e}", path.display()))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("jwt_jwks_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "jwt_jwks_ca_file {} holds no certificate",
                path.display()
            ));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        config = config.tls_config(tls);
    }
    let agent: ureq::Agent = config.build().into();
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    resp.body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES as u64)
        .read_to_vec()
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "jwks-url"))]
fn fetch(_url: &str, _ca_file: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    Err("jwt_jwks_url is not in this build (feature `jwks-url`)".into())
}

/// The current keys, shared by every shard, and the way to ask for a new read.
pub(crate) struct KeySet {
    source: JwksSource,
    /// Swapped whole by the refresher; a handshake clones the `Arc` under the read lock (never
    /// per event).
    current: RwLock<Arc<Keys>>,
    /// Wakes the refresher early (an unknown `kid`); bounded to one pending wake.
    wake: Sender<()>,
    /// When (ms since `born`) an unknown `kid` last woke the refresher. Relaxed: a rate limit;
    /// two handshakes racing may both wake it, which the bounded channel absorbs.
    last_wake_ms: AtomicU64,
    born: Instant,
}

impl KeySet {
    /// Reads `source` once (an error here stops the start) and returns the set with the
    /// receiving end of its wake channel, for [`Refresher::start`].
    pub(crate) fn open(source: JwksSource) -> Result<(Arc<KeySet>, Receiver<()>), String> {
        let keys = load(&source)?;
        let (wake, woken) = crossbeam_channel::bounded(1);
        let set = KeySet {
            source,
            current: RwLock::new(Arc::new(keys)),
            wake,
            last_wake_ms: AtomicU64::new(0),
            born: Instant::now(),
        };
        Ok((Arc::new(set), woken))
    }

    /// The keys held now.
    pub(crate) fn keys(&self) -> Arc<Keys> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A token named a `kid` the set does not hold: asks for a new read, at most once per
    /// [`UNKNOWN_KID_EVERY`].
    pub(crate) fn unknown_kid(&self) {
        let now = self.born.elapsed().as_millis() as u64 + UNKNOWN_KID_EVERY.as_millis() as u64;
        let last = self.last_wake_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= UNKNOWN_KID_EVERY.as_millis() as u64
            && self
                .last_wake_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.wake.try_send(());
        }
    }

    fn replace(&self, keys: Keys) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }
}

/// The thread that reads the set again; stopped (and joined) when dropped.
pub(crate) struct Refresher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Refresher {
    /// Starts the thread: a read every `every`, or sooner when woken.
    pub(crate) fn start(
        set: Arc<KeySet>,
        woken: Receiver<()>,
        every: Duration,
    ) -> std::io::Result<Refresher> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("floodgate-jwks".into())
            .spawn(move || refresh_loop(&set, &woken, &stopped, every))?;
        Ok(Refresher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn refresh_loop(set: &KeySet, woken: &Receiver<()>, stopped: &Receiver<()>, every: Duration) {
    let mut wait = every;
    loop {
        crossbeam_channel::select! {
            recv(stopped) -> _ => return,
            recv(woken) -> _ => {}
            default(wait) => {}
        }
        if !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
            return;
        }
        match load(&set.source) {
            Ok(keys) => {
                tracing::debug!(source = %set.source, keys = keys.len(), "JWKS read");
                set.replace(keys);
                wait = every;
            }
            Err(why) => {
                tracing::warn!(source = %set.source, %why, "JWKS read failed; the keys already held stay in use");
                wait = every.min(RETRY_AFTER_FAILURE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn rsa(kid: Option<&str>) -> String {
        let kid = kid.map(|k| format!(",\"kid\":\"{k}\"")).unwrap_or_default();
        format!("{{\"kty\":\"RSA\",\"n\":\"{RSA_N}\",\"e\":\"AQAB\"{kid}}}")
    }

    #[test]
    fn keys_are_found_by_kid_and_a_lone_key_serves_tokens_without_one() {
        let two = format!("{{\"keys\":[{},{}]}}", rsa(Some("a")), rsa(Some("b")));
        let keys = parse(two.as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.find(Some("a")).is_some() && keys.find(Some("b")).is_some());
        assert!(keys.find(Some("c")).is_none());
        assert!(keys.find(None).is_none(), "two keys: a token must name one");
        let one = format!("{{\"keys\":[{}]}}", rsa(None));
        assert!(parse(one.as_bytes()).unwrap().find(None).is_some());
        let mixed = format!("{{\"keys\":[{},{}]}}", rsa(None), rsa(Some("a")));
        assert!(parse(mixed.as_bytes()).unwrap().find(None).is_none());
        // Found by the fuzzer: two keys without a kid were read as a set of none.
        let anonymous = format!("{{\"keys\":[{},{}]}}", rsa(None), rsa(None));
        let err = parse(anonymous.as_bytes()).err().unwrap();
        assert!(err.contains("2 keys without a kid"), "{err}");
    }

    #[test]
    fn unusable_documents_are_refused_with_the_reason() {
        let cases = [
            ("[]".to_owned(), "not a JWKS"),
            ("{\"keys\":[]}".to_owned(), "no RS256"),
            (
                "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"kid\":\"h\"}]}".to_owned(),
                "no RS256",
            ),
            (
                format!("{{\"keys\":[{},{}]}}", rsa(Some("a")), rsa(Some("a"))),
                "two keys with kid `a`",
            ),
            (
                format!(
                    "{{\"keys\":[{}]}}",
                    vec![rsa(Some("x")); MAX_KEYS + 1].join(",")
                ),
                "at most 64",
            ),
            (" ".repeat(MAX_JWKS_BYTES + 1), "larger than"),
        ];
        for (doc, why) in cases {
            let err = parse(doc.as_bytes()).err().expect("refused");
            assert!(err.contains(why), "{err} (wanted {why})");
        }
        // An encryption key is left out, not used for signatures.
        let enc = format!(
            "{{\"keys\":[{}]}}",
            rsa(Some("e")).replace("\"e\":\"AQAB\"", "\"e\":\"AQAB\",\"use\":\"enc\"")
        );
        assert!(parse(enc.as_bytes()).is_err());
    }

    #[test]
    fn an_unknown_kid_wakes_the_refresher_at_most_once_per_interval() {
        let dir = std::env::temp_dir().join(format!("fg-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        std::fs::write(&path, format!("{{\"keys\":[{}]}}", rsa(Some("a")))).unwrap();
        let (set, woken) = KeySet::open(JwksSource::File(path)).unwrap();
        for _ in 0..5 {
            set.unknown_kid();
        }
        assert_eq!(woken.try_iter().count(), 1);
        set.unknown_kid();
        assert_eq!(
            woken.try_iter().count(),
            0,
            "within the interval: no second wake"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
