//! RFC 3261 §17 transactions, sans-IO, with the RFC 6026 corrections for 2xx responses to INVITE.
//!
//! The layer never parses SIP, reads the clock or touches a socket. The caller (the node's SIP driver) parses
//! each message, extracts a few facts — the [`TransactionKey`] from the top Via and CSeq, the [`Method`] or
//! status code — and hands them over with the raw bytes. The layer answers with [`Output`]s: bytes to
//! (re)transmit, messages it needs built ([`Output::NeedAck`], [`Output::NeedTrying`]) and events for the
//! transaction user (TU, the call-control core).
//!
//! # Pieces
//!
//! - [`TransactionLayer`]: owns many transactions, matches messages to them (§17.1.3, §17.2.3), caps their
//!   number, merges their timers, removes them as they terminate. Most callers need only this.
//! - One state machine per RFC figure, usable alone: [`ClientInvite`] (fig. 5 + RFC 6026 Accepted),
//!   [`ClientNonInvite`] (fig. 6), [`ServerInvite`] (fig. 7 + RFC 6026 Accepted), [`ServerNonInvite`] (fig. 8).
//! - [`Timer`] / [`TimerConfig`]: the RFC timer names and the T1/T2/T4 base intervals.
//!
//! # Drive contract
//!
//! 1. Feed one input with the current time: [`TransactionLayer::handle_input`] for a parsed message or a
//!    transport failure, a TU command ([`TransactionLayer::send_request`], [`TransactionLayer::respond`],
//!    [`TransactionLayer::send_ack`], [`TransactionLayer::send_cancel`]), or
//!    [`TransactionLayer::handle_timeout`] once the deadline has passed.
//! 2. Drain [`TransactionLayer::poll_output`] until it returns `None`. Answer [`Output::NeedAck`] with
//!    `send_ack` and [`Output::NeedTrying`] with `respond(key, 100, ..)` *while draining*, before the next
//!    input or timeout: on reliable transports the ACK's transaction ends at the very next timeout.
//! 3. Ask [`TransactionLayer::poll_timeout`] and sleep until that instant or the next input. Deadlines may
//!    already be due (zero-length timers on reliable transports): call `handle_timeout` right away. Calling it
//!    early is harmless.
//!
//! # Decisions
//!
//! - RFC 6026 is implemented: a 2xx moves an INVITE client transaction to Accepted (Timer M, 64·T1), where
//!   further 2xx — retransmissions or other forks — go to the TU, which sends the ACK for each; an INVITE
//!   server transaction moves to Accepted (Timer L, 64·T1), absorbs INVITE retransmissions, passes ACKs to the
//!   TU and transmits the TU's own 2xx retransmissions. Responses matching no client transaction are dropped
//!   and counted (RFC 6026 §8.9), not passed to the TU.
//! - Keys: RFC 3261 branch keys, plus the RFC 2543 fallback for branches without the magic cookie, keyed by
//!   what the caller supplies: Call-ID, From tag, CSeq number, method and sent-by (see
//!   [`TransactionKey::rfc2543`]).
//! - The layer cannot build messages, so it asks: [`Output::NeedAck`] carries the INVITE and the non-2xx
//!   response (§17.1.1.3 needs both), [`Output::NeedTrying`] the INVITE (§8.2.6).

mod client_invite;
mod client_non_invite;
mod layer;
mod server_invite;
mod server_non_invite;
mod timer;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use client_invite::{ClientInvite, ClientInviteState};
pub use client_non_invite::{ClientNonInvite, ClientNonInviteState};
pub use layer::{CancelMatch, Input, LayerConfig, LayerStats, TransactionLayer};
pub use server_invite::{ServerInvite, ServerInviteState};
pub use server_non_invite::{ServerNonInvite, ServerNonInviteState};
pub use timer::{Timer, TimerConfig, TimerConfigError};

/// The prefix of every RFC 3261 branch parameter (§8.1.1.7); without it a request is matched the RFC 2543 way.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// A hasher for `u64` ids this node numbers itself (transactions, calls): one multiplication
/// instead of SipHash. Only for keys a peer cannot choose, which cannot be made to collide.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the high bits (which hashbrown uses for its control bytes) and the
        // low bits (the bucket) both vary with consecutive ids.
        self.0 = (self.0 ^ id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by ids this node numbers itself (see [`IdHasher`]).
pub type IdMap<V> = std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

/// The request method, as far as the transaction layer cares.
///
/// Method names are case-sensitive (RFC 3261 §7.1): `invite` is an extension method, not INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE: handled by the INVITE machines.
    Invite,
    /// ACK: never a transaction of its own here; matched to an INVITE server transaction or passed to the TU.
    Ack,
    /// CANCEL: a non-INVITE transaction of its own, matched to the INVITE it cancels with
    /// [`TransactionLayer::match_cancel`].
    Cancel,
    /// Any other method (BYE, OPTIONS, REGISTER, MESSAGE, INFO, ...): a plain non-INVITE transaction.
    Other(Arc<str>),
}

impl Method {
    /// Maps a method token to a method; anything but `INVITE`, `ACK` and `CANCEL` is [`Method::Other`].
    pub fn from_token(token: &str) -> Self {
        match token {
            "INVITE" => Self::Invite,
            "ACK" => Self::Ack,
            "CANCEL" => Self::Cancel,
            other => Self::Other(other.into()),
        }
    }

    /// The method token.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Cancel => "CANCEL",
            Self::Other(token) => token,
        }
    }

    /// The method a key is matched on: ACK matches the INVITE it acknowledges (§17.2.3).
    fn for_matching(&self) -> Self {
        match self {
            Self::Ack => Self::Invite,
            other => other.clone(),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What identifies one transaction: built by the caller from the top Via and the CSeq of a message.
///
/// Equality is RFC 3261 matching (§17.1.3 for responses, §17.2.3 for requests): the key of an ACK is the key
/// of the INVITE it acknowledges, since [`TransactionKey::new`] stores the CSeq method ACK as INVITE. A CANCEL
/// keeps its own method, so it opens its own server transaction; [`TransactionLayer::match_cancel`] finds the
/// INVITE it targets. Sent-by is compared ASCII-case-insensitively and without port defaulting: retransmissions,
/// ACKs and CANCELs copy the Via verbatim, so they match.
/// Its text is shared (`Arc<str>`), so that the copies the layer and the transaction user keep cost no
/// allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransactionKey {
    id: KeyId,
    method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyId {
    /// RFC 3261: the branch (with its magic cookie) and the sent-by of the top Via.
    Branch { branch: Arc<str>, sent_by: Arc<str> },
    /// RFC 2543 fallback, for top Vias whose branch lacks the magic cookie.
    Legacy {
        call_id: Arc<str>,
        from_tag: Arc<str>,
        cseq_number: u32,
        sent_by: Arc<str>,
    },
}

/// Why a [`TransactionKey`] could not be built. All are malformed input: the request gets a 400 (or, for the
/// missing cookie, the caller falls back to [`TransactionKey::rfc2543`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The branch does not start with `z9hG4bK`: the sender follows RFC 2543; use [`TransactionKey::rfc2543`].
    #[error("Via branch lacks the RFC 3261 magic cookie")]
    MissingMagicCookie,
    /// The Via sent-by is empty.
    #[error("Via sent-by is empty")]
    EmptySentBy,
}

impl TransactionKey {
    /// The RFC 3261 key: top Via branch (must start with [`MAGIC_COOKIE`]), top Via sent-by (`host[:port]` as
    /// written) and the CSeq method.
    pub fn new(branch: &str, sent_by: &str, method: Method) -> Result<Self, KeyError> {
        if !branch.starts_with(MAGIC_COOKIE) {
            return Err(KeyError::MissingMagicCookie);
        }
        if sent_by.is_empty() {
            return Err(KeyError::EmptySentBy);
        }
        Ok(Self {
            id: KeyId::Branch {
                branch: branch.into(),
                sent_by: lowercase(sent_by),
            },
            method: method.for_matching(),
        })
    }

    /// The RFC 2543 fallback key for requests whose top Via branch lacks the magic cookie.
    ///
    /// RFC 3261 §17.2.3 matches those on Request-URI, tags, Call-ID, CSeq and top Via. This key takes the subset
    /// that is stable across an INVITE, its retransmissions, the ACK for a non-2xx and the CANCEL: Call-ID,
    /// From tag, CSeq number, the CSeq method (ACK stored as INVITE) and the top Via sent-by. The To tag is left
    /// out on purpose, since the ACK carries the tag our response added and the INVITE does not.
    pub fn rfc2543(call_id: &str, from_tag: &str, cseq_number: u32, sent_by: &str, method: Method) -> Self {
        Self {
            id: KeyId::Legacy {
                call_id: call_id.into(),
                from_tag: from_tag.into(),
                cseq_number,
                sent_by: lowercase(sent_by),
            },
            method: method.for_matching(),
        }
    }

    /// The method the key matches on (the CSeq method, with ACK read as INVITE).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The branch parameter, for RFC 3261 keys.
    pub fn branch(&self) -> Option<&str> {
        match &self.id {
            KeyId::Branch { branch, .. } => Some(branch),
            KeyId::Legacy { .. } => None,
        }
    }

    /// The top Via sent-by, lowercased.
    pub fn sent_by(&self) -> &str {
        match &self.id {
            KeyId::Branch { sent_by, .. } | KeyId::Legacy { sent_by, .. } => sent_by,
        }
    }

    /// Whether this is an RFC 3261 (magic cookie) key rather than the RFC 2543 fallback.
    pub fn is_rfc3261(&self) -> bool {
        matches!(self.id, KeyId::Branch { .. })
    }

    /// The same transaction identity with another method: the INVITE a CANCEL targets, or the CANCEL for an
    /// INVITE (both share the top Via, §9.1).
    pub fn with_method(&self, method: Method) -> Self {
        Self {
            id: self.id.clone(),
            method: method.for_matching(),
        }
    }
}

/// `text` ASCII-lowercased, shared; copied once (not lowercased into a `String` first) when it is
/// lowercase already, as addresses usually are.
fn lowercase(text: &str) -> Arc<str> {
    if text.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Arc::from(text.to_ascii_lowercase())
    } else {
        Arc::from(text)
    }
}

impl fmt::Display for TransactionKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            KeyId::Branch { branch, sent_by } => write!(formatter, "{branch}/{sent_by}/{}", self.method),
            KeyId::Legacy {
                call_id,
                from_tag,
                cseq_number,
                sent_by,
            } => write!(
                formatter,
                "rfc2543:{call_id}/{from_tag}/{cseq_number}/{sent_by}/{}",
                self.method
            ),
        }
    }
}

/// Which side of a transaction: client transactions send requests, server transactions send responses.
///
/// Client and server transactions live in separate tables, so a request looping back to us (same branch)
/// never gets confused with the transaction that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A transaction we created with `send_request`.
    Client,
    /// A transaction a received request created.
    Server,
}

/// What the layer (or a single machine) asks of its caller. Drain until empty after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<D> {
    /// Hand `bytes` to the transport for `destination`. If the transport fails, report
    /// [`Input::TransportError`] with this `role` and `key`.
    Transmit {
        /// The side of the transaction sending.
        role: Role,
        /// The transaction sending.
        key: TransactionKey,
        /// The serialized message, as the caller supplied it.
        bytes: Bytes,
        /// Where to send: the request's destination, or the `reply_to` a request arrived with.
        destination: D,
    },
    /// A client INVITE transaction got a 300–699 final response and must ACK it (§17.1.1.3). Build the ACK
    /// from `request` (Request-URI, Call-ID, From, CSeq number, top Via, Route) and `response` (To with tag),
    /// then call `send_ack(key, ack)`. Asked again if the response is retransmitted before the ACK is given.
    NeedAck {
        /// The client INVITE transaction.
        key: TransactionKey,
        /// The INVITE as first sent.
        request: Bytes,
        /// The final response to acknowledge.
        response: Bytes,
    },
    /// An INVITE server transaction has had no TU response for 200 ms: build a 100 (Trying) from `request`
    /// (§8.2.6; no To tag) and call `respond(key, 100, trying)`.
    NeedTrying {
        /// The INVITE server transaction.
        key: TransactionKey,
        /// The INVITE.
        request: Bytes,
    },
    /// Something for the transaction user.
    ToTransactionUser(TransactionUserEvent),
}

/// What a transaction tells its user (the call-control core).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionUserEvent {
    /// A new request created a server transaction: answer it with `respond`. Retransmissions never show up
    /// again. For a CANCEL, see [`TransactionLayer::match_cancel`].
    NewRequest {
        /// The new server transaction.
        key: TransactionKey,
        /// The request method.
        method: Method,
        /// The request.
        bytes: Bytes,
    },
    /// An ACK for the TU: one matching no transaction (the ACK for a 2xx has its own branch, §13.2.2.4), or
    /// one matching an INVITE server transaction in the RFC 6026 Accepted state (RFC 2543 peers). Goes to the
    /// dialog layer, which stops retransmitting its 2xx.
    Ack {
        /// The ACK's key (method INVITE, see [`TransactionKey`]).
        key: TransactionKey,
        /// The ACK.
        bytes: Bytes,
    },
    /// A response for a client transaction: every provisional, the final, and (INVITE, RFC 6026) every further
    /// 2xx, each of which the TU must ACK itself. Retransmitted non-2xx finals are absorbed.
    Response {
        /// The client transaction.
        key: TransactionKey,
        /// The status code.
        status: u16,
        /// The response.
        bytes: Bytes,
    },
    /// The transaction timed out. Client (Timer B or F): no final response came; act as on a 408 (§8.1.3.1).
    /// Server (Timer H): the ACK for our non-2xx final response never came.
    Timeout {
        /// The side that timed out.
        role: Role,
        /// The transaction.
        key: TransactionKey,
    },
    /// The transport failed to deliver for this transaction; it is over. Clients act as on a 503 (§8.1.3.1).
    TransportError {
        /// The side that failed.
        role: Role,
        /// The transaction.
        key: TransactionKey,
    },
    /// The transaction reached Terminated and is gone; its key may be reused. Always the last event for a key.
    Terminated {
        /// The side that ended.
        role: Role,
        /// The transaction.
        key: TransactionKey,
    },
}

/// Why a TU command or an input was refused. `Overloaded` is a resource limit; `MethodMismatch` is malformed
/// input; the rest are bugs in the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransactionError {
    /// The live-transaction cap is reached: answer a new request with 503 (statelessly), or treat an outgoing
    /// one as failed with 503.
    #[error("too many live transactions")]
    Overloaded,
    /// No live transaction has this key; it may have terminated already.
    #[error("no such transaction")]
    UnknownTransaction,
    /// A client transaction with this key is still live: the caller reused a branch.
    #[error("a client transaction with this key already exists")]
    DuplicateKey,
    /// The method given does not match the key's CSeq method (malformed request: 400).
    #[error("request method {method} does not match the CSeq method of its key")]
    MethodMismatch {
        /// The method given.
        method: Method,
    },
    /// ACK is not sent through a client transaction: the one for a non-2xx comes from `NeedAck`, the one for a
    /// 2xx is the TU's own and goes straight to the transport.
    #[error("ACK does not create a client transaction")]
    AckIsNotATransaction,
    /// A status code outside 100–699.
    #[error("invalid status code {0}")]
    InvalidStatus(u16),
    /// The transaction is not in a state that allows this: a second final response, a CANCEL before any
    /// provisional response (§9.1) or after the final one, an ACK before the final response.
    #[error("not allowed in state {state}")]
    WrongState {
        /// The state the transaction is in.
        state: &'static str,
    },
}

/// Whether `status` is a valid SIP status code.
fn is_valid_status(status: u16) -> bool {
    (100..=699).contains(&status)
}

/// Queues a transmission.
fn transmit<D>(out: &mut VecDeque<Output<D>>, role: Role, key: &TransactionKey, bytes: Bytes, destination: D) {
    out.push_back(Output::Transmit {
        role,
        key: key.clone(),
        bytes,
        destination,
    });
}

/// Queues an event for the TU.
fn notify<D>(out: &mut VecDeque<Output<D>>, event: TransactionUserEvent) {
    out.push_back(Output::ToTransactionUser(event));
}
