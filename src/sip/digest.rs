//! SIP digest authentication, sans-IO: the registrar's side (challenge, verify) and the client side used
//! when one TCF relays a REGISTER to another (parse a challenge, answer it).
//!
//! Follows RFC 3261 §22 with the algorithm and `qop` rules of RFC 7616 (HTTP Digest) as RFC 8760 brings
//! them to SIP: `MD5` and `SHA-256`, `qop=auth`. The `-sess` variants, `auth-int` and `SHA-512-256` are
//! recognised and refused with [`DigestError::UnsupportedAlgorithm`] / [`DigestError::UnsupportedQop`],
//! which are not malformed input: answer them with a fresh challenge.
//!
//! Nothing here reads the clock or touches a socket: time comes in as a [`SystemTime`], randomness as an
//! [`RngCore`].
//!
//! Server flow, for one request carrying `Authorization`:
//!
//! 1. [`parse_authorization`]; a [`DigestError`] that [`is_malformed`](DigestError::is_malformed) is a 400,
//!    any other one a 401 with [`Verifier::challenges`].
//! 2. Look the user up by [`Credentials::username`]; an unknown user gets a 401 like a wrong password.
//! 3. [`Verifier::verify`] with the user's [`UserSecret`]: [`Verdict::Ok`] accepts, [`Verdict::Stale`] is a
//!    401 with `stale=true` challenges, [`Verdict::Reject`] a 401 (or 403) with fresh challenges.
//!
//! Nonces are stateless (an HMAC over their issue time proves we issued them); only the highest
//! nonce-count seen per nonce is kept, in a table of bounded size ([`NonceCounts`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Longest header value (after the header name) that the parsers look at.
pub const MAX_HEADER_LEN: usize = 8 * 1024;
/// Longest single parameter value (a username, a URI, a nonce, ...).
pub const MAX_VALUE_LEN: usize = 1024;
/// Most auth-params accepted in one header value.
pub const MAX_PARAMS: usize = 32;
/// How far in the future a nonce's issue time may lie before it is treated as stale (clock steps).
const MAX_CLOCK_SKEW_SECS: u64 = 30;

/// A digest hash algorithm we can compute (RFC 7616 §3.2, RFC 8760 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`: what every SIP phone speaks; the default when a challenge names no algorithm.
    Md5,
    /// `SHA-256`: preferred, offered first (RFC 8760 §2.4).
    Sha256,
}

impl Algorithm {
    /// Parses an `algorithm` parameter value, case-insensitively.
    ///
    /// Known but unsupported names (`MD5-sess`, `SHA-256-sess`, `SHA-512-256[-sess]`) and unknown names
    /// give [`DigestError::UnsupportedAlgorithm`].
    pub fn from_name(name: &str) -> Result<Self, DigestError> {
        if name.eq_ignore_ascii_case("MD5") {
            Ok(Self::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Ok(Self::Sha256)
        } else {
            Err(DigestError::UnsupportedAlgorithm(truncated(name)))
        }
    }

    /// The name as written on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// Ordering used by [`choose`]: higher is stronger.
    fn strength(self) -> u8 {
        match self {
            Self::Md5 => 0,
            Self::Sha256 => 1,
        }
    }

    /// `H(parts[0]:parts[1]:...)` as lowercase hex.
    fn hash_hex(self, parts: &[&str]) -> String {
        self.hash_hex_digest(parts).as_str().to_owned()
    }

    /// [`Algorithm::hash_hex`] on the stack.
    fn hash_hex_digest(self, parts: &[&str]) -> HexDigest {
        match self {
            Self::Md5 => hash_joined::<Md5>(parts),
            Self::Sha256 => hash_joined::<Sha256>(parts),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The quality of protection; only `auth` is supported (`auth-int` needs the body and is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qop {
    /// `qop=auth`: the response covers nonce, nonce-count, cnonce, method and URI.
    Auth,
}

impl Qop {
    /// The token as written on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
        }
    }
}

/// One digest challenge: the value of a `WWW-Authenticate` or `Proxy-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The protection space, e.g. `tcf-1.example`.
    pub realm: String,
    /// The server nonce the client must hash.
    pub nonce: String,
    /// Opaque data the client returns unchanged; our server sends none (its nonces carry their state).
    pub opaque: Option<String>,
    /// The hash algorithm this challenge asks for.
    pub algorithm: Algorithm,
    /// `Some(Qop::Auth)` when the server offers `qop=auth`; `None` for an RFC 2069 style challenge.
    pub qop: Option<Qop>,
    /// The previous request failed only because its nonce had expired: retry without asking the user.
    pub stale: bool,
}

impl Challenge {
    /// A `qop="auth"` challenge without opaque, as our registrar sends it.
    pub fn new(realm: &str, nonce: &str, algorithm: Algorithm, stale: bool) -> Self {
        Self {
            realm: realm.to_owned(),
            nonce: nonce.to_owned(),
            opaque: None,
            algorithm,
            qop: Some(Qop::Auth),
            stale,
        }
    }

    /// The two challenges of a server offering both algorithms, SHA-256 first (RFC 8760 §2.4): send each
    /// as its own `WWW-Authenticate` header, in this order.
    pub fn both(realm: &str, nonce: &str, stale: bool) -> [Self; 2] {
        [
            Self::new(realm, nonce, Algorithm::Sha256, stale),
            Self::new(realm, nonce, Algorithm::Md5, stale),
        ]
    }

    /// The header value, e.g.
    /// `Digest realm="tcf-1.example", nonce="...", algorithm=SHA-256, qop="auth"`.
    pub fn to_header_value(&self) -> String {
        let mut out = String::with_capacity(128 + self.nonce.len());
        write_challenge(
            &mut out,
            &self.realm,
            &self.nonce,
            self.opaque.as_deref(),
            self.algorithm,
            self.qop,
            self.stale,
        );
        out
    }
}

/// Appends the header value of a challenge to `out` (see [`Challenge::to_header_value`]).
fn write_challenge(
    out: &mut String,
    realm: &str,
    nonce: &str,
    opaque: Option<&str>,
    algorithm: Algorithm,
    qop: Option<Qop>,
    stale: bool,
) {
    out.push_str("Digest realm=");
    push_quoted(out, realm);
    out.push_str(", nonce=");
    push_quoted(out, nonce);
    if let Some(opaque) = opaque {
        out.push_str(", opaque=");
        push_quoted(out, opaque);
    }
    out.push_str(", algorithm=");
    out.push_str(algorithm.name());
    if let Some(qop) = qop {
        out.push_str(", qop=\"");
        out.push_str(qop.name());
        out.push('"');
    }
    if stale {
        out.push_str(", stale=true");
    }
}

impl Challenge {}

/// Parses a `WWW-Authenticate` / `Proxy-Authenticate` value holding one `Digest` challenge.
///
/// A `qop` list must contain `auth` (`auth-int` alone is [`DigestError::UnsupportedQop`]); without `qop`
/// the challenge is RFC 2069 style. A missing `algorithm` means MD5. Unknown parameters (`domain`, ...)
/// are ignored.
pub fn parse_challenge(value: &str) -> Result<Challenge, DigestError> {
    let mut realm = None;
    let mut nonce = None;
    let mut opaque = None;
    let mut algorithm = None;
    let mut qop = None;
    let mut stale = false;
    for (name, param) in parse_params(value)? {
        match name.as_str() {
            "realm" => realm = Some(param),
            "nonce" => nonce = Some(param),
            "opaque" => opaque = Some(param),
            "algorithm" => algorithm = Some(param),
            "qop" => qop = Some(param),
            "stale" => stale = param.eq_ignore_ascii_case("true"),
            _ => {}
        }
    }
    let qop = match qop {
        None => None,
        Some(list) => {
            if list.split(',').any(|option| option.trim().eq_ignore_ascii_case("auth")) {
                Some(Qop::Auth)
            } else {
                return Err(DigestError::UnsupportedQop(truncated(&list)));
            }
        }
    };
    Ok(Challenge {
        realm: realm.ok_or(DigestError::MissingParameter("realm"))?,
        nonce: nonce.ok_or(DigestError::MissingParameter("nonce"))?,
        opaque,
        algorithm: algorithm.as_deref().map_or(Ok(Algorithm::Md5), Algorithm::from_name)?,
        qop,
        stale,
    })
}

/// Picks the challenge to answer among those a server sent: the strongest algorithm, then one offering
/// `qop=auth`, then the first. Challenges that failed to parse (unsupported algorithms) are simply left
/// out by the caller.
pub fn choose(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges
        .iter()
        .enumerate()
        // max_by_key keeps the last maximum; the reversed index makes that the first one offered.
        .max_by_key(|(index, challenge)| {
            (
                challenge.algorithm.strength(),
                challenge.qop.is_some(),
                std::cmp::Reverse(*index),
            )
        })
        .map(|(_, challenge)| challenge)
}

/// A fresh client nonce: 16 random bytes, base64url.
pub fn new_cnonce<R: RngCore + ?Sized>(rng: &mut R) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Answers `challenge`: the value of the `Authorization` (or `Proxy-Authorization`) header.
///
/// `nc` counts the requests this client made with this nonce, starting at 1; `cnonce` should be fresh
/// ([`new_cnonce`]). Both are left out when the challenge has no `qop` (RFC 2069 style). The values must
/// not contain CR or LF (they are dropped from the header, so such a response cannot verify).
pub fn respond(
    challenge: &Challenge,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let ha1 = ha1(challenge.algorithm, username, &challenge.realm, password);
    let qop_fields = challenge.qop.map(|qop| QopFields { qop, nc, cnonce });
    let response = compute_response(challenge.algorithm, &ha1, &challenge.nonce, qop_fields, method, uri);
    Credentials {
        username: username.to_owned(),
        realm: challenge.realm.clone(),
        nonce: challenge.nonce.clone(),
        uri: uri.to_owned(),
        response,
        algorithm: challenge.algorithm,
        cnonce: challenge.qop.map(|_| cnonce.to_owned()),
        opaque: challenge.opaque.clone(),
        qop: challenge.qop,
        nc: challenge.qop.map(|_| nc),
    }
    .to_header_value()
}

/// `HA1 = H(username:realm:password)` as lowercase hex: what to store instead of a clear password
/// (one per algorithm, see [`StoredHa1`]).
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash_hex(&[username, realm, password])
}

/// The digest credentials of an `Authorization` / `Proxy-Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user, as the client names it.
    pub username: String,
    /// The realm the client answers for.
    pub realm: String,
    /// The server nonce being answered.
    pub nonce: String,
    /// The `digest-uri`: the Request-URI the client hashed.
    pub uri: String,
    /// The request digest, hex (compared case-insensitively).
    pub response: String,
    /// The algorithm; MD5 when the parameter is absent.
    pub algorithm: Algorithm,
    /// The client nonce; always present when `qop` is.
    pub cnonce: Option<String>,
    /// Opaque data returned from the challenge.
    pub opaque: Option<String>,
    /// `Some(Qop::Auth)`, or `None` for an RFC 2069 style answer.
    pub qop: Option<Qop>,
    /// The nonce-count; always present when `qop` is.
    pub nc: Option<u32>,
}

impl Credentials {
    /// The header value, parameters in the order of the RFC 7616 §3.9.1 example.
    pub fn to_header_value(&self) -> String {
        let mut out = String::with_capacity(256 + self.nonce.len() + self.uri.len());
        out.push_str("Digest username=");
        push_quoted(&mut out, &self.username);
        out.push_str(", realm=");
        push_quoted(&mut out, &self.realm);
        out.push_str(", uri=");
        push_quoted(&mut out, &self.uri);
        out.push_str(", algorithm=");
        out.push_str(self.algorithm.name());
        out.push_str(", nonce=");
        push_quoted(&mut out, &self.nonce);
        if let Some(nc) = self.nc {
            out.push_str(&format!(", nc={nc:08x}"));
        }
        if let Some(cnonce) = &self.cnonce {
            out.push_str(", cnonce=");
            push_quoted(&mut out, cnonce);
        }
        if let Some(qop) = self.qop {
            out.push_str(", qop=");
            out.push_str(qop.name());
        }
        out.push_str(", response=");
        push_quoted(&mut out, &self.response);
        if let Some(opaque) = &self.opaque {
            out.push_str(", opaque=");
            push_quoted(&mut out, opaque);
        }
        out
    }
}

/// Parses an `Authorization` / `Proxy-Authorization` value with the `Digest` scheme.
///
/// Parameter names are case-insensitive, values may be tokens or quoted strings (with backslash escapes),
/// whitespace (including folded lines) is tolerated around `=` and `,`, empty list elements are skipped,
/// a repeated parameter is an error, unknown parameters are ignored. `username`, `realm`, `nonce`, `uri`
/// and `response` are required; with `qop`, so are `cnonce` and `nc` (8 hex digits). Input beyond the
/// `MAX_*` limits is refused. Never panics.
pub fn parse_authorization(value: &str) -> Result<Credentials, DigestError> {
    parse_credentials(value).map(CredentialsRef::into_owned)
}

/// [`Credentials`] borrowing from the header value they were parsed from (a quoted value with
/// escapes is the only copy): what a registrar verifying one request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsRef<'a> {
    /// See [`Credentials::username`].
    pub username: Cow<'a, str>,
    /// See [`Credentials::realm`].
    pub realm: Cow<'a, str>,
    /// See [`Credentials::nonce`].
    pub nonce: Cow<'a, str>,
    /// See [`Credentials::uri`].
    pub uri: Cow<'a, str>,
    /// See [`Credentials::response`].
    pub response: Cow<'a, str>,
    /// See [`Credentials::algorithm`].
    pub algorithm: Algorithm,
    /// See [`Credentials::cnonce`].
    pub cnonce: Option<Cow<'a, str>>,
    /// See [`Credentials::opaque`].
    pub opaque: Option<Cow<'a, str>>,
    /// See [`Credentials::qop`].
    pub qop: Option<Qop>,
    /// See [`Credentials::nc`].
    pub nc: Option<u32>,
}

impl<'a> CredentialsRef<'a> {
    /// Owned credentials.
    pub fn into_owned(self) -> Credentials {
        Credentials {
            username: self.username.into_owned(),
            realm: self.realm.into_owned(),
            nonce: self.nonce.into_owned(),
            uri: self.uri.into_owned(),
            response: self.response.into_owned(),
            algorithm: self.algorithm,
            cnonce: self.cnonce.map(Cow::into_owned),
            opaque: self.opaque.map(Cow::into_owned),
            qop: self.qop,
            nc: self.nc,
        }
    }
}

impl Credentials {
    /// A borrowed view (no copies).
    pub fn as_ref(&self) -> CredentialsRef<'_> {
        CredentialsRef {
            username: Cow::Borrowed(&self.username),
            realm: Cow::Borrowed(&self.realm),
            nonce: Cow::Borrowed(&self.nonce),
            uri: Cow::Borrowed(&self.uri),
            response: Cow::Borrowed(&self.response),
            algorithm: self.algorithm,
            cnonce: self.cnonce.as_deref().map(Cow::Borrowed),
            opaque: self.opaque.as_deref().map(Cow::Borrowed),
            qop: self.qop,
            nc: self.nc,
        }
    }
}

/// [`parse_authorization`] without copying the values: the same rules and errors.
pub fn parse_credentials(value: &str) -> Result<CredentialsRef<'_>, DigestError> {
    let mut username = None;
    let mut realm = None;
    let mut nonce = None;
    let mut uri = None;
    let mut response = None;
    let mut algorithm = Algorithm::Md5;
    let mut cnonce = None;
    let mut opaque = None;
    let mut qop = None;
    let mut nc = None;
    for (name, param) in split_params(value)? {
        let is = |expected: &str| name.eq_ignore_ascii_case(expected.as_bytes());
        if is("username") {
            username = Some(param);
        } else if is("realm") {
            realm = Some(param);
        } else if is("nonce") {
            nonce = Some(param);
        } else if is("uri") {
            uri = Some(param);
        } else if is("response") {
            response = Some(param);
        } else if is("algorithm") {
            algorithm = Algorithm::from_name(&param)?;
        } else if is("cnonce") {
            cnonce = Some(param);
        } else if is("opaque") {
            opaque = Some(param);
        } else if is("qop") {
            if !param.eq_ignore_ascii_case("auth") {
                return Err(DigestError::UnsupportedQop(truncated(&param)));
            }
            qop = Some(Qop::Auth);
        } else if is("nc") {
            nc = Some(parse_nonce_count(&param)?);
        }
    }
    if qop.is_some() {
        if cnonce.is_none() {
            return Err(DigestError::MissingParameter("cnonce"));
        }
        if nc.is_none() {
            return Err(DigestError::MissingParameter("nc"));
        }
    }
    Ok(CredentialsRef {
        username: username.ok_or(DigestError::MissingParameter("username"))?,
        realm: realm.ok_or(DigestError::MissingParameter("realm"))?,
        nonce: nonce.ok_or(DigestError::MissingParameter("nonce"))?,
        uri: uri.ok_or(DigestError::MissingParameter("uri"))?,
        response: response.ok_or(DigestError::MissingParameter("response"))?,
        algorithm,
        cnonce,
        opaque,
        qop,
        nc,
    })
}

/// Issues and checks stateless nonces.
///
/// A nonce is `base64url(issued_at_be_u64 || random[8] || HMAC-SHA256(key, issued_at || random || realm)[..16])`:
/// the server recognises its own nonces and their age without storing them. Keep the key secret and the
/// same across restarts (and across TCFs that share a realm) or outstanding nonces become invalid.
#[derive(Clone)]
pub struct NonceManager {
    /// HMAC-SHA256 already keyed (its key blocks hashed once, not per nonce).
    keyed: Hmac<Sha256>,
    realm: String,
    lifetime: Duration,
}

/// A nonce as base64url text, on the stack.
struct EncodedNonce {
    text: [u8; NONCE_LEN],
    len: usize,
}

impl EncodedNonce {
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.text.get(..self.len).unwrap_or_default()).unwrap_or_default()
    }
}

/// What [`NonceManager::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Ours, for this realm, and not expired.
    Valid,
    /// Ours but expired (or issued implausibly far in the future): challenge again with `stale=true`.
    Stale,
    /// Not a nonce we issued (wrong length, encoding, realm or MAC).
    Invalid,
}

/// Raw nonce length: issue time, random part, truncated MAC.
const NONCE_RAW_LEN: usize = 8 + 8 + 16;
/// Encoded nonce length: base64url without padding of [`NONCE_RAW_LEN`] bytes.
const NONCE_LEN: usize = NONCE_RAW_LEN.div_ceil(3) * 4 - (3 - NONCE_RAW_LEN % 3) % 3;

impl NonceManager {
    /// A manager for `realm` whose nonces are valid for `lifetime` after issue.
    pub fn new(key: [u8; 32], realm: &str, lifetime: Duration) -> Self {
        // Local invariant: HMAC accepts keys of any length, so this cannot fail.
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
        Self {
            keyed,
            realm: realm.to_owned(),
            lifetime,
        }
    }

    /// The realm the nonces are bound to.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// How long a nonce stays valid after issue.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// A fresh nonce issued at `now`.
    pub fn issue<R: RngCore + ?Sized>(&self, now: SystemTime, rng: &mut R) -> String {
        self.issue_encoded(now, rng).as_str().to_owned()
    }

    /// [`NonceManager::issue`] on the stack.
    fn issue_encoded<R: RngCore + ?Sized>(&self, now: SystemTime, rng: &mut R) -> EncodedNonce {
        let mut raw = [0u8; NONCE_RAW_LEN];
        raw[..8].copy_from_slice(&unix_seconds(now).to_be_bytes());
        rng.fill_bytes(&mut raw[8..16]);
        let tag = self.mac(&raw[..16]).finalize().into_bytes();
        raw[16..].copy_from_slice(&tag[..16]);
        let mut encoded = EncodedNonce {
            text: [0; NONCE_LEN],
            len: 0,
        };
        // The buffer is exactly as long as the encoding.
        encoded.len = URL_SAFE_NO_PAD.encode_slice(raw, &mut encoded.text).unwrap_or(0);
        encoded
    }

    /// Whether `nonce` is one of ours and still fresh at `now`.
    pub fn check(&self, nonce: &str, now: SystemTime) -> NonceStatus {
        let Some(raw) = decode_nonce(nonce) else {
            return NonceStatus::Invalid;
        };
        if self.mac(&raw[..16]).verify_truncated_left(&raw[16..]).is_err() {
            return NonceStatus::Invalid;
        }
        let issued_at = issued_at(&raw);
        let now = unix_seconds(now);
        let expired = now.saturating_sub(issued_at) > self.lifetime.as_secs();
        let from_future = issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS);
        if expired || from_future {
            NonceStatus::Stale
        } else {
            NonceStatus::Valid
        }
    }

    fn mac(&self, issued_and_random: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(issued_and_random);
        mac.update(self.realm.as_bytes());
        mac
    }
}

impl fmt::Debug for NonceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceManager")
            .field("key", &"<redacted>")
            .field("realm", &self.realm)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Replay protection: the highest nonce-count accepted per nonce, in bounded memory.
///
/// Entries leave when their nonce expires. When the table is full of live nonces, the oldest-issued
/// eighth is dropped and everything issued up to then is remembered as *forgotten*: a later request with
/// such a nonce is refused ([`NonceCountCheck::Forgotten`], which the verifier answers as stale), so
/// eviction never reopens a replay.
#[derive(Debug, Clone)]
pub struct NonceCounts {
    entries: HashMap<String, CountEntry>,
    max_entries: usize,
    lifetime_secs: u64,
    /// Nonces issued at or before this second may have been evicted.
    forgotten_through: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct CountEntry {
    highest: u32,
    issued_at: u64,
}

/// What [`NonceCounts::check_and_record`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCountCheck {
    /// Greater than any count seen for this nonce: recorded.
    Accepted,
    /// Not greater than the highest count already accepted for this nonce (or zero).
    Replayed,
    /// The nonce is expired, not ours, or may have been evicted under load: it needs a fresh one.
    Forgotten,
}

impl NonceCounts {
    /// A tracker holding at most `max_entries` nonces (at least one) that live for `lifetime`; use the
    /// [`NonceManager`]'s lifetime.
    pub fn new(max_entries: usize, lifetime: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
            lifetime_secs: lifetime.as_secs(),
            forgotten_through: None,
        }
    }

    /// Records `nc` for `nonce` if it is greater than the last one accepted; false otherwise (replay,
    /// expired or forgotten nonce). Call only with nonces [`NonceManager::check`] found valid.
    pub fn accept(&mut self, nonce: &str, nc: u32, now: SystemTime) -> bool {
        self.check_and_record(nonce, nc, now) == NonceCountCheck::Accepted
    }

    /// Like [`accept`](Self::accept), telling a replay from a nonce that is no longer tracked.
    pub fn check_and_record(&mut self, nonce: &str, nc: u32, now: SystemTime) -> NonceCountCheck {
        if let Some(entry) = self.entries.get_mut(nonce) {
            if nc > entry.highest {
                entry.highest = nc;
                return NonceCountCheck::Accepted;
            }
            return NonceCountCheck::Replayed;
        }
        if nc == 0 {
            return NonceCountCheck::Replayed;
        }
        let Some(issued_at) = decode_nonce(nonce).map(|raw| issued_at(&raw)) else {
            return NonceCountCheck::Forgotten;
        };
        let now = unix_seconds(now);
        if self.is_expired(issued_at, now) || self.is_forgotten(issued_at) {
            return NonceCountCheck::Forgotten;
        }
        if self.entries.len() >= self.max_entries {
            self.make_room(now);
            if self.is_forgotten(issued_at) {
                return NonceCountCheck::Forgotten;
            }
        }
        self.entries
            .insert(nonce.to_owned(), CountEntry { highest: nc, issued_at });
        NonceCountCheck::Accepted
    }

    /// How many nonces are tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no nonce is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn is_expired(&self, issued_at: u64, now: u64) -> bool {
        now.saturating_sub(issued_at) > self.lifetime_secs
    }

    fn is_forgotten(&self, issued_at: u64) -> bool {
        self.forgotten_through.is_some_and(|through| issued_at <= through)
    }

    /// Drops expired entries, then, if still full, the oldest-issued eighth of the table in one go so the
    /// cost of the scan is shared by the inserts that follow.
    fn make_room(&mut self, now: u64) {
        let lifetime_secs = self.lifetime_secs;
        self.entries
            .retain(|_, entry| now.saturating_sub(entry.issued_at) <= lifetime_secs);
        if self.entries.len() < self.max_entries {
            return;
        }
        let mut issue_times: Vec<u64> = self.entries.values().map(|entry| entry.issued_at).collect();
        let index = (issue_times.len() / 8).max(1) - 1;
        let (_, &mut threshold, _) = issue_times.select_nth_unstable(index);
        self.entries.retain(|_, entry| entry.issued_at > threshold);
        self.forgotten_through = Some(self.forgotten_through.map_or(threshold, |t| t.max(threshold)));
    }
}

/// Settings of a [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Our realm: challenges carry it and credentials must name it.
    pub realm: String,
    /// How long a nonce stays valid. Default 300 s: long enough for a REGISTER round trip and a few
    /// re-sends; a UA re-registering later just gets a `stale=true` challenge.
    pub nonce_lifetime: Duration,
    /// Bound on the replay table. Default 65 536 nonces (a few MiB).
    pub max_tracked_nonces: usize,
    /// The algorithms offered and accepted, in order of preference: one `WWW-Authenticate` each,
    /// the preferred first (RFC 8760 §2.4). Default SHA-256 then MD5 (most SIP phones know only
    /// MD5). Some clients answer only the first challenge; list MD5 alone for them.
    pub algorithms: Vec<Algorithm>,
    /// Accept RFC 2069 style credentials (no `qop`, so no nonce-count and no replay protection within a
    /// nonce's lifetime). Default false.
    pub allow_rfc2069: bool,
}

impl VerifierConfig {
    /// The defaults documented on each field, for `realm`.
    pub fn new(realm: &str) -> Self {
        Self {
            realm: realm.to_owned(),
            nonce_lifetime: Duration::from_secs(300),
            max_tracked_nonces: 65_536,
            algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
            allow_rfc2069: false,
        }
    }
}

/// The user's secret as the registrar stores it.
#[derive(Debug, Clone, Copy)]
pub enum UserSecret<'a> {
    /// The clear-text password.
    Password(&'a str),
    /// Pre-computed HA1 values, so that passwords need not be stored.
    Ha1(&'a StoredHa1),
}

/// HA1 = H(username:realm:password) per algorithm, lowercase hex (see [`ha1`]). Bound to one username
/// and realm: renaming either needs the password again.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredHa1 {
    /// HA1 for MD5, if provisioned.
    pub md5: Option<String>,
    /// HA1 for SHA-256, if provisioned.
    pub sha256: Option<String>,
}

impl StoredHa1 {
    /// Both HA1 values for a user.
    pub fn compute(username: &str, realm: &str, password: &str) -> Self {
        Self {
            md5: Some(ha1(Algorithm::Md5, username, realm, password)),
            sha256: Some(ha1(Algorithm::Sha256, username, realm, password)),
        }
    }

    /// The HA1 for `algorithm`, if provisioned.
    pub fn for_algorithm(&self, algorithm: Algorithm) -> Option<&str> {
        match algorithm {
            Algorithm::Md5 => self.md5.as_deref(),
            Algorithm::Sha256 => self.sha256.as_deref(),
        }
    }
}

impl fmt::Debug for StoredHa1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredHa1")
            .field("md5", &self.md5.as_ref().map(|_| "<redacted>"))
            .field("sha256", &self.sha256.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The registrar's side: issues challenges and verifies credentials against them.
#[derive(Debug, Clone)]
pub struct Verifier {
    nonces: NonceManager,
    counts: NonceCounts,
    algorithms: Vec<Algorithm>,
    allow_rfc2069: bool,
}

/// The outcome of [`Verifier::verify`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated.
    Ok,
    /// Right password, but the nonce expired (or is no longer tracked): answer 401 with
    /// [`Verifier::challenges`]`(.., stale = true)`.
    Stale,
    /// Not authenticated: answer 401 with fresh challenges (or 403), and count it.
    Reject(RejectReason),
}

/// Why credentials were rejected.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The credentials name another realm.
    RealmMismatch,
    /// The algorithm is one we do not offer (not in `algorithms`).
    AlgorithmNotOffered(Algorithm),
    /// No `qop` and RFC 2069 compatibility is off.
    QopRequired,
    /// `qop` without `nc` or `cnonce` (only possible for hand-built credentials).
    IncompleteQop,
    /// The nonce is not one we issued.
    NonceInvalid,
    /// A stored HA1 lacks the algorithm the client used.
    NoStoredHa1(Algorithm),
    /// Wrong password (or wrong username, URI or method hashed).
    ResponseMismatch,
    /// The nonce-count is not greater than one already accepted for this nonce.
    NonceCountReplayed,
}

impl Verifier {
    /// A verifier with `nonce_key` as the nonce HMAC key (32 random bytes kept secret, see
    /// [`NonceManager`]).
    pub fn new(config: VerifierConfig, nonce_key: [u8; 32]) -> Self {
        Self {
            nonces: NonceManager::new(nonce_key, &config.realm, config.nonce_lifetime),
            counts: NonceCounts::new(config.max_tracked_nonces, config.nonce_lifetime),
            algorithms: config.algorithms,
            allow_rfc2069: config.allow_rfc2069,
        }
    }

    /// Our realm.
    pub fn realm(&self) -> &str {
        self.nonces.realm()
    }

    /// The challenges for a 401, one `WWW-Authenticate` header each, in the configured order of
    /// preference; all share one fresh nonce. `stale` after [`Verdict::Stale`].
    pub fn challenges<R: RngCore + ?Sized>(&self, now: SystemTime, rng: &mut R, stale: bool) -> Vec<Challenge> {
        let nonce = self.nonces.issue(now, rng);
        self.algorithms
            .iter()
            .map(|&algorithm| Challenge::new(self.realm(), &nonce, algorithm, stale))
            .collect()
    }

    /// [`Verifier::challenges`] as header values, handed to `write` one after the other (the
    /// same text as [`Challenge::to_header_value`]), without building a [`Challenge`] each.
    pub fn write_challenges<R: RngCore + ?Sized>(
        &self,
        now: SystemTime,
        rng: &mut R,
        stale: bool,
        mut write: impl FnMut(&str),
    ) {
        let nonce = self.nonces.issue_encoded(now, rng);
        let nonce = nonce.as_str();
        let mut value = String::with_capacity(160);
        for &algorithm in &self.algorithms {
            value.clear();
            write_challenge(&mut value, self.realm(), nonce, None, algorithm, Some(Qop::Auth), stale);
            write(&value);
        }
    }

    /// Checks `credentials` sent with a request of `method` against the user's `secret`.
    ///
    /// In order: realm, algorithm offered, `qop` policy, nonce issued by us, response (constant-time),
    /// nonce freshness (a stale nonce with the right response is [`Verdict::Stale`]), then the nonce-count
    /// against replays. Only requests with the right response touch the replay table. The caller checks
    /// that `credentials.uri` designates the Request-URI, if it wants to.
    pub fn verify(
        &mut self,
        credentials: &Credentials,
        method: &str,
        secret: UserSecret<'_>,
        now: SystemTime,
    ) -> Verdict {
        self.verify_ref(&credentials.as_ref(), method, secret, now)
    }

    /// [`Verifier::verify`] of borrowed credentials ([`parse_credentials`]).
    pub fn verify_ref(
        &mut self,
        credentials: &CredentialsRef<'_>,
        method: &str,
        secret: UserSecret<'_>,
        now: SystemTime,
    ) -> Verdict {
        if credentials.realm != self.nonces.realm() {
            return Verdict::Reject(RejectReason::RealmMismatch);
        }
        let algorithm = credentials.algorithm;
        if !self.algorithms.contains(&algorithm) {
            return Verdict::Reject(RejectReason::AlgorithmNotOffered(algorithm));
        }
        let qop_fields = match (credentials.qop, credentials.nc, credentials.cnonce.as_deref()) {
            (Some(qop), Some(nc), Some(cnonce)) => Some(QopFields { qop, nc, cnonce }),
            (Some(_), _, _) => return Verdict::Reject(RejectReason::IncompleteQop),
            (None, _, _) if self.allow_rfc2069 => None,
            (None, _, _) => return Verdict::Reject(RejectReason::QopRequired),
        };
        let status = self.nonces.check(&credentials.nonce, now);
        if status == NonceStatus::Invalid {
            return Verdict::Reject(RejectReason::NonceInvalid);
        }
        let computed_ha1;
        let stored_ha1;
        let ha1: &str = match secret {
            UserSecret::Password(password) => {
                computed_ha1 = algorithm.hash_hex_digest(&[&credentials.username, &credentials.realm, password]);
                computed_ha1.as_str()
            }
            UserSecret::Ha1(stored) => match stored.for_algorithm(algorithm) {
                Some(ha1) => {
                    stored_ha1 = ha1.to_ascii_lowercase();
                    &stored_ha1
                }
                None => return Verdict::Reject(RejectReason::NoStoredHa1(algorithm)),
            },
        };
        let expected =
            compute_response_digest(algorithm, ha1, &credentials.nonce, qop_fields, method, &credentials.uri);
        // The received digest lowercased on the stack; one longer than any digest cannot match.
        let mut received = [0u8; 64];
        let matches = match received.get_mut(..credentials.response.len()) {
            Some(slot) => {
                slot.copy_from_slice(credentials.response.as_bytes());
                slot.make_ascii_lowercase();
                bool::from(expected.as_str().as_bytes().ct_eq(slot))
            }
            None => false,
        };
        if !matches {
            return Verdict::Reject(RejectReason::ResponseMismatch);
        }
        if status == NonceStatus::Stale {
            return Verdict::Stale;
        }
        let Some(qop_fields) = qop_fields else {
            return Verdict::Ok;
        };
        match self.counts.check_and_record(&credentials.nonce, qop_fields.nc, now) {
            NonceCountCheck::Accepted => Verdict::Ok,
            NonceCountCheck::Replayed => Verdict::Reject(RejectReason::NonceCountReplayed),
            NonceCountCheck::Forgotten => Verdict::Stale,
        }
    }
}

/// Errors from parsing a challenge or credentials.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Malformed: the value does not use the `Digest` scheme.
    #[error("not a Digest authentication header")]
    NotDigest,
    /// Malformed: a syntax error at this byte offset.
    #[error("malformed digest header at byte {at}: {reason}")]
    Syntax {
        /// Byte offset in the header value.
        at: usize,
        /// What was expected there.
        reason: &'static str,
    },
    /// Malformed: a parameter appears twice.
    #[error("duplicate digest parameter {0:?}")]
    DuplicateParameter(String),
    /// Malformed: a required parameter is absent.
    #[error("missing digest parameter {0:?}")]
    MissingParameter(&'static str),
    /// Malformed: the header, a value or the number of parameters exceeds our limits.
    #[error("digest header too long: {0}")]
    TooLong(&'static str),
    /// Malformed: `nc` is not 8 hex digits.
    #[error("nonce-count is not 8 hex digits")]
    InvalidNonceCount,
    /// Unsupported, not malformed: an algorithm we do not implement (including the `-sess` variants).
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// Unsupported, not malformed: a `qop` other than `auth`.
    #[error("unsupported qop {0:?}")]
    UnsupportedQop(String),
}

impl DigestError {
    /// True for broken syntax (answer 400 and count it); false for well-formed but unsupported choices
    /// (answer 401 with our challenges).
    pub fn is_malformed(&self) -> bool {
        !matches!(self, Self::UnsupportedAlgorithm(_) | Self::UnsupportedQop(_))
    }
}

/// The `qop` part of a response computation.
#[derive(Debug, Clone, Copy)]
struct QopFields<'a> {
    qop: Qop,
    nc: u32,
    cnonce: &'a str,
}

/// RFC 7616 §3.4.1: `H(HA1:nonce:nc:cnonce:qop:HA2)` with `HA2 = H(method:uri)`, or the RFC 2069 form
/// `H(HA1:nonce:HA2)` without qop.
fn compute_response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<QopFields<'_>>,
    method: &str,
    uri: &str,
) -> String {
    compute_response_digest(algorithm, ha1, nonce, qop, method, uri)
        .as_str()
        .to_owned()
}

/// [`compute_response`] on the stack.
fn compute_response_digest(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<QopFields<'_>>,
    method: &str,
    uri: &str,
) -> HexDigest {
    let ha2 = algorithm.hash_hex_digest(&[method, uri]);
    match qop {
        Some(fields) => {
            let mut nc = [0u8; 8];
            for (index, slot) in nc.iter_mut().enumerate() {
                let nibble = (fields.nc >> (28 - 4 * index)) & 0xf;
                *slot = HEX_DIGITS[nibble as usize];
            }
            let nc = std::str::from_utf8(&nc).unwrap_or_default();
            algorithm.hash_hex_digest(&[ha1, nonce, nc, fields.cnonce, fields.qop.name(), ha2.as_str()])
        }
        None => algorithm.hash_hex_digest(&[ha1, nonce, ha2.as_str()]),
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A digest as lowercase hex, on the stack (SHA-256 has the longest: 64 digits).
#[derive(Clone, Copy)]
struct HexDigest {
    digits: [u8; 64],
    len: usize,
}

impl HexDigest {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.digits[..self.len]).unwrap_or_default()
    }
}

fn hash_joined<D: sha2::Digest>(parts: &[&str]) -> HexDigest {
    let mut hasher = D::new();
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            hasher.update(b":");
        }
        hasher.update(part.as_bytes());
    }
    let hash = hasher.finalize();
    let mut digest = HexDigest {
        digits: [0; 64],
        len: 0,
    };
    for (pair, byte) in digest.digits.chunks_exact_mut(2).zip(hash.iter()) {
        pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
        pair[1] = HEX_DIGITS[usize::from(byte & 0x0f)];
        digest.len += 2;
    }
    digest
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

fn decode_nonce(nonce: &str) -> Option<[u8; NONCE_RAW_LEN]> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let mut raw = [0u8; NONCE_RAW_LEN];
    match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
        Ok(NONCE_RAW_LEN) => Some(raw),
        _ => None,
    }
}

fn issued_at(raw: &[u8; NONCE_RAW_LEN]) -> u64 {
    let mut seconds = [0u8; 8];
    seconds.copy_from_slice(&raw[..8]);
    u64::from_be_bytes(seconds)
}

fn parse_nonce_count(value: &str) -> Result<u32, DigestError> {
    if value.len() != 8 || !value.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(DigestError::InvalidNonceCount);
    }
    u32::from_str_radix(value, 16).map_err(|_| DigestError::InvalidNonceCount)
}

/// Appends `value` as a quoted-string, escaping `"` and `\`. CR, LF and NUL cannot be carried in a
/// quoted-string at all and are dropped, so that no value can inject a header line.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    if !value
        .bytes()
        .any(|byte| matches!(byte, b'"' | b'\\' | b'\r' | b'\n' | b'\0'))
    {
        out.push_str(value);
        out.push('"');
        return;
    }
    for character in value.chars() {
        match character {
            '"' | '\\' => {
                out.push('\\');
                out.push(character);
            }
            '\r' | '\n' | '\0' => {}
            _ => out.push(character),
        }
    }
    out.push('"');
}

/// An unsupported value echoed in an error, cut to a sane length.
fn truncated(value: &str) -> String {
    value.chars().take(64).collect()
}

/// Splits `Digest name=value, name="value", ...` into lowercase names and unescaped values.
fn parse_params(value: &str) -> Result<Vec<(String, String)>, DigestError> {
    Ok(split_params(value)?
        .into_iter()
        .map(|(name, param)| (String::from_utf8_lossy(name).to_ascii_lowercase(), param.into_owned()))
        .collect())
}

/// A digest parameter: its name as received and its unescaped value.
type RawParam<'a> = (&'a [u8], Cow<'a, str>);

/// Splits `Digest name=value, name="value", ...` into names as received and unescaped values,
/// borrowing both from `value` where it can (a quoted string without escapes).
fn split_params(value: &str) -> Result<Vec<RawParam<'_>>, DigestError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(DigestError::TooLong("header value"));
    }
    let mut cursor = Cursor {
        bytes: value.as_bytes(),
        position: 0,
    };
    cursor.skip_whitespace();
    let scheme = cursor.token();
    if !scheme.eq_ignore_ascii_case(b"Digest") {
        return Err(DigestError::NotDigest);
    }
    if !cursor.at_end() && !cursor.skip_whitespace() {
        return Err(cursor.error("expected whitespace after the scheme"));
    }
    let mut params: Vec<RawParam<'_>> = Vec::with_capacity(12);
    loop {
        cursor.skip_whitespace();
        if cursor.at_end() {
            break;
        }
        if cursor.eat(b',') {
            continue;
        }
        if params.len() == MAX_PARAMS {
            return Err(DigestError::TooLong("too many parameters"));
        }
        let name = cursor.token();
        if name.is_empty() {
            return Err(cursor.error("expected a parameter name"));
        }
        if name.len() > MAX_VALUE_LEN {
            return Err(DigestError::TooLong("parameter name"));
        }
        cursor.skip_whitespace();
        if !cursor.eat(b'=') {
            return Err(cursor.error("expected '='"));
        }
        cursor.skip_whitespace();
        let param = if cursor.peek() == Some(b'"') {
            cursor.quoted_string()?
        } else {
            let token = cursor.token();
            if token.is_empty() {
                return Err(cursor.error("expected a token or quoted string"));
            }
            if token.len() > MAX_VALUE_LEN {
                return Err(DigestError::TooLong("parameter value"));
            }
            Cow::Borrowed(token)
        };
        if params.iter().any(|(seen, _)| seen.eq_ignore_ascii_case(name)) {
            return Err(DigestError::DuplicateParameter(
                String::from_utf8_lossy(name).to_ascii_lowercase(),
            ));
        }
        // Only ASCII delimiters were split on, so a borrowed value is a slice of `value` at char
        // boundaries: sliced from the `&str` again, not validated again.
        let param = match param {
            Cow::Borrowed(bytes) => Cow::Borrowed(
                crate::sip::syntax::substr(value, bytes)
                    .or_else(|| std::str::from_utf8(bytes).ok())
                    .ok_or_else(|| cursor.error("invalid UTF-8"))?,
            ),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8(bytes).map_err(|_| cursor.error("invalid UTF-8"))?),
        };
        params.push((name, param));
        cursor.skip_whitespace();
        if !cursor.at_end() && !cursor.eat(b',') {
            return Err(cursor.error("expected ',' between parameters"));
        }
    }
    if params.is_empty() {
        return Err(DigestError::Syntax {
            at: value.len(),
            reason: "no parameters",
        });
    }
    Ok(params)
}

/// A byte cursor over a header value; every method is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn at_end(&self) -> bool {
        self.position >= self.bytes.len()
    }

    fn eat(&mut self, expected: u8) -> bool {
        if self.peek() == Some(expected) {
            self.position += 1;
            true
        } else {
            false
        }
    }

    /// Skips spaces, tabs and line folds (LWS); true if anything was skipped.
    fn skip_whitespace(&mut self) -> bool {
        let start = self.position;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.position += 1;
        }
        self.position > start
    }

    /// The longest run of token characters (RFC 3261 and RFC 9110 token sets), possibly empty.
    fn token(&mut self) -> &'a [u8] {
        let start = self.position;
        while self.peek().is_some_and(is_token_byte) {
            self.position += 1;
        }
        &self.bytes[start..self.position]
    }

    /// A quoted-string starting at the opening quote, unescaped (borrowed when it holds no
    /// escape).
    fn quoted_string(&mut self) -> Result<Cow<'a, [u8]>, DigestError> {
        let opening = self.position;
        self.position += 1;
        // The common case: no backslash before the closing quote, nothing to unescape.
        // One pass to the first quote, backslash or control character (tab aside).
        if let Some(length) = self.bytes[self.position..]
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || (b.is_ascii_control() && b != b'\t'))
        {
            let end = self.position + length;
            if self.bytes[end] == b'"' && length <= MAX_VALUE_LEN {
                let inner = &self.bytes[self.position..end];
                self.position = end + 1;
                return Ok(Cow::Borrowed(inner));
            }
            // Anything else (an escape, a control character, an overlong value) takes the
            // byte-by-byte loop below, which reports it as before.
        }
        let mut value = Vec::new();
        loop {
            let Some(byte) = self.peek() else {
                return Err(DigestError::Syntax {
                    at: opening,
                    reason: "unterminated quoted string",
                });
            };
            self.position += 1;
            let byte = match byte {
                b'"' => return Ok(Cow::Owned(value)),
                b'\\' => match self.peek() {
                    Some(escaped) if escaped != b'\r' && escaped != b'\n' => {
                        self.position += 1;
                        escaped
                    }
                    _ => return Err(self.error("invalid escape in quoted string")),
                },
                byte => byte,
            };
            if byte.is_ascii_control() && byte != b'\t' {
                return Err(self.error("control character in quoted string"));
            }
            if value.len() == MAX_VALUE_LEN {
                return Err(DigestError::TooLong("parameter value"));
            }
            value.push(byte);
        }
    }

    fn error(&self, reason: &'static str) -> DigestError {
        DigestError::Syntax {
            at: self.position,
            reason,
        }
    }
}

fn is_token_byte(byte: u8) -> bool {
    DIGEST_TOKEN[usize::from(byte)]
}

/// [`is_token_byte`] as a table: asked for every byte of every parameter name and token.
static DIGEST_TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~' | b'#' | b'$' | b'&' | b'^' | b'|'
            );
        byte += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const REALM: &str = "tcf-1.example";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(42)
    }

    fn verifier() -> Verifier {
        Verifier::new(VerifierConfig::new(REALM), KEY)
    }

    fn response_of(header: &str) -> String {
        parse_authorization(header).expect("test header parses").response
    }

    // RFC 7616 §3.9.1: the Mufasa example.
    const RFC7616_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC7616_OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";
    const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn rfc7616_challenge(algorithm: &str) -> Challenge {
        parse_challenge(&format!(
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm={algorithm}, \
             nonce=\"{RFC7616_NONCE}\", opaque=\"{RFC7616_OPAQUE}\""
        ))
        .expect("RFC challenge parses")
    }

    #[test]
    fn rfc7616_sha256_example() {
        let challenge = rfc7616_challenge("SHA-256");
        assert_eq!(challenge.algorithm, Algorithm::Sha256);
        assert_eq!(challenge.qop, Some(Qop::Auth));
        let header = respond(
            &challenge,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            1,
            RFC7616_CNONCE,
        );
        assert_eq!(
            response_of(&header),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        let credentials = parse_authorization(&header).expect("own header parses");
        assert_eq!(credentials.nc, Some(1));
        assert_eq!(credentials.opaque.as_deref(), Some(RFC7616_OPAQUE));
        assert_eq!(credentials.cnonce.as_deref(), Some(RFC7616_CNONCE));
        assert!(header.contains("nc=00000001"));
        assert!(header.contains("algorithm=SHA-256"));
    }

    #[test]
    fn rfc7616_md5_example() {
        let challenge = rfc7616_challenge("MD5");
        let header = respond(
            &challenge,
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            1,
            RFC7616_CNONCE,
        );
        assert_eq!(response_of(&header), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn rfc7616_authorization_example_parses() {
        // The Authorization header of RFC 7616 §3.9.1, SHA-256 variant, with its line folds.
        let value = "Digest username=\"Mufasa\",\r\n       realm=\"http-auth@example.org\",\r\n       \
                     uri=\"/dir/index.html\",\r\n       algorithm=SHA-256,\r\n       nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n       \
                     nc=00000001,\r\n       cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\",\r\n       qop=auth,\r\n       \
                     response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\",\r\n       \
                     opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let credentials = parse_authorization(value).expect("RFC example parses");
        assert_eq!(credentials.username, "Mufasa");
        assert_eq!(credentials.realm, "http-auth@example.org");
        assert_eq!(credentials.uri, "/dir/index.html");
        assert_eq!(credentials.algorithm, Algorithm::Sha256);
        assert_eq!(credentials.qop, Some(Qop::Auth));
        assert_eq!(credentials.nc, Some(1));
        // Recompute the response from the parsed fields.
        let ha1 = ha1(Algorithm::Sha256, "Mufasa", &credentials.realm, "Circle of Life");
        let fields = QopFields {
            qop: Qop::Auth,
            nc: 1,
            cnonce: RFC7616_CNONCE,
        };
        let response = compute_response(
            Algorithm::Sha256,
            &ha1,
            &credentials.nonce,
            Some(fields),
            "GET",
            &credentials.uri,
        );
        assert_eq!(response, credentials.response);
    }

    #[test]
    fn rfc2617_md5_example() {
        let challenge = parse_challenge(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .expect("RFC 2617 challenge parses");
        assert_eq!(challenge.algorithm, Algorithm::Md5, "no algorithm means MD5");
        let header = respond(
            &challenge,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        assert_eq!(response_of(&header), "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc2069_style_response_has_no_qop_fields() {
        let challenge =
            parse_challenge("Digest realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\"")
                .expect("parses");
        assert_eq!(challenge.qop, None);
        let header = respond(
            &challenge,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            1,
            "unused",
        );
        assert!(!header.contains("qop="));
        assert!(!header.contains("cnonce="));
        assert!(!header.contains("nc="));
        let ha1 = ha1(Algorithm::Md5, "Mufasa", "testrealm@host.com", "Circle Of Life");
        let ha2 = Algorithm::Md5.hash_hex(&["GET", "/dir/index.html"]);
        let expected = Algorithm::Md5.hash_hex(&[&ha1, "dcd98b7102dd2f0e8b11d0f600bfb0c093", &ha2]);
        assert_eq!(response_of(&header), expected);
    }

    #[test]
    fn challenge_header_values() {
        let [sha256, md5] = Challenge::both(REALM, "abc", false);
        assert_eq!(
            sha256.to_header_value(),
            "Digest realm=\"tcf-1.example\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth\""
        );
        assert_eq!(
            md5.to_header_value(),
            "Digest realm=\"tcf-1.example\", nonce=\"abc\", algorithm=MD5, qop=\"auth\""
        );
        let mut stale = Challenge::new(REALM, "abc", Algorithm::Sha256, true);
        stale.opaque = Some("o\"q".to_owned());
        let value = stale.to_header_value();
        assert_eq!(
            value,
            "Digest realm=\"tcf-1.example\", nonce=\"abc\", opaque=\"o\\\"q\", algorithm=SHA-256, qop=\"auth\", stale=true"
        );
        assert_eq!(parse_challenge(&value), Ok(stale));
    }

    #[test]
    fn verifier_offers_sha256_first() {
        let verifier = verifier();
        let challenges = verifier.challenges(at(1_000), &mut rng(), false);
        assert_eq!(challenges.len(), 2);
        assert_eq!(challenges[0].algorithm, Algorithm::Sha256);
        assert_eq!(challenges[1].algorithm, Algorithm::Md5);
        assert_eq!(challenges[0].nonce, challenges[1].nonce);
        let mut config = VerifierConfig::new(REALM);
        config.algorithms = vec![Algorithm::Sha256];
        let sha_only = Verifier::new(config, KEY).challenges(at(1_000), &mut rng(), true);
        assert_eq!(sha_only.len(), 1);
        assert!(sha_only[0].stale);
    }

    #[test]
    fn choose_prefers_strongest_then_qop_then_first() {
        let md5 = Challenge::new(REALM, "n1", Algorithm::Md5, false);
        let sha = Challenge::new(REALM, "n2", Algorithm::Sha256, false);
        let mut sha_no_qop = Challenge::new(REALM, "n3", Algorithm::Sha256, false);
        sha_no_qop.qop = None;
        let sha_second = Challenge::new(REALM, "n4", Algorithm::Sha256, false);
        assert_eq!(choose(&[]), None);
        assert_eq!(choose(std::slice::from_ref(&md5)), Some(&md5));
        let offered = [md5.clone(), sha_no_qop.clone(), sha.clone(), sha_second];
        assert_eq!(choose(&offered).map(|c| c.nonce.as_str()), Some("n2"));
        assert_eq!(choose(&[md5, sha_no_qop.clone()]), Some(&sha_no_qop));
    }

    #[test]
    fn client_skips_unsupported_challenges() {
        let headers = [
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256, qop=\"auth\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256, qop=\"auth\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=MD5-sess, qop=\"auth\"",
            "Digest realm=\"r\", nonce=\"n\", algorithm=MD5, qop=\"auth\"",
        ];
        let parsed: Vec<Challenge> = headers.iter().filter_map(|h| parse_challenge(h).ok()).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(choose(&parsed).map(|c| c.algorithm), Some(Algorithm::Sha256));
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(Algorithm::from_name("md5"), Ok(Algorithm::Md5));
        assert_eq!(Algorithm::from_name("sha-256"), Ok(Algorithm::Sha256));
        for name in [
            "MD5-sess",
            "SHA-256-sess",
            "sha-512-256",
            "SHA-512-256-sess",
            "SHA256",
            "",
        ] {
            let error = Algorithm::from_name(name).expect_err(name);
            assert!(matches!(error, DigestError::UnsupportedAlgorithm(_)));
            assert!(!error.is_malformed());
        }
    }

    fn round_trip(algorithm: Algorithm, secret: UserSecret<'_>) {
        let mut verifier = verifier();
        let now = at(1_000_000);
        let challenges = verifier.challenges(now, &mut rng(), false);
        let challenge = challenges.iter().find(|c| c.algorithm == algorithm).expect("offered");
        let header = respond(challenge, "alice", "s3cret", "REGISTER", "sip:tcf-1.example", 1, "c1");
        let credentials = parse_authorization(&header).expect("parses");
        assert_eq!(credentials.algorithm, algorithm);
        assert_eq!(verifier.verify(&credentials, "REGISTER", secret, now), Verdict::Ok);
    }

    #[test]
    fn round_trip_both_algorithms_with_password_and_stored_ha1() {
        let stored = StoredHa1::compute("alice", REALM, "s3cret");
        for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
            round_trip(algorithm, UserSecret::Password("s3cret"));
            round_trip(algorithm, UserSecret::Ha1(&stored));
        }
    }

    #[test]
    fn stored_ha1_missing_algorithm_is_rejected() {
        let mut verifier = verifier();
        let now = at(1_000_000);
        let challenge = &verifier.challenges(now, &mut rng(), false)[1];
        let header = respond(challenge, "alice", "s3cret", "REGISTER", "sip:tcf-1.example", 1, "c1");
        let credentials = parse_authorization(&header).expect("parses");
        let mut stored = StoredHa1::compute("alice", REALM, "s3cret");
        stored.md5 = None;
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", UserSecret::Ha1(&stored), now),
            Verdict::Reject(RejectReason::NoStoredHa1(Algorithm::Md5))
        );
        assert!(!format!("{stored:?}").contains(stored.sha256.as_deref().unwrap_or("-")));
    }

    /// Credentials for `nc` answering a challenge issued by `verifier` at `issued`.
    fn credentials(verifier: &Verifier, issued: SystemTime, password: &str, nc: u32) -> Credentials {
        let challenge = &verifier.challenges(issued, &mut rng(), false)[0];
        let header = respond(challenge, "alice", password, "REGISTER", "sip:tcf-1.example", nc, "c1");
        parse_authorization(&header).expect("parses")
    }

    #[test]
    fn wrong_password_is_rejected() {
        let mut verifier = verifier();
        let credentials = credentials(&verifier, at(1_000), "guess", 1);
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", UserSecret::Password("s3cret"), at(1_001)),
            Verdict::Reject(RejectReason::ResponseMismatch)
        );
        // A wrong method or a changed URI is a mismatch too.
        let mut credentials = self::credentials(&verifier, at(1_000), "s3cret", 1);
        assert_eq!(
            verifier.verify(&credentials, "INVITE", UserSecret::Password("s3cret"), at(1_001)),
            Verdict::Reject(RejectReason::ResponseMismatch)
        );
        credentials.uri = "sip:other.example".to_owned();
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", UserSecret::Password("s3cret"), at(1_001)),
            Verdict::Reject(RejectReason::ResponseMismatch)
        );
    }

    #[test]
    fn uppercase_response_hex_is_accepted() {
        let mut verifier = verifier();
        let mut credentials = credentials(&verifier, at(1_000), "s3cret", 1);
        credentials.response = credentials.response.to_ascii_uppercase();
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", UserSecret::Password("s3cret"), at(1_001)),
            Verdict::Ok
        );
    }

    #[test]
    fn stale_nonce_with_right_password_is_stale() {
        let mut verifier = verifier();
        let credentials = credentials(&verifier, at(1_000), "s3cret", 1);
        let later = at(1_000 + 301);
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", UserSecret::Password("s3cret"), later),
            Verdict::Stale
        );
        // The last second of the lifetime is still valid.
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", UserSecret::Password("s3cret"), at(1_300)),
            Verdict::Ok
        );
        // A stale nonce with a wrong password is no reason to say stale.
        let wrong = self::credentials(&verifier, at(1_000), "guess", 2);
        assert_eq!(
            verifier.verify(&wrong, "REGISTER", UserSecret::Password("s3cret"), later),
            Verdict::Reject(RejectReason::ResponseMismatch)
        );
    }

    #[test]
    fn tampered_nonce_is_invalid() {
        let manager = NonceManager::new(KEY, REALM, Duration::from_secs(300));
        let nonce = manager.issue(at(5_000), &mut rng());
        assert_eq!(nonce.len(), NONCE_LEN);
        assert_eq!(manager.check(&nonce, at(5_000)), NonceStatus::Valid);
        assert_eq!(manager.check(&nonce, at(5_301)), NonceStatus::Stale);
        assert_eq!(manager.check(&nonce, at(5_000 - 31)), NonceStatus::Stale, "far future");
        // Flip each character in turn.
        for index in 0..nonce.len() {
            let mut bytes = nonce.clone().into_bytes();
            bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).expect("ascii");
            assert_eq!(
                manager.check(&tampered, at(5_000)),
                NonceStatus::Invalid,
                "index {index}"
            );
        }
        // Another key, another realm, garbage.
        let other_key = NonceManager::new([8; 32], REALM, Duration::from_secs(300));
        assert_eq!(other_key.check(&nonce, at(5_000)), NonceStatus::Invalid);
        let other_realm = NonceManager::new(KEY, "tcf-2.example", Duration::from_secs(300));
        assert_eq!(other_realm.check(&nonce, at(5_000)), NonceStatus::Invalid);
        for garbage in [
            "",
            "x",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            &"A".repeat(NONCE_LEN),
        ] {
            assert_eq!(manager.check(garbage, at(5_000)), NonceStatus::Invalid);
        }
        assert!(!format!("{manager:?}").contains("7, 7"));
    }

    #[test]
    fn tampered_nonce_in_credentials_is_rejected() {
        let mut verifier = verifier();
        let mut credentials = credentials(&verifier, at(1_000), "s3cret", 1);
        let mut nonce = credentials.nonce.into_bytes();
        nonce[0] = if nonce[0] == b'A' { b'B' } else { b'A' };
        credentials.nonce = String::from_utf8(nonce).expect("ascii");
        assert_eq!(
            verifier.verify(&credentials, "REGISTER", UserSecret::Password("s3cret"), at(1_001)),
            Verdict::Reject(RejectReason::NonceInvalid)
        );
    }

    #[test]
    fn replayed_nc_is_rejected_and_increasing_nc_accepted() {
        let mut verifier = verifier();
        let password = UserSecret::Password("s3cret");
        let first = credentials(&verifier, at(1_000), "s3cret", 1);
        assert_eq!(verifier.verify(&first, "REGISTER", password, at(1_001)), Verdict::Ok);
        assert_eq!(
            verifier.verify(&first, "REGISTER", password, at(1_002)),
            Verdict::Reject(RejectReason::NonceCountReplayed)
        );
        let third = credentials(&verifier, at(1_000), "s3cret", 3);
        assert_eq!(verifier.verify(&third, "REGISTER", password, at(1_003)), Verdict::Ok);
        let second = credentials(&verifier, at(1_000), "s3cret", 2);
        assert_eq!(
            verifier.verify(&second, "REGISTER", password, at(1_004)),
            Verdict::Reject(RejectReason::NonceCountReplayed),
            "going back is a replay"
        );
        let fourth = credentials(&verifier, at(1_000), "s3cret", 4);
        assert_eq!(verifier.verify(&fourth, "REGISTER", password, at(1_005)), Verdict::Ok);
        // Failed attempts do not consume counts.
        let wrong = credentials(&verifier, at(1_000), "guess", 5);
        assert_eq!(
            verifier.verify(&wrong, "REGISTER", password, at(1_006)),
            Verdict::Reject(RejectReason::ResponseMismatch)
        );
        let fifth = credentials(&verifier, at(1_000), "s3cret", 5);
        assert_eq!(verifier.verify(&fifth, "REGISTER", password, at(1_007)), Verdict::Ok);
    }

    #[test]
    fn realm_algorithm_and_qop_policy() {
        let password = UserSecret::Password("s3cret");
        let mut verifier = verifier();
        let mut other_realm = credentials(&verifier, at(1_000), "s3cret", 1);
        other_realm.realm = "evil.example".to_owned();
        assert_eq!(
            verifier.verify(&other_realm, "REGISTER", password, at(1_000)),
            Verdict::Reject(RejectReason::RealmMismatch)
        );

        let mut config = VerifierConfig::new(REALM);
        config.algorithms = vec![Algorithm::Sha256];
        let mut sha_only = Verifier::new(config, KEY);
        let md5_challenge = &verifier.challenges(at(1_000), &mut rng(), false)[1];
        let header = respond(
            md5_challenge,
            "alice",
            "s3cret",
            "REGISTER",
            "sip:tcf-1.example",
            1,
            "c",
        );
        let md5 = parse_authorization(&header).expect("parses");
        assert_eq!(
            sha_only.verify(&md5, "REGISTER", password, at(1_000)),
            Verdict::Reject(RejectReason::AlgorithmNotOffered(Algorithm::Md5))
        );

        // RFC 2069 style: refused by default, accepted when allowed (and then no nc is tracked).
        let mut legacy_challenge = verifier.challenges(at(1_000), &mut rng(), false)[0].clone();
        legacy_challenge.qop = None;
        let header = respond(
            &legacy_challenge,
            "alice",
            "s3cret",
            "REGISTER",
            "sip:tcf-1.example",
            1,
            "c",
        );
        let legacy = parse_authorization(&header).expect("parses");
        assert_eq!(legacy.qop, None);
        assert_eq!(
            verifier.verify(&legacy, "REGISTER", password, at(1_000)),
            Verdict::Reject(RejectReason::QopRequired)
        );
        let mut config = VerifierConfig::new(REALM);
        config.allow_rfc2069 = true;
        let mut lenient = Verifier::new(config, KEY);
        assert_eq!(lenient.verify(&legacy, "REGISTER", password, at(1_000)), Verdict::Ok);
        assert_eq!(lenient.verify(&legacy, "REGISTER", password, at(1_001)), Verdict::Ok);
        assert!(lenient.counts.is_empty());

        let mut incomplete = credentials(&verifier, at(1_000), "s3cret", 1);
        incomplete.cnonce = None;
        assert_eq!(
            verifier.verify(&incomplete, "REGISTER", password, at(1_000)),
            Verdict::Reject(RejectReason::IncompleteQop)
        );
    }

    #[test]
    fn nonce_counts_bounded_under_flood() {
        let lifetime = Duration::from_secs(300);
        let manager = NonceManager::new(KEY, REALM, lifetime);
        let mut counts = NonceCounts::new(100, lifetime);
        let mut rng = rng();
        let first = manager.issue(at(10_000), &mut rng);
        assert!(counts.accept(&first, 1, at(10_000)));
        for index in 0..10_000u64 {
            let now = at(10_000 + index / 100);
            let nonce = manager.issue(now, &mut rng);
            counts.accept(&nonce, 1, now);
            assert!(counts.len() <= 100);
        }
        // The first nonce was evicted; it must not become replayable.
        assert!(!counts.accept(&first, 1, at(10_099)));
        assert_eq!(
            counts.check_and_record(&first, 2, at(10_099)),
            NonceCountCheck::Forgotten
        );
        // A nonce issued after the flood is tracked normally.
        let fresh = manager.issue(at(10_200), &mut rng);
        assert!(counts.accept(&fresh, 1, at(10_200)));
        assert!(!counts.accept(&fresh, 1, at(10_200)));
        assert!(counts.accept(&fresh, 2, at(10_200)));
        // Once everything expires, the table drains on the next insert.
        let late = manager.issue(at(20_000), &mut rng);
        let mut filler = NonceCounts::new(3, lifetime);
        for _ in 0..3 {
            assert!(filler.accept(&manager.issue(at(10_000), &mut rng), 1, at(10_000)));
        }
        assert!(filler.accept(&late, 1, at(20_000)));
        assert_eq!(filler.len(), 1);
    }

    #[test]
    fn nonce_counts_refuse_zero_expired_and_foreign() {
        let lifetime = Duration::from_secs(300);
        let manager = NonceManager::new(KEY, REALM, lifetime);
        let mut counts = NonceCounts::new(10, lifetime);
        let nonce = manager.issue(at(1_000), &mut rng());
        assert!(!counts.accept(&nonce, 0, at(1_000)));
        assert!(!counts.accept(&nonce, 1, at(1_301)));
        assert!(!counts.accept("not-a-nonce", 1, at(1_000)));
        assert!(counts.is_empty());
    }

    #[test]
    fn forgotten_nonce_verdict_is_stale() {
        let mut config = VerifierConfig::new(REALM);
        config.max_tracked_nonces = 1;
        let mut verifier = Verifier::new(config, KEY);
        let password = UserSecret::Password("s3cret");
        let old = credentials(&verifier, at(1_000), "s3cret", 1);
        assert_eq!(verifier.verify(&old, "REGISTER", password, at(1_000)), Verdict::Ok);
        let newer = credentials(&verifier, at(1_010), "s3cret", 1);
        assert_eq!(verifier.verify(&newer, "REGISTER", password, at(1_010)), Verdict::Ok);
        let old_again = credentials(&verifier, at(1_000), "s3cret", 2);
        assert_eq!(
            verifier.verify(&old_again, "REGISTER", password, at(1_011)),
            Verdict::Stale
        );
    }

    #[test]
    fn parse_authorization_tolerates_case_whitespace_and_unknown_params() {
        let value = "  digest   USERNAME = \"al\\\"ice\" ,Realm=\"r\",\tnonce=\"n\" , , uri=\"sip:x\",\r\n \
                     response=\"ab\",ALGORITHM=\"sha-256\", qop=\"auth\", nc=0000000A, cnonce=\"c\", \
                     userhash=false, extension=\"x, y\"";
        let credentials = parse_authorization(value).expect("lenient parse");
        assert_eq!(credentials.username, "al\"ice");
        assert_eq!(credentials.realm, "r");
        assert_eq!(credentials.algorithm, Algorithm::Sha256);
        assert_eq!(credentials.nc, Some(10));
        assert_eq!(credentials.opaque, None);
        // Re-emitting and re-parsing keeps every field.
        assert_eq!(parse_authorization(&credentials.to_header_value()), Ok(credentials));
    }

    #[test]
    fn parse_authorization_rejects_malformed() {
        let syntax = |at, reason| DigestError::Syntax { at, reason };
        let valid = "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"sip:x\", response=\"ab\"";
        assert!(parse_authorization(valid).is_ok());
        let huge = format!("Digest username=\"{}\", realm=\"r\"", "a".repeat(MAX_VALUE_LEN + 1));
        let huge_token = format!("Digest username={}, realm=\"r\"", "a".repeat(MAX_VALUE_LEN + 1));
        let huge_header = format!("{valid}{}", ", x=y".repeat(MAX_HEADER_LEN / 5));
        let many = format!(
            "{valid}{}",
            (0..MAX_PARAMS).map(|i| format!(", p{i}=v")).collect::<String>()
        );
        let cases: Vec<(&str, DigestError)> = vec![
            ("", DigestError::NotDigest),
            ("Basic dXNlcjpwYXNz", DigestError::NotDigest),
            ("username=\"u\"", DigestError::NotDigest),
            ("Digestusername=\"u\"", DigestError::NotDigest),
            ("Digest", syntax(6, "no parameters")),
            ("Digest ,,", syntax(9, "no parameters")),
            ("Digest username=\"u", syntax(16, "unterminated quoted string")),
            ("Digest username=\"u\\", syntax(19, "invalid escape in quoted string")),
            ("Digest username=", syntax(16, "expected a token or quoted string")),
            ("Digest username", syntax(15, "expected '='")),
            ("Digest =x", syntax(7, "expected a parameter name")),
            ("Digest a=b c=d", syntax(11, "expected ',' between parameters")),
            ("Digest a=\"b\"c", syntax(12, "expected ',' between parameters")),
            ("Digest a=\"b\u{1}\"", syntax(12, "control character in quoted string")),
            ("Digest a=\"b\r\n\"", syntax(12, "control character in quoted string")),
            ("Digest a=(b)", syntax(9, "expected a token or quoted string")),
            (
                "Digest username=\"u\", Username=\"v\"",
                DigestError::DuplicateParameter("username".to_owned()),
            ),
            ("Digest x=1, X=2", DigestError::DuplicateParameter("x".to_owned())),
            (
                "Digest realm=\"r\", nonce=\"n\", uri=\"u\", response=\"r\"",
                DigestError::MissingParameter("username"),
            ),
            (
                "Digest username=\"u\", nonce=\"n\", uri=\"u\", response=\"r\"",
                DigestError::MissingParameter("realm"),
            ),
            (
                "Digest username=\"u\", realm=\"r\", uri=\"u\", response=\"r\"",
                DigestError::MissingParameter("nonce"),
            ),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", response=\"r\"",
                DigestError::MissingParameter("uri"),
            ),
            (
                "Digest username=\"u\", realm=\"r\", nonce=\"n\", uri=\"u\"",
                DigestError::MissingParameter("response"),
            ),
            (&huge, DigestError::TooLong("parameter value")),
            (&huge_token, DigestError::TooLong("parameter value")),
            (&huge_header, DigestError::TooLong("header value")),
            (&many, DigestError::TooLong("too many parameters")),
        ];
        for (value, expected) in cases {
            let error = parse_authorization(value).expect_err(value);
            assert_eq!(error, expected, "{value:?}");
            assert!(error.is_malformed());
        }
        let with = |extra: &str| format!("{valid}, {extra}");
        for (extra, expected) in [
            ("qop=auth, nc=00000001", DigestError::MissingParameter("cnonce")),
            ("qop=auth, cnonce=\"c\"", DigestError::MissingParameter("nc")),
            ("qop=auth, cnonce=\"c\", nc=1", DigestError::InvalidNonceCount),
            ("qop=auth, cnonce=\"c\", nc=0000000g", DigestError::InvalidNonceCount),
            ("qop=auth, cnonce=\"c\", nc=+0000001", DigestError::InvalidNonceCount),
            ("qop=auth, cnonce=\"c\", nc=000000001", DigestError::InvalidNonceCount),
            (
                "qop=auth-int, cnonce=\"c\", nc=00000001",
                DigestError::UnsupportedQop("auth-int".to_owned()),
            ),
            (
                "algorithm=MD5-sess",
                DigestError::UnsupportedAlgorithm("MD5-sess".to_owned()),
            ),
            (
                "algorithm=\"SHA-512-256\"",
                DigestError::UnsupportedAlgorithm("SHA-512-256".to_owned()),
            ),
        ] {
            assert_eq!(parse_authorization(&with(extra)), Err(expected), "{extra}");
        }
    }

    #[test]
    fn parse_challenge_rejects_bad_input() {
        assert_eq!(
            parse_challenge("Digest nonce=\"n\""),
            Err(DigestError::MissingParameter("realm"))
        );
        assert_eq!(
            parse_challenge("Digest realm=\"r\""),
            Err(DigestError::MissingParameter("nonce"))
        );
        assert_eq!(
            parse_challenge("Digest realm=\"r\", nonce=\"n\", qop=\"auth-int\""),
            Err(DigestError::UnsupportedQop("auth-int".to_owned()))
        );
        assert_eq!(parse_challenge("Basic realm=\"r\""), Err(DigestError::NotDigest));
        let challenge =
            parse_challenge("Digest realm=\"r\", nonce=\"n\", stale=TRUE, domain=\"sip:a sip:b\"").expect("parses");
        assert!(challenge.stale);
        assert_eq!(challenge.qop, None);
    }

    #[test]
    fn header_values_cannot_inject_lines() {
        let challenge = Challenge::new("r\r\nVia: evil", "n", Algorithm::Md5, false);
        let header = respond(&challenge, "u\r\n", "p", "REGISTER", "sip:x\n", 1, "c");
        assert!(!header.contains('\r') && !header.contains('\n'));
        assert!(!challenge.to_header_value().contains('\n'));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn parsers_never_panic_on_arbitrary_strings(value in ".{0,512}") {
                let _ = parse_authorization(&value);
                let _ = parse_challenge(&value);
            }

            #[test]
            fn parsers_never_panic_on_digest_like_input(
                value in "(?i:digest)[ \t\r\n]{0,2}([a-z]{1,8}[ ]?=[ ]?(\"([^\"\\\\]|\\\\.){0,12}\"?|[A-Za-z0-9-]{0,10})[ ]?,?[ ]?){0,12}"
            ) {
                let _ = parse_authorization(&value);
                let _ = parse_challenge(&value);
            }

            #[test]
            fn nonce_check_never_panics(value in ".{0,80}", seconds in any::<u64>()) {
                let manager = NonceManager::new([1; 32], "r", Duration::from_secs(60));
                let _ = manager.check(&value, UNIX_EPOCH + Duration::from_secs(seconds / 2));
            }

            #[test]
            fn credentials_round_trip(
                username in "\\PC{0,40}",
                uri in "[ -~]{0,60}",
                cnonce in "[ -~]{1,40}",
                nc in 1u32..,
                sha in any::<bool>(),
            ) {
                let algorithm = if sha { Algorithm::Sha256 } else { Algorithm::Md5 };
                let challenge = Challenge::new("realm \"q\" \\", "nonce", algorithm, false);
                let header = respond(&challenge, &username, "pw", "REGISTER", &uri, nc, &cnonce);
                let credentials = parse_authorization(&header).expect("own output parses");
                prop_assert_eq!(&credentials.username, &username);
                prop_assert_eq!(&credentials.uri, &uri);
                prop_assert_eq!(credentials.cnonce.as_deref(), Some(cnonce.as_str()));
                prop_assert_eq!(credentials.nc, Some(nc));
                prop_assert_eq!(&credentials.realm, &challenge.realm);
                prop_assert_eq!(credentials.to_header_value(), header);
            }
        }
    }
}
