//! RFC 3261 §12 dialogs, sans-IO: dialog state from the dialog-creating exchange, checks on in-dialog
//! requests and responses, and the headers of the requests a dialog sends.
//!
//! A dialog is the peer-to-peer relationship between two user agents that lasts for some time: it
//! orders the requests between them (CSeq) and routes them (remote target, route set). Each TCF hop
//! of a single or group call is a back-to-back user agent, so it owns one [`Dialog`] per call leg,
//! kept in a [`Dialogs`] table.
//!
//! Like the rest of [`crate::sip`], the module never reads a clock, opens a socket or draws a random
//! number: tags and branches come from the caller, and outgoing requests come back as
//! [`MessageBuilder`]s to finish (extra headers, body) and hand to the transaction layer.
//!
//! # Use
//!
//! Requests reach the dialog layer after the transaction layer
//! ([`crate::sip::transaction::TransactionLayer`]) has absorbed retransmissions, so a request whose
//! CSeq equals the last one seen is a new request reusing the number, not a retransmission.
//!
//! ```text
//! request from the transaction layer:
//!     dialogs.find(&request)                 -> dialog.check_request(&request)
//!                                               Ok: act on it; Err(error): answer error.status()
//!     no dialog, is_in_dialog(&request)      -> 481 (an ACK is dropped: it is never answered)
//!     no dialog, INVITE/SUBSCRIBE/REFER      -> on sending a 1xx/2xx with our To tag:
//!                                               Dialog::uas(&request, tag, contact), dialogs.insert
//! response to a request we sent:
//!     dialogs.find(&response)                -> dialog.check_response(&response)
//!     no dialog, 101-299 with a To tag to    -> Dialog::uac(&request, &response), dialogs.insert
//!     our INVITE/SUBSCRIBE/REFER                (each fork's To tag is a dialog of its own)
//! sending in a dialog:
//!     dialog.request(Method::Bye, ...)       -> add headers and body, build, send
//!     2xx to our INVITE                      -> dialog.ack_for(cseq, ...)
//! ```
//!
//! # What changes the state
//!
//! - [`Dialog::uas`]: Early; remote CSeq = the request's; route set = its Record-Route as received
//!   (§12.1.1).
//! - [`Dialog::uac`]: Early with a 101–199, Confirmed with a 2xx; local CSeq = the request's; route set
//!   = the response's Record-Route reversed (§12.1.2).
//! - [`Dialog::confirm`] (UAC: the 2xx received; UAS: the 2xx sent): Early → Confirmed; a UAC also
//!   takes the remote target from the 2xx Contact and recomputes the route set from its Record-Route
//!   (§13.2.2.4).
//! - [`Dialog::check_request`]: remote CSeq raised (not by ACK or CANCEL); a target refresh with a
//!   Contact replaces the remote target (§12.2.2).
//! - [`Dialog::check_response`]: a 2xx to a target refresh with a Contact replaces the remote target,
//!   a 408 or 481 terminates (§12.2.1.2); for an early UAC dialog, the 2xx to the creating request
//!   confirms and a final non-2xx to it terminates.
//! - [`Dialog::request`]: local CSeq + 1. [`Dialog::ack_for`]: nothing.
//! - [`Dialog::terminate`]: the state becomes Terminated.
//!
//! # Decisions
//!
//! - **Routing.** Loose routing fully; strict routing as §12.2.1.1 says: when the first route lacks
//!   `lr`, it becomes the Request-URI (without URI headers and the `method` parameter, which a
//!   Request-URI may not carry) and the remote target is appended as the last Route. The route set
//!   is fixed once the dialog is confirmed; in-dialog Record-Route headers are ignored.
//! - **Remote target.** The first Contact URI. A provisional response without Contact (common from
//!   terminals) still creates an early dialog, targeting the Request-URI until the 2xx Contact arrives.
//!   A target refresh is INVITE, UPDATE (RFC 3311), SUBSCRIBE or NOTIFY (RFC 6665).
//! - **CSeq.** An incoming CSeq lower than *or equal to* the remote CSeq is out of order (500), except
//!   for ACK and CANCEL, which carry the number of the request they belong to. A UAS dialog numbers its
//!   own requests from 1 (§8.1.1.5 allows any value below 2³¹). ACK and CANCEL are not built by
//!   [`Dialog::request`]: the 2xx ACK comes from [`Dialog::ack_for`] (§13.2.2.4); a CANCEL copies the
//!   request it cancels (§9.1: same branch, same To, which for an initial INVITE has no tag), so it is
//!   built from that request, not from dialog state.
//! - **Null tags.** A From without a tag (an RFC 2543 peer) is a remote tag of `""`, and so is the To of
//!   a 2xx without a tag (§12.1.1, §12.1.2); a provisional response without a To tag creates no dialog.
//! - **Secure flag.** Set when the Request-URI of the creating request is a SIPS URI: a SIPS
//!   Request-URI is only sent over TLS, the transport half of the §12.1 rule, which this layer does
//!   not see.
//! - **Bounds.** A route set holds at most [`MAX_ROUTE_SET`] entries; a [`Dialogs`] table at most its
//!   `max_dialogs`.
//! - **Robustness.** Nothing here panics on received data: no indexing, `unwrap` or `expect` (see the
//!   lint line below), fuzzed by the property tests at the end of the file.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![warn(missing_docs)]

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::sip::builder::{decimal, MessageBuilder};
use crate::sip::headers::{ContactList, HeaderError, HeaderName, NameAddr};
use crate::sip::message::{FirstContact, Message, Method};
use crate::sip::syntax::{is_token, substr, unfold};
use crate::sip::uri::Uri;

/// Record-Route entries a dialog keeps at most. Real paths have a handful of proxies; the cap keeps a
/// hostile response from making every dialog in a full table carry kilobytes of routes.
pub const MAX_ROUTE_SET: usize = 32;

// ---------------------------------------------------------------------------------------------
// Identity, role, state
// ---------------------------------------------------------------------------------------------

/// What identifies a dialog at this user agent (§12): Call-ID, our tag and the peer's tag. The same
/// dialog has the two tags swapped at the other end.
///
/// Compared byte for byte, as RFC 3261 compares Call-IDs; a null tag (RFC 2543 peer) is `""`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// The Call-ID.
    pub call_id: String,
    /// Our tag: the From tag of the requests we send, the To tag of those we receive.
    pub local_tag: String,
    /// The peer's tag.
    pub remote_tag: String,
}

impl DialogId {
    /// A dialog id from its parts.
    pub fn new(call_id: impl Into<String>, local_tag: impl Into<String>, remote_tag: impl Into<String>) -> Self {
        Self {
            call_id: call_id.into(),
            local_tag: local_tag.into(),
            remote_tag: remote_tag.into(),
        }
    }

    /// The id of the dialog a *received* message belongs to (§12.2.2): for a request, the To tag is
    /// ours and the From tag the peer's; for a response to a request we sent, the From tag is ours and
    /// the To tag the peer's. `None` when the Call-ID is unusable or our tag is missing (a request
    /// outside any dialog). A missing peer tag is the null tag `""`.
    pub fn of_received(message: &Message) -> Option<Self> {
        let call_id = message.call_id().ok()?;
        let (local, remote) = if message.is_request() {
            (message.to_tag().ok()?, message.from_tag().ok()?)
        } else {
            (message.from_tag().ok()?, message.to_tag().ok()?)
        };
        Some(Self::new(call_id, local?, remote.unwrap_or("")))
    }
}

/// Which side of the dialog-creating request this user agent was on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// We sent the dialog-creating request.
    Uac,
    /// We received it.
    Uas,
}

/// The dialog state of §12: early until a 2xx, confirmed after, terminated at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DialogState {
    /// Created by a provisional response with a To tag; no 2xx yet.
    Early,
    /// A 2xx has been sent (UAS) or received (UAC).
    Confirmed,
    /// Ended by BYE, a failure of the creating request, or a 408/481 in the dialog.
    Terminated,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a dialog could not be created, confirmed or updated from a message.
///
/// [`DialogError::InvalidHeader`], [`DialogError::MissingTag`] and [`DialogError::TooManyRoutes`] are
/// malformed input (answer 400 to a request, ignore a response); [`DialogError::AlreadyInDialog`],
/// [`DialogError::Mismatch`] and [`DialogError::Terminated`] are messages that do not fit the dialog;
/// the rest are caller bugs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialogError {
    /// A header field the dialog needs (Call-ID, From, To, CSeq, Contact, Record-Route) is missing or
    /// malformed, or a Record-Route entry or a tag is not what RFC 3261 allows there.
    #[error("{name} unusable for a dialog: {error}")]
    InvalidHeader {
        /// The header field.
        name: HeaderName,
        /// What is wrong with it.
        error: HeaderError,
    },
    /// A From or To lacks the tag the dialog id needs: the From of our request, or the To of a
    /// provisional response (which then creates no dialog).
    #[error("{0} lacks a tag")]
    MissingTag(HeaderName),
    /// The Record-Route holds more than [`MAX_ROUTE_SET`] entries.
    #[error("more than {MAX_ROUTE_SET} Record-Route entries")]
    TooManyRoutes,
    /// The request's To already has a tag: it is an in-dialog request, which creates no dialog.
    #[error("the request already belongs to a dialog")]
    AlreadyInDialog,
    /// The response does not answer the request, or does not belong to this dialog: Call-ID, tags or
    /// CSeq differ, or it is not the 2xx to the dialog-creating request.
    #[error("the response does not belong to this request or dialog")]
    Mismatch,
    /// The dialog is terminated.
    #[error("the dialog is terminated")]
    Terminated,
    /// The method cannot create a dialog (only INVITE, SUBSCRIBE and REFER do), or the response status
    /// cannot (only 101 to 299 do).
    #[error("not a dialog-creating request or response")]
    NotDialogCreating,
    /// A response was given where a request belongs.
    #[error("expected a request")]
    NotARequest,
    /// A request was given where a response belongs.
    #[error("expected a response")]
    NotAResponse,
    /// Our tag is empty or not a `token`.
    #[error("invalid local tag")]
    InvalidLocalTag,
    /// Our Contact does not parse as a name-addr or addr-spec.
    #[error("invalid local Contact")]
    InvalidLocalContact,
}

/// Why an in-dialog request was refused by [`Dialog::check_request`]; [`InDialogError::status`] gives
/// the response to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InDialogError {
    /// The CSeq is not above the highest one received (and the method is not ACK or CANCEL): answer
    /// 500 (§12.2.2).
    #[error("CSeq {received} is not above {remote}")]
    OutOfOrder {
        /// The request's CSeq number.
        received: u32,
        /// The highest CSeq number received so far in the dialog.
        remote: u32,
    },
    /// The request's Call-ID or tags are not this dialog's: answer 481.
    #[error("the request belongs to another dialog")]
    NotThisDialog,
    /// The dialog is terminated: answer 481.
    #[error("the dialog is terminated")]
    Terminated,
    /// The CSeq, or the Contact of a target refresh request, is missing or malformed: answer 400.
    #[error("{name} malformed: {error}")]
    Malformed {
        /// The header field.
        name: HeaderName,
        /// What is wrong with it.
        error: HeaderError,
    },
    /// A response was given (a caller bug): nothing to answer.
    #[error("expected a request")]
    NotARequest,
}

impl InDialogError {
    /// The status code and reason phrase to answer the request with; `None` when there is nothing to
    /// answer. An ACK is never answered, whatever this says.
    pub fn status(&self) -> Option<(u16, &'static str)> {
        match self {
            Self::OutOfOrder { .. } => Some((500, "Server Internal Error")),
            Self::NotThisDialog | Self::Terminated => Some((481, "Call/Transaction Does Not Exist")),
            Self::Malformed { .. } => Some((400, "Bad Request")),
            Self::NotARequest => None,
        }
    }
}

/// Why [`Dialog::request`] built nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The dialog is terminated.
    #[error("the dialog is terminated")]
    Terminated,
    /// ACK and CANCEL reuse the CSeq of their request: use [`Dialog::ack_for`], and build a CANCEL from
    /// the request it cancels.
    #[error("ACK and CANCEL take the CSeq of the request they belong to")]
    AckOrCancel,
    /// The local CSeq reached 2³²−1: the dialog cannot send another request.
    #[error("local CSeq exhausted")]
    CSeqExhausted,
}

/// Why [`Dialogs::insert`] refused a dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InsertError {
    /// The table holds `max_dialogs` dialogs: refuse the call (503) or end another first.
    #[error("dialog table full")]
    Full,
    /// A dialog with this id is already in the table.
    #[error("dialog already present")]
    Duplicate,
}

// ---------------------------------------------------------------------------------------------
// Dialog
// ---------------------------------------------------------------------------------------------

/// One route set entry: a Record-Route value with its URI and routing kind.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    /// The name-addr as it goes into a Route header field, all parameters kept.
    value: String,
    /// The URI alone.
    uri: String,
    /// True when the URI has `lr` (a loose router, RFC 3261); false for a strict (RFC 2543) router.
    loose: bool,
}

/// The state of one dialog (§12.1) and the rules for messages in it (§12.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    id: DialogId,
    role: Role,
    state: DialogState,
    local_uri: String,
    remote_uri: String,
    local_cseq: Option<u32>,
    remote_cseq: Option<u32>,
    remote_target: String,
    route_set: Vec<Route>,
    secure: bool,
    local_contact: String,
    /// CSeq number and method of the dialog-creating request: its 2xx confirms an early UAC dialog.
    origin_cseq: u32,
    origin_method: Method<'static>,
}

impl Dialog {
    /// Creates the dialog of a UAS (§12.1.1) from a received INVITE, SUBSCRIBE or REFER and the To tag
    /// of our dialog-creating response (a 101–199 with a tag or a 2xx), in the Early state: call
    /// [`Dialog::confirm`] with the 2xx when sending it. `local_contact` is our Contact (the one in
    /// that response), sent again in target refresh requests.
    pub fn uas(request: &Message, local_tag: &str, local_contact: &str) -> Result<Dialog, DialogError> {
        let method = request.method().ok_or(DialogError::NotARequest)?;
        let origin_method = dialog_creating(method).ok_or(DialogError::NotDialogCreating)?;
        if local_tag.is_empty() || !local_tag.bytes().all(is_token) {
            return Err(DialogError::InvalidLocalTag);
        }
        let local_contact = NameAddr::parse(local_contact.as_bytes())
            .map(|address| name_addr_value(&address, false))
            .map_err(|_| DialogError::InvalidLocalContact)?;
        let call_id = request.call_id().map_err(invalid(HeaderName::CallId))?;
        let from = request.from().map_err(invalid(HeaderName::From))?;
        let to = request.to().map_err(invalid(HeaderName::To))?;
        if to.tag().is_some() {
            return Err(DialogError::AlreadyInDialog);
        }
        let remote_tag = checked_tag(from.tag(), HeaderName::From)?;
        let cseq = request.cseq().map_err(invalid(HeaderName::CSeq))?;
        let remote_target = first_contact_uri(request)?.ok_or(DialogError::InvalidHeader {
            name: HeaderName::Contact,
            error: HeaderError::Missing,
        })?;
        Ok(Dialog {
            id: DialogId::new(call_id, local_tag, remote_tag),
            role: Role::Uas,
            state: DialogState::Early,
            local_uri: name_addr_value(&to, true),
            remote_uri: name_addr_value(&from, true),
            local_cseq: None,
            remote_cseq: Some(cseq.number),
            remote_target,
            route_set: route_set(request)?,
            secure: has_sips_request_uri(request),
            local_contact,
            origin_cseq: cseq.number,
            origin_method,
        })
    }

    /// Creates the dialog of a UAC (§12.1.2) from our INVITE, SUBSCRIBE or REFER and a response to it
    /// that creates a dialog: a 101–199 with a To tag (Early) or a 2xx (Confirmed). Our Contact is read
    /// from the request. Each forked response with its own To tag makes a dialog of its own.
    pub fn uac(request: &Message, response: &Message) -> Result<Dialog, DialogError> {
        let method = request.method().ok_or(DialogError::NotARequest)?;
        let origin_method = dialog_creating(method).ok_or(DialogError::NotDialogCreating)?;
        let status = response.status().ok_or(DialogError::NotAResponse)?;
        let state = match status {
            101..=199 => DialogState::Early,
            200..=299 => DialogState::Confirmed,
            _ => return Err(DialogError::NotDialogCreating),
        };
        let call_id = request.call_id().map_err(invalid(HeaderName::CallId))?;
        let from = request.from().map_err(invalid(HeaderName::From))?;
        let to = request.to().map_err(invalid(HeaderName::To))?;
        let local_tag = from.tag().ok_or(DialogError::MissingTag(HeaderName::From))?;
        let local_tag = checked_tag(Some(local_tag), HeaderName::From)?;
        let cseq = request.cseq().map_err(invalid(HeaderName::CSeq))?;

        let response_to_tag = response.to_tag().map_err(invalid(HeaderName::To))?;
        let remote_tag = match (response_to_tag, state) {
            (None, DialogState::Early) => return Err(DialogError::MissingTag(HeaderName::To)),
            (tag, _) => checked_tag(tag, HeaderName::To)?,
        };
        let answers = response.call_id().is_ok_and(|id| id == call_id)
            && response.from_tag().is_ok_and(|tag| tag == Some(local_tag))
            && response
                .cseq()
                .is_ok_and(|answered| answered.number == cseq.number && answered.method == method);
        if !answers {
            return Err(DialogError::Mismatch);
        }

        let remote_target = match first_contact_uri(response)? {
            Some(uri) => uri,
            None if state == DialogState::Early => request
                .request_uri()
                .and_then(Result::ok)
                .map(|uri| uri.as_str().to_owned())
                .ok_or(DialogError::InvalidHeader {
                    name: HeaderName::Contact,
                    error: HeaderError::Missing,
                })?,
            None => {
                return Err(DialogError::InvalidHeader {
                    name: HeaderName::Contact,
                    error: HeaderError::Missing,
                })
            }
        };
        let mut routes = route_set(response)?;
        routes.reverse();
        let local_contact = match request.contacts().map_err(invalid(HeaderName::Contact))? {
            ContactList::Addresses(contacts) => contacts
                .first()
                .map(|contact| name_addr_value(contact.address(), false)),
            ContactList::Star => None,
        }
        .ok_or(DialogError::InvalidLocalContact)?;
        Ok(Dialog {
            id: DialogId::new(call_id, local_tag, remote_tag),
            role: Role::Uac,
            state,
            local_uri: name_addr_value(&from, true),
            remote_uri: name_addr_value(&to, true),
            local_cseq: Some(cseq.number),
            remote_cseq: None,
            remote_target,
            route_set: routes,
            secure: has_sips_request_uri(request),
            local_contact,
            origin_cseq: cseq.number,
            origin_method,
        })
    }

    // ---- state ---------------------------------------------------------------------------------

    /// The dialog id.
    pub fn id(&self) -> &DialogId {
        &self.id
    }

    /// Whether we sent (UAC) or received (UAS) the dialog-creating request.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Early, Confirmed or Terminated.
    pub fn state(&self) -> DialogState {
        self.state
    }

    /// Our address (name-addr without tag): the From of the requests we send.
    pub fn local_uri(&self) -> &str {
        &self.local_uri
    }

    /// The peer's address (name-addr without tag): the To of the requests we send.
    pub fn remote_uri(&self) -> &str {
        &self.remote_uri
    }

    /// The CSeq number of the last request we sent in the dialog (not counting ACK); `None` for a UAS
    /// that has sent none yet.
    pub fn local_cseq(&self) -> Option<u32> {
        self.local_cseq
    }

    /// The highest CSeq number received in the dialog; `None` for a UAC that has received no request.
    pub fn remote_cseq(&self) -> Option<u32> {
        self.remote_cseq
    }

    /// The peer's Contact URI: the Request-URI of our requests (loose routing).
    pub fn remote_target(&self) -> &str {
        &self.remote_target
    }

    /// The route set, first hop first, as the Route values our requests carry (loose routing).
    pub fn route_set(&self) -> impl Iterator<Item = &str> + '_ {
        self.route_set.iter().map(|route| route.value.as_str())
    }

    /// The URI to resolve (RFC 3263) for sending our requests: the first route, or the remote target
    /// when the route set is empty (§8.1.2).
    pub fn next_hop(&self) -> &str {
        self.route_set
            .first()
            .map_or(self.remote_target.as_str(), |route| route.uri.as_str())
    }

    /// True when the dialog-creating request had a SIPS Request-URI: requests in the dialog must go
    /// over TLS and use SIPS URIs.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// Our Contact, sent in target refresh requests.
    pub fn local_contact(&self) -> &str {
        &self.local_contact
    }

    /// Ends the dialog: after a BYE was sent or received, or the creating request failed.
    pub fn terminate(&mut self) {
        self.state = DialogState::Terminated;
    }

    /// Moves an early dialog to Confirmed with the 2xx to the dialog-creating request: for a UAC the
    /// 2xx received, which also gives the remote target (its Contact) and the final route set (its
    /// Record-Route, reversed, §13.2.2.4); for a UAS the 2xx sent. A 2xx for an already confirmed
    /// dialog (a retransmission, to be ACKed again) changes nothing.
    pub fn confirm(&mut self, response: &Message) -> Result<(), DialogError> {
        let status = response.status().ok_or(DialogError::NotAResponse)?;
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        // A UAC receives the 2xx (our tag in From); a UAS sends it (our tag in To).
        let ours_in_to = self.role == Role::Uas;
        if !(200..=299).contains(&status) || !self.answers_origin(response) || !self.matches(response, ours_in_to) {
            return Err(DialogError::Mismatch);
        }
        if self.state == DialogState::Confirmed {
            return Ok(());
        }
        if self.role == Role::Uac {
            let remote_target = first_contact_uri(response)?.ok_or(DialogError::InvalidHeader {
                name: HeaderName::Contact,
                error: HeaderError::Missing,
            })?;
            let mut routes = route_set(response)?;
            routes.reverse();
            self.remote_target = remote_target;
            self.route_set = routes;
        }
        self.state = DialogState::Confirmed;
        Ok(())
    }

    /// [`Dialog::confirm`] for a UAS sending the 2xx (`status`) to the dialog-creating request,
    /// built from that request and the dialog's local tag ([`crate::sip::response_to`],
    /// [`crate::sip::response_to_from`]): such a response answers the request and matches the
    /// dialog by construction, so it is not parsed again to check. Fails for a UAC dialog (which
    /// must read the received 2xx), a non-2xx status and a terminated dialog.
    pub fn confirm_sent(&mut self, status: u16) -> Result<(), DialogError> {
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        if self.role != Role::Uas || !(200..=299).contains(&status) {
            return Err(DialogError::Mismatch);
        }
        self.state = DialogState::Confirmed;
        Ok(())
    }

    // ---- received messages ----------------------------------------------------------------------

    /// Checks a received in-dialog request (§12.2.2) and updates the dialog from it: records its CSeq
    /// as the remote CSeq, and for a target refresh request (INVITE, UPDATE, SUBSCRIBE, NOTIFY) with a
    /// Contact takes that Contact as the remote target. Nothing changes when it fails. ACK and CANCEL
    /// are accepted whatever their CSeq and change nothing.
    pub fn check_request(&mut self, request: &Message) -> Result<(), InDialogError> {
        let method = request.method().ok_or(InDialogError::NotARequest)?;
        if self.state == DialogState::Terminated {
            return Err(InDialogError::Terminated);
        }
        if !self.matches(request, true) {
            return Err(InDialogError::NotThisDialog);
        }
        let number = request
            .cseq()
            .map_err(|error| InDialogError::Malformed {
                name: HeaderName::CSeq,
                error,
            })?
            .number;
        if matches!(method, Method::Ack | Method::Cancel) {
            return Ok(());
        }
        if let Some(remote) = self.remote_cseq {
            if number <= remote {
                return Err(InDialogError::OutOfOrder {
                    received: number,
                    remote,
                });
            }
        }
        let remote_target = if is_target_refresh(method) {
            first_contact_uri(request).map_err(|error| match error {
                DialogError::InvalidHeader { name, error } => InDialogError::Malformed { name, error },
                _ => InDialogError::Malformed {
                    name: HeaderName::Contact,
                    error: HeaderError::Syntax,
                },
            })?
        } else {
            None
        };
        self.remote_cseq = Some(number);
        if let Some(remote_target) = remote_target {
            self.remote_target = remote_target;
        }
        Ok(())
    }

    /// Updates the dialog from a received response to a request we sent in it (§12.2.1.2): a 2xx to a
    /// target refresh request with a Contact replaces the remote target; a 408 or 481 terminates the
    /// dialog. For an early UAC dialog, the response to the dialog-creating request is handled as well:
    /// a 2xx confirms ([`Dialog::confirm`]), a final non-2xx terminates. Nothing changes when it fails.
    pub fn check_response(&mut self, response: &Message) -> Result<(), DialogError> {
        let status = response.status().ok_or(DialogError::NotAResponse)?;
        if self.state == DialogState::Terminated {
            return Err(DialogError::Terminated);
        }
        if !self.matches(response, false) {
            return Err(DialogError::Mismatch);
        }
        let cseq = response.cseq().map_err(invalid(HeaderName::CSeq))?;
        if self.role == Role::Uac && self.state == DialogState::Early && self.answers_origin(response) {
            return match status {
                200..=299 => self.confirm(response),
                300..=699 => {
                    self.terminate();
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        match status {
            408 | 481 => self.terminate(),
            200..=299 if is_target_refresh(cseq.method) => {
                if let Some(remote_target) = first_contact_uri(response)? {
                    self.remote_target = remote_target;
                }
            }
            _ => {}
        }
        Ok(())
    }

    // ---- requests we send -----------------------------------------------------------------------

    /// Starts a request in the dialog (§12.2.1.1) with the next local CSeq: Request-URI and Route from
    /// the remote target and route set, To with the remote tag, From with ours, Call-ID, CSeq,
    /// Max-Forwards 70, a Via `SIP/2.0/{transport} {via_sent_by};branch={branch};rport`, and our
    /// Contact for target refresh requests. Add the other headers and the body, then build.
    pub fn request(
        &mut self,
        method: Method<'_>,
        branch: &str,
        via_sent_by: &str,
        transport: &str,
    ) -> Result<MessageBuilder, RequestError> {
        if self.state == DialogState::Terminated {
            return Err(RequestError::Terminated);
        }
        if matches!(method, Method::Ack | Method::Cancel) {
            return Err(RequestError::AckOrCancel);
        }
        let number = match self.local_cseq {
            None => 1,
            Some(last) => last.checked_add(1).ok_or(RequestError::CSeqExhausted)?,
        };
        self.local_cseq = Some(number);
        Ok(self.build(method, number, branch, via_sent_by, transport))
    }

    /// Starts the ACK for a 2xx to an INVITE (§13.2.2.4): built like any in-dialog request, with a new
    /// `branch` and the INVITE's CSeq number `invite_cseq`; the local CSeq does not change. The ACK
    /// carries the INVITE's credentials and the SDP answer when the 2xx held the offer: the caller adds
    /// them.
    #[must_use]
    pub fn ack_for(&self, invite_cseq: u32, branch: &str, via_sent_by: &str, transport: &str) -> MessageBuilder {
        self.build(Method::Ack, invite_cseq, branch, via_sent_by, transport)
    }

    fn build(
        &self,
        method: Method<'_>,
        number: u32,
        branch: &str,
        via_sent_by: &str,
        transport: &str,
    ) -> MessageBuilder {
        let strict_first = self.route_set.first().filter(|route| !route.loose);
        let request_uri = match strict_first {
            Some(route) => request_uri_form(&route.uri),
            None => request_uri_form(&self.remote_target),
        };
        let mut builder = MessageBuilder::request(method, &request_uri)
            .header_parts(
                HeaderName::Via,
                &[
                    b"SIP/2.0/",
                    transport.as_bytes(),
                    b" ",
                    via_sent_by.as_bytes(),
                    b";branch=",
                    branch.as_bytes(),
                    b";rport",
                ],
            )
            .header(HeaderName::MaxForwards, "70");
        match strict_first {
            Some(_) => {
                // Strict routing: the first route is the Request-URI, the remote target the last route.
                for route in self.route_set.iter().skip(1) {
                    builder = builder.header(HeaderName::Route, &route.value);
                }
                builder = builder.header_parts(HeaderName::Route, &[b"<", self.remote_target.as_bytes(), b">"]);
            }
            None => {
                for route in &self.route_set {
                    builder = builder.header(HeaderName::Route, &route.value);
                }
            }
        }
        builder = if self.id.remote_tag.is_empty() {
            builder.header(HeaderName::To, &self.remote_uri)
        } else {
            builder.header_parts(
                HeaderName::To,
                &[self.remote_uri.as_bytes(), b";tag=", self.id.remote_tag.as_bytes()],
            )
        };
        let mut digits = [0u8; 20];
        builder = builder
            .header_parts(
                HeaderName::From,
                &[self.local_uri.as_bytes(), b";tag=", self.id.local_tag.as_bytes()],
            )
            .header(HeaderName::CallId, &self.id.call_id)
            .header_parts(
                HeaderName::CSeq,
                &[
                    decimal(u64::from(number), &mut digits),
                    b" ",
                    method.as_str().as_bytes(),
                ],
            );
        if is_target_refresh(method) {
            builder = builder.header(HeaderName::Contact, &self.local_contact);
        }
        builder
    }

    // ---- matching -------------------------------------------------------------------------------

    /// True when the message's Call-ID and tags are this dialog's; `ours_in_to` says which of From and
    /// To carries our tag (To for a received request or a sent response).
    fn matches(&self, message: &Message, ours_in_to: bool) -> bool {
        let (ours, theirs) = if ours_in_to {
            (message.to_tag(), message.from_tag())
        } else {
            (message.from_tag(), message.to_tag())
        };
        message.call_id().is_ok_and(|call_id| call_id == self.id.call_id)
            && ours.is_ok_and(|ours| ours == Some(self.id.local_tag.as_str()))
            && theirs.is_ok_and(|theirs| theirs.unwrap_or("") == self.id.remote_tag)
    }

    /// True when the response answers the dialog-creating request (same CSeq number and method).
    fn answers_origin(&self, response: &Message) -> bool {
        response
            .cseq()
            .is_ok_and(|cseq| cseq.number == self.origin_cseq && cseq.method == self.origin_method)
    }
}

// ---------------------------------------------------------------------------------------------
// Dialog table
// ---------------------------------------------------------------------------------------------

/// Bounded table of dialogs by id, matching received messages to them.
#[derive(Clone, Debug)]
pub struct Dialogs {
    dialogs: HashMap<DialogId, Dialog>,
    max_dialogs: usize,
}

impl Dialogs {
    /// An empty table holding at most `max_dialogs` dialogs.
    pub fn new(max_dialogs: usize) -> Self {
        Self {
            dialogs: HashMap::new(),
            max_dialogs,
        }
    }

    /// Adds a dialog; fails when the table is full or already holds its id.
    pub fn insert(&mut self, dialog: Dialog) -> Result<&mut Dialog, InsertError> {
        let len = self.dialogs.len();
        match self.dialogs.entry(dialog.id.clone()) {
            Entry::Occupied(_) => Err(InsertError::Duplicate),
            Entry::Vacant(_) if len >= self.max_dialogs => Err(InsertError::Full),
            Entry::Vacant(entry) => Ok(entry.insert(dialog)),
        }
    }

    /// The dialog a received request or response belongs to ([`DialogId::of_received`]). For a request
    /// that matches none, [`is_in_dialog`] tells whether to answer 481.
    pub fn find(&mut self, message: &Message) -> Option<&mut Dialog> {
        let id = DialogId::of_received(message)?;
        self.dialogs.get_mut(&id)
    }

    /// The dialog with this id.
    pub fn get(&self, id: &DialogId) -> Option<&Dialog> {
        self.dialogs.get(id)
    }

    /// The dialog with this id, to update.
    pub fn get_mut(&mut self, id: &DialogId) -> Option<&mut Dialog> {
        self.dialogs.get_mut(id)
    }

    /// Removes and returns the dialog with this id.
    pub fn remove(&mut self, id: &DialogId) -> Option<Dialog> {
        self.dialogs.remove(id)
    }

    /// All dialogs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Dialog> + '_ {
        self.dialogs.values()
    }

    /// How many dialogs the table holds.
    pub fn len(&self) -> usize {
        self.dialogs.len()
    }

    /// True when the table holds no dialog.
    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }

    /// The most dialogs the table holds.
    pub fn max_dialogs(&self) -> usize {
        self.max_dialogs
    }
}

/// True when a request claims to be inside a dialog: its To has a tag (§12.2). Such a request that
/// matches no dialog is answered 481 (§12.2.2), except an ACK, which is never answered.
pub fn is_in_dialog(request: &Message) -> bool {
    request.is_request() && request.to_tag().is_ok_and(|tag| tag.is_some())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn invalid(name: HeaderName) -> impl Fn(HeaderError) -> DialogError {
    move |error| DialogError::InvalidHeader { name, error }
}

/// The methods that create dialogs: INVITE (RFC 3261), SUBSCRIBE (RFC 6665), REFER (RFC 3515).
fn dialog_creating(method: Method<'_>) -> Option<Method<'static>> {
    match method {
        Method::Invite => Some(Method::Invite),
        Method::Subscribe => Some(Method::Subscribe),
        Method::Refer => Some(Method::Refer),
        _ => None,
    }
}

/// Requests that may change the remote target: INVITE (RFC 3261), UPDATE (RFC 3311), SUBSCRIBE and
/// NOTIFY (RFC 6665).
fn is_target_refresh(method: Method<'_>) -> bool {
    matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify
    )
}

/// A received tag as a dialog id part: absent is the null tag `""`; present, it must be a `token`
/// (a quoted or folded value could not be echoed in a header).
fn checked_tag(tag: Option<&str>, name: HeaderName) -> Result<&str, DialogError> {
    match tag {
        None => Ok(""),
        Some(tag) if !tag.is_empty() && tag.bytes().all(is_token) => Ok(tag),
        Some(_) => Err(DialogError::InvalidHeader {
            name,
            error: HeaderError::Syntax,
        }),
    }
}

/// The first Contact URI; `Ok(None)` without Contact; `*` is refused.
fn first_contact_uri(message: &Message) -> Result<Option<String>, DialogError> {
    // `first_contact` checks every Contact as `contacts` does, and reads a validated message's
    // first one from what validation recorded instead of parsing them all again.
    match message.first_contact().map_err(invalid(HeaderName::Contact))? {
        FirstContact::Address { uri, .. } => Ok(Some(uri.to_owned())),
        FirstContact::Absent => Ok(None),
        FirstContact::Star => Err(DialogError::InvalidHeader {
            name: HeaderName::Contact,
            error: HeaderError::Syntax,
        }),
    }
}

/// The Record-Route entries as received, top first.
fn route_set(message: &Message) -> Result<Vec<Route>, DialogError> {
    let mut routes = Vec::new();
    for address in message.record_routes() {
        let address = address.map_err(invalid(HeaderName::RecordRoute))?;
        if routes.len() >= MAX_ROUTE_SET {
            return Err(DialogError::TooManyRoutes);
        }
        // A route set holds SIP or SIPS URIs only (§12.1.1 "route set ... SIP or SIPS URIs").
        let loose = match address.uri() {
            Uri::Sip(uri) => uri.param("lr").is_some(),
            Uri::Other(_) => return Err(invalid(HeaderName::RecordRoute)(HeaderError::Syntax)),
        };
        routes.push(Route {
            value: name_addr_value(&address, false),
            uri: address.uri().as_str().to_owned(),
            loose,
        });
    }
    Ok(routes)
}

/// Writes an address back as a header value: display name, the URI in angle brackets (always safe,
/// whatever parameters the URI has), the header parameters; the `tag` left out when `without_tag`.
/// Folds are collapsed; a display name or parameter value that is not UTF-8 is left out.
fn name_addr_value(address: &NameAddr<'_>, without_tag: bool) -> String {
    let display_name = address.display_name_raw().map(unfold);
    let display_name = display_name
        .as_deref()
        .and_then(|name| std::str::from_utf8(name).ok())
        .filter(|name| !name.is_empty());
    let uri = address.uri().as_str();
    let params = address.params().as_bytes();
    // One check of the whole parameter text (the usual case: UTF-8, no folds): each name and
    // value is then a slice of it, neither unfolded nor checked again.
    let params_text = std::str::from_utf8(params)
        .ok()
        .filter(|_| memchr::memchr2(b'\r', b'\n', params).is_none());
    let mut value = String::with_capacity(display_name.map_or(0, |name| name.len() + 1) + uri.len() + 2 + params.len());
    if let Some(name) = display_name {
        value.push_str(name);
        value.push(' ');
    }
    value.push('<');
    value.push_str(uri);
    value.push('>');
    let text_of = |part: &[u8]| params_text.and_then(|whole| substr(whole, part));
    for param in address.params().iter_raw() {
        if without_tag && param.name.eq_ignore_ascii_case(b"tag") {
            continue;
        }
        // Names are tokens, so ASCII: the fallback never refuses one.
        let Some(name) = text_of(param.name).or_else(|| std::str::from_utf8(param.name).ok()) else {
            continue;
        };
        match param.value {
            None => {
                value.push(';');
                value.push_str(name);
            }
            Some(raw) => {
                let unfolded;
                let text = match text_of(raw) {
                    Some(text) => Some(text),
                    None => {
                        unfolded = unfold(raw);
                        std::str::from_utf8(&unfolded).ok()
                    }
                };
                if let Some(text) = text {
                    value.push(';');
                    value.push_str(name);
                    value.push('=');
                    value.push_str(text);
                }
            }
        }
    }
    value
}

/// `uri` as a Request-URI: for SIP and SIPS URIs, without the `?headers` part and the `method`
/// parameter, which a Request-URI may not carry (§19.1.1, table 1); other schemes unchanged.
fn request_uri_form(uri: &str) -> String {
    // Without parameters or headers there is nothing to remove, whatever the scheme: the usual
    // Contact, copied without parsing it again for every request.
    if !uri.bytes().any(|byte| byte == b';' || byte == b'?') {
        return uri.to_owned();
    }
    if !matches!(Uri::parse(uri.as_bytes()), Ok(Uri::Sip(_))) {
        return uri.to_owned();
    }
    // The user part may hold ';' and '?': look for parameters and headers after the host only. The
    // first '@' ends the user part, as in the URI parser.
    let host_start = match uri.find('@') {
        Some(at) => at + 1,
        None => uri.find(':').map_or(0, |colon| colon + 1),
    };
    let head = uri.get(..host_start).unwrap_or_default();
    let tail = uri.get(host_start..).unwrap_or_default();
    let tail = tail.split('?').next().unwrap_or_default();
    let mut out = String::with_capacity(uri.len());
    out.push_str(head);
    for (index, part) in tail.split(';').enumerate() {
        if index > 0 {
            let name = part.split('=').next().unwrap_or_default();
            if name.eq_ignore_ascii_case("method") {
                continue;
            }
            out.push(';');
        }
        out.push_str(part);
    }
    out
}

fn has_sips_request_uri(request: &Message) -> bool {
    // Only a `sips:` scheme can make it secure: the URI is parsed only then.
    let sips = request
        .request_uri_raw()
        .and_then(|raw| raw.get(..5))
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"sips:"));
    sips && matches!(request.request_uri(), Some(Ok(Uri::Sip(uri))) if uri.is_secure())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    /// The former `name_addr_value` (every piece unfolded and checked on its own): the fast path
    /// must write the same text.
    fn name_addr_value_reference(address: &NameAddr<'_>, without_tag: bool) -> String {
        let mut value = String::new();
        let display_name = address.display_name_raw().map(unfold);
        if let Some(name) = display_name.as_deref().and_then(|name| std::str::from_utf8(name).ok()) {
            if !name.is_empty() {
                value.push_str(name);
                value.push(' ');
            }
        }
        value.push('<');
        value.push_str(address.uri().as_str());
        value.push('>');
        for param in address.params().iter() {
            if without_tag && param.name.eq_ignore_ascii_case("tag") {
                continue;
            }
            match param.value.map(unfold) {
                None => {
                    value.push(';');
                    value.push_str(param.name);
                }
                Some(raw) => {
                    if let Ok(text) = std::str::from_utf8(&raw) {
                        value.push(';');
                        value.push_str(param.name);
                        value.push('=');
                        value.push_str(text);
                    }
                }
            }
        }
        value
    }

    #[test]
    fn name_addr_value_matches_reference() {
        let values: [&[u8]; 10] = [
            b"<sip:alice@a.example>;tag=1928301774",
            b"\"Bob\" <sip:bob@b.example>;TAG=x;lr;q=0.5",
            b"sip:carol@c.example;tag=9",
            b"Carol <sip:carol@c.example;transport=udp> ; tag = 9 ; foo = bar",
            b"<sip:d@d.example>;x=\"caf\xc3\xa9\";tag=t",
            b"<sip:d@d.example>;x=\"\xff\xfe\";y;tag=t",
            b"\"Multi\r\n Line\" <sip:e@e.example>;p=\"a\r\n b\";tag=u",
            b"\"\xe6\x97\xa5\" <sip:f@f.example>",
            b"\"\xff\" <sip:g@g.example>;tag=v",
            b"<sip:h@[2001:db8::1]:5060;lr>;maddr=[2001:db8::2];tag=w",
        ];
        for raw in values {
            let address = NameAddr::parse(raw).unwrap();
            for without_tag in [false, true] {
                assert_eq!(
                    name_addr_value(&address, without_tag),
                    name_addr_value_reference(&address, without_tag),
                    "{:?} without_tag={without_tag}",
                    String::from_utf8_lossy(raw)
                );
            }
        }
    }

    const CALL_ID: &str = "a84b4c76e66710@pc33.example.com";

    /// Parses test text written with `\n` (or already `\r\n`) line ends.
    fn message(text: &str) -> Message {
        let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
        Message::parse_datagram(Bytes::from(text)).expect("valid test message")
    }

    /// The INVITE from Alice (192.0.2.1) to Bob, as it reaches Bob through proxies p1 then p2.
    fn invite_at_uas(record_route: &str) -> Message {
        message(&format!(
            "INVITE sip:bob@192.0.2.4 SIP/2.0\n\
Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2\n\
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1;rport\n\
Max-Forwards: 68\n\
{record_route}\
To: Bob <sip:bob@example.com>\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\n\
Call-ID: {CALL_ID}\n\
CSeq: 314159 INVITE\n\
Contact: <sip:alice@192.0.2.1:5060>\n\
Content-Length: 0\n\n"
        ))
    }

    /// The same INVITE as Alice sent it.
    fn invite_at_uac() -> Message {
        message(&format!(
            "INVITE sip:bob@example.com SIP/2.0\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1;rport\n\
Max-Forwards: 70\n\
To: Bob <sip:bob@example.com>\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\n\
Call-ID: {CALL_ID}\n\
CSeq: 314159 INVITE\n\
Contact: <sip:alice@192.0.2.1:5060>\n\
Content-Length: 0\n\n"
        ))
    }

    /// A response from Bob to Alice's INVITE, as Alice receives it.
    fn response_at_uac(status: &str, extra: &str) -> Message {
        message(&format!(
            "SIP/2.0 {status}\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa1;rport=5060;received=192.0.2.1\n\
{extra}\
To: Bob <sip:bob@example.com>;tag=a6c85cf\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\n\
Call-ID: {CALL_ID}\n\
CSeq: 314159 INVITE\n\
Content-Length: 0\n\n"
        ))
    }

    /// An in-dialog request from Alice to Bob (Bob's view: To tag is Bob's).
    fn from_alice(method: &str, cseq: u32, extra: &str) -> Message {
        message(&format!(
            "{method} sip:bob@192.0.2.4 SIP/2.0\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{method}{cseq}\n\
Max-Forwards: 70\n\
To: Bob <sip:bob@example.com>;tag=a6c85cf\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\n\
Call-ID: {CALL_ID}\n\
CSeq: {cseq} {method}\n\
{extra}\
Content-Length: 0\n\n"
        ))
    }

    const TWO_LOOSE: &str = "Record-Route: <sip:p2.example.com;lr>\nRecord-Route: <sip:p1.example.com;lr>\n";

    fn bob(record_route: &str) -> Dialog {
        Dialog::uas(&invite_at_uas(record_route), "a6c85cf", "<sip:bob@192.0.2.4>").expect("uas dialog")
    }

    fn routes(dialog: &Dialog) -> Vec<&str> {
        dialog.route_set().collect()
    }

    fn route_headers(message: &Message) -> Vec<String> {
        message
            .headers_of(HeaderName::Route)
            .map(|header| String::from_utf8(header.value.to_vec()).unwrap())
            .collect()
    }

    fn build(builder: MessageBuilder) -> Message {
        let message = builder.build().expect("builds");
        message.validate().expect("valid request");
        message
    }

    // ---- creation -------------------------------------------------------------------------------

    #[test]
    fn uas_dialog_from_invite() {
        let dialog = bob(TWO_LOOSE);
        assert_eq!(dialog.id(), &DialogId::new(CALL_ID, "a6c85cf", "1928301774"));
        assert_eq!(dialog.role(), Role::Uas);
        assert_eq!(dialog.state(), DialogState::Early);
        assert_eq!(dialog.local_uri(), "Bob <sip:bob@example.com>");
        assert_eq!(dialog.remote_uri(), "\"Alice\" <sip:alice@example.com>");
        assert_eq!(dialog.remote_target(), "sip:alice@192.0.2.1:5060");
        assert_eq!(dialog.local_cseq(), None);
        assert_eq!(dialog.remote_cseq(), Some(314159));
        // UAS: Record-Route as received (§12.1.1).
        assert_eq!(routes(&dialog), ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]);
        assert_eq!(dialog.next_hop(), "sip:p2.example.com;lr");
        assert!(!dialog.is_secure());
        assert_eq!(dialog.local_contact(), "<sip:bob@192.0.2.4>");
    }

    #[test]
    fn uac_dialog_from_200_reverses_the_route_set() {
        let ok = response_at_uac(
            "200 OK",
            "Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\nContact: <sip:bob@192.0.2.4>\n",
        );
        let dialog = Dialog::uac(&invite_at_uac(), &ok).expect("uac dialog");
        assert_eq!(dialog.id(), &DialogId::new(CALL_ID, "1928301774", "a6c85cf"));
        assert_eq!(dialog.role(), Role::Uac);
        assert_eq!(dialog.state(), DialogState::Confirmed);
        assert_eq!(dialog.local_uri(), "\"Alice\" <sip:alice@example.com>");
        assert_eq!(dialog.remote_uri(), "Bob <sip:bob@example.com>");
        assert_eq!(dialog.remote_target(), "sip:bob@192.0.2.4");
        assert_eq!(dialog.local_cseq(), Some(314159));
        assert_eq!(dialog.remote_cseq(), None);
        // UAC: Record-Route reversed (§12.1.2): nearest proxy first.
        assert_eq!(routes(&dialog), ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]);
        assert_eq!(dialog.next_hop(), "sip:p1.example.com;lr");
        assert_eq!(dialog.local_contact(), "<sip:alice@192.0.2.1:5060>");
    }

    #[test]
    fn creation_refusals() {
        let invite = invite_at_uas("");
        assert_eq!(
            Dialog::uas(&invite, "", "<sip:b@h>").unwrap_err(),
            DialogError::InvalidLocalTag
        );
        assert_eq!(
            Dialog::uas(&invite, "a b", "<sip:b@h>").unwrap_err(),
            DialogError::InvalidLocalTag
        );
        assert_eq!(
            Dialog::uas(&invite, "t", "not a uri").unwrap_err(),
            DialogError::InvalidLocalContact
        );
        let bye = from_alice("BYE", 1, "");
        assert_eq!(
            Dialog::uas(&bye, "t", "<sip:b@h>").unwrap_err(),
            DialogError::NotDialogCreating
        );
        let tagged = from_alice("INVITE", 2, "Contact: <sip:alice@192.0.2.1>\n");
        assert_eq!(
            Dialog::uas(&tagged, "t", "<sip:b@h>").unwrap_err(),
            DialogError::AlreadyInDialog
        );
        let no_contact = message(
            &String::from_utf8(invite.as_bytes().to_vec())
                .unwrap()
                .replace("Contact: <sip:alice@192.0.2.1:5060>\r\n", ""),
        );
        assert_eq!(
            Dialog::uas(&no_contact, "t", "<sip:b@h>").unwrap_err(),
            DialogError::InvalidHeader {
                name: HeaderName::Contact,
                error: HeaderError::Missing
            }
        );
        let tel_route = invite_at_uas("Record-Route: <tel:+15551234>\n");
        assert!(matches!(
            Dialog::uas(&tel_route, "t", "<sip:b@h>"),
            Err(DialogError::InvalidHeader {
                name: HeaderName::RecordRoute,
                ..
            })
        ));
        let many: String = (0..=MAX_ROUTE_SET)
            .map(|index| format!("Record-Route: <sip:p{index}.example.com;lr>\n"))
            .collect();
        assert_eq!(
            Dialog::uas(&invite_at_uas(&many), "t", "<sip:b@h>").unwrap_err(),
            DialogError::TooManyRoutes
        );

        let invite = invite_at_uac();
        let contact = "Contact: <sip:bob@192.0.2.4>\n";
        for status in ["100 Trying", "486 Busy Here"] {
            assert_eq!(
                Dialog::uac(&invite, &response_at_uac(status, contact)).unwrap_err(),
                DialogError::NotDialogCreating
            );
        }
        let untagged_180 = message(
            &String::from_utf8(response_at_uac("180 Ringing", contact).as_bytes().to_vec())
                .unwrap()
                .replace(";tag=a6c85cf", ""),
        );
        assert_eq!(
            Dialog::uac(&invite, &untagged_180).unwrap_err(),
            DialogError::MissingTag(HeaderName::To)
        );
        let other_call = message(
            &String::from_utf8(response_at_uac("200 OK", contact).as_bytes().to_vec())
                .unwrap()
                .replace(CALL_ID, "other@host"),
        );
        assert_eq!(Dialog::uac(&invite, &other_call).unwrap_err(), DialogError::Mismatch);
        assert_eq!(
            Dialog::uac(&invite, &response_at_uac("200 OK", "")).unwrap_err(),
            DialogError::InvalidHeader {
                name: HeaderName::Contact,
                error: HeaderError::Missing
            }
        );
        assert_eq!(Dialog::uac(&invite, &invite).unwrap_err(), DialogError::NotAResponse);
    }

    #[test]
    fn a_2xx_without_to_tag_is_a_null_remote_tag() {
        let ok = message(
            &String::from_utf8(
                response_at_uac("200 OK", "Contact: <sip:bob@192.0.2.4>\n")
                    .as_bytes()
                    .to_vec(),
            )
            .unwrap()
            .replace(";tag=a6c85cf", ""),
        );
        let mut dialog = Dialog::uac(&invite_at_uac(), &ok).expect("RFC 2543 peer");
        assert_eq!(dialog.id().remote_tag, "");
        let bye = build(
            dialog
                .request(Method::Bye, "z9hG4bKb", "192.0.2.1:5060", "UDP")
                .unwrap(),
        );
        assert_eq!(bye.to().unwrap().tag(), None);
    }

    #[test]
    fn secure_flag_from_sips_request_uri() {
        let text = String::from_utf8(invite_at_uas("").as_bytes().to_vec())
            .unwrap()
            .replace("INVITE sip:bob@", "INVITE sips:bob@");
        let dialog = Dialog::uas(&message(&text), "t", "<sips:bob@192.0.2.4>").unwrap();
        assert!(dialog.is_secure());
    }

    // ---- early -> confirmed -----------------------------------------------------------------------

    #[test]
    fn uac_early_then_confirmed_recomputes_route_set_and_target() {
        // The 180 has no Contact and no Record-Route (an RFC 2543 proxy need not mirror it in 1xx).
        let ringing = response_at_uac("180 Ringing", "");
        let mut dialog = Dialog::uac(&invite_at_uac(), &ringing).expect("early dialog");
        assert_eq!(dialog.state(), DialogState::Early);
        assert_eq!(dialog.remote_target(), "sip:bob@example.com");
        assert_eq!(routes(&dialog), Vec::<&str>::new());

        let mut table = Dialogs::new(4);
        table.insert(dialog.clone()).unwrap();
        let ok = response_at_uac(
            "200 OK",
            "Record-Route: <sip:p2.example.com;lr>\nRecord-Route: <sip:p1.example.com;lr>\n\
Contact: <sip:bob@192.0.2.4>\n",
        );
        // The 2xx finds the early dialog (From tag ours, To tag theirs) and confirms it.
        let found = table.find(&ok).expect("same dialog id");
        found.check_response(&ok).unwrap();
        assert_eq!(found.state(), DialogState::Confirmed);
        assert_eq!(found.remote_target(), "sip:bob@192.0.2.4");
        assert_eq!(routes(found), ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]);

        // confirm() directly does the same; a retransmitted 2xx changes nothing afterwards.
        dialog.confirm(&ok).unwrap();
        assert_eq!(&dialog, &*found);
        let other_rr = response_at_uac(
            "200 OK",
            "Record-Route: <sip:evil.example.com;lr>\nContact: <sip:bob@192.0.2.99>\n",
        );
        dialog.confirm(&other_rr).unwrap();
        assert_eq!(dialog.remote_target(), "sip:bob@192.0.2.4");
        assert_eq!(routes(&dialog), ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]);
    }

    #[test]
    fn confirm_refuses_what_is_not_the_creating_2xx() {
        let mut dialog = Dialog::uac(&invite_at_uac(), &response_at_uac("183 Session Progress", "")).unwrap();
        let busy = response_at_uac("486 Busy Here", "");
        assert_eq!(dialog.confirm(&busy).unwrap_err(), DialogError::Mismatch);
        let prack_ok = message(
            &String::from_utf8(
                response_at_uac("200 OK", "Contact: <sip:bob@192.0.2.4>\n")
                    .as_bytes()
                    .to_vec(),
            )
            .unwrap()
            .replace("CSeq: 314159 INVITE", "CSeq: 314160 PRACK"),
        );
        assert_eq!(dialog.confirm(&prack_ok).unwrap_err(), DialogError::Mismatch);
        assert_eq!(dialog.state(), DialogState::Early);
        // The 2xx to the PRACK is an ordinary in-dialog response.
        dialog.check_response(&prack_ok).unwrap();
        assert_eq!(dialog.state(), DialogState::Early);
        // A final failure of the INVITE ends the early dialog.
        dialog.check_response(&busy).unwrap();
        assert_eq!(dialog.state(), DialogState::Terminated);
        assert_eq!(
            dialog.confirm(&response_at_uac("200 OK", "Contact: <sip:b@h>\n")),
            Err(DialogError::Terminated)
        );
    }

    #[test]
    fn uas_confirms_with_its_own_2xx() {
        let invite = invite_at_uas(TWO_LOOSE);
        let mut dialog = Dialog::uas(&invite, "a6c85cf", "<sip:bob@192.0.2.4>").unwrap();
        let ok = crate::sip::response_to(&invite, 200, "OK", Some("a6c85cf"))
            .unwrap()
            .header(HeaderName::Contact, "<sip:bob@192.0.2.4>")
            .build()
            .unwrap();
        dialog.confirm(&ok).unwrap();
        assert_eq!(dialog.state(), DialogState::Confirmed);
        // Route set and remote target are the request's, untouched by our own response.
        assert_eq!(dialog.remote_target(), "sip:alice@192.0.2.1:5060");
        assert_eq!(routes(&dialog), ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]);
        let wrong_tag = crate::sip::response_to(&invite, 200, "OK", Some("other"))
            .unwrap()
            .build()
            .unwrap();
        let mut fresh = Dialog::uas(&invite, "a6c85cf", "<sip:bob@192.0.2.4>").unwrap();
        assert_eq!(fresh.confirm(&wrong_tag), Err(DialogError::Mismatch));
    }

    #[test]
    fn uas_confirm_sent_matches_confirm() {
        let invite = invite_at_uas(TWO_LOOSE);
        let mut checked = Dialog::uas(&invite, "a6c85cf", "<sip:bob@192.0.2.4>").unwrap();
        let mut sent = checked.clone();
        let ok = crate::sip::response_to(&invite, 200, "OK", Some("a6c85cf"))
            .unwrap()
            .header(HeaderName::Contact, "<sip:bob@192.0.2.4>")
            .build()
            .unwrap();
        checked.confirm(&ok).unwrap();
        sent.confirm_sent(200).unwrap();
        assert_eq!(sent, checked);
        // A retransmitted 2xx changes nothing.
        sent.confirm_sent(200).unwrap();
        assert_eq!(sent, checked);

        let mut early = Dialog::uas(&invite, "a6c85cf", "<sip:bob@192.0.2.4>").unwrap();
        assert_eq!(early.confirm_sent(180), Err(DialogError::Mismatch));
        assert_eq!(early.confirm_sent(486), Err(DialogError::Mismatch));
        assert_eq!(early.state(), DialogState::Early);
        early.terminate();
        assert_eq!(early.confirm_sent(200), Err(DialogError::Terminated));

        let ok_at_uac = response_at_uac("200 OK", "Contact: <sip:bob@192.0.2.4>\n");
        let mut uac = Dialog::uac(&invite_at_uac(), &response_at_uac("180 Ringing", "")).unwrap();
        assert_eq!(uac.confirm_sent(200), Err(DialogError::Mismatch));
        uac.confirm(&ok_at_uac).unwrap();
    }

    #[test]
    fn sips_request_uri_is_secure() {
        for (uri, secure) in [
            ("sip:bob@example.com", false),
            ("sips:bob@example.com", true),
            ("SIPS:bob@example.com", true),
            ("tel:+15551234", false),
            ("sip:sips@example.com", false),
        ] {
            let invite = crate::sip::MessageBuilder::request(Method::Invite, uri)
                .header(HeaderName::Via, "SIP/2.0/UDP h;branch=z9hG4bK1")
                .header(HeaderName::From, "<sip:a@h>;tag=1")
                .header(HeaderName::To, "<sip:b@h>")
                .header(HeaderName::CallId, "c")
                .header(HeaderName::CSeq, "1 INVITE")
                .header(HeaderName::Contact, "<sip:a@h>")
                .build()
                .unwrap();
            assert_eq!(has_sips_request_uri(&invite), secure, "{uri}");
        }
    }

    // ---- building requests ------------------------------------------------------------------------

    #[test]
    fn uas_builds_bye_with_loose_routes() {
        let mut dialog = bob(TWO_LOOSE);
        let bye = build(
            dialog
                .request(Method::Bye, "z9hG4bKbye1", "192.0.2.4:5060", "UDP")
                .unwrap(),
        );
        assert_eq!(bye.method(), Some(Method::Bye));
        assert_eq!(bye.request_uri_raw(), Some(&b"sip:alice@192.0.2.1:5060"[..]));
        assert_eq!(
            route_headers(&bye),
            ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
        );
        let via = bye.top_via().unwrap();
        assert_eq!(via.branch(), Some("z9hG4bKbye1"));
        assert_eq!(via.transport(), "UDP");
        assert_eq!(via.host_raw(), "192.0.2.4");
        assert_eq!(via.port(), Some(5060));
        assert_eq!(bye.max_forwards(), Ok(Some(70)));
        let to = bye.to().unwrap();
        assert_eq!(to.uri().as_str(), "sip:alice@example.com");
        assert_eq!(to.tag(), Some("1928301774"));
        assert_eq!(to.display_name().as_deref(), Some(&b"Alice"[..]));
        let from = bye.from().unwrap();
        assert_eq!(from.uri().as_str(), "sip:bob@example.com");
        assert_eq!(from.tag(), Some("a6c85cf"));
        assert_eq!(bye.call_id(), Ok(CALL_ID));
        // A UAS numbers its own requests from 1.
        assert_eq!(bye.cseq().unwrap().number, 1);
        assert_eq!(bye.cseq().unwrap().method, Method::Bye);
        // BYE is no target refresh: no Contact.
        assert!(bye.header(HeaderName::Contact).is_none());
        // The built BYE is an in-dialog request of the same dialog at the other end.
        assert_eq!(
            DialogId::of_received(&bye),
            Some(DialogId::new(CALL_ID, "1928301774", "a6c85cf"))
        );
    }

    #[test]
    fn uac_builds_requests_with_increasing_cseq_and_ack_reuse() {
        let ok = response_at_uac(
            "200 OK",
            "Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\nContact: <sip:bob@192.0.2.4>\n",
        );
        let mut dialog = Dialog::uac(&invite_at_uac(), &ok).unwrap();

        let ack = build(dialog.ack_for(314159, "z9hG4bKack", "192.0.2.1:5060", "UDP"));
        assert_eq!(ack.method(), Some(Method::Ack));
        assert_eq!(ack.cseq().unwrap().number, 314159);
        assert_eq!(ack.cseq().unwrap().method, Method::Ack);
        assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bKack"));
        assert_eq!(ack.request_uri_raw(), Some(&b"sip:bob@192.0.2.4"[..]));
        assert_eq!(
            route_headers(&ack),
            ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(dialog.local_cseq(), Some(314159), "ACK does not use up a CSeq");

        let reinvite = build(
            dialog
                .request(Method::Invite, "z9hG4bKre", "192.0.2.1:5060", "TCP")
                .unwrap(),
        );
        assert_eq!(reinvite.cseq().unwrap().number, 314160);
        assert_eq!(reinvite.top_via().unwrap().transport(), "TCP");
        assert_eq!(reinvite.to().unwrap().tag(), Some("a6c85cf"));
        assert_eq!(reinvite.from().unwrap().tag(), Some("1928301774"));
        match reinvite.contacts().unwrap() {
            ContactList::Addresses(contacts) => {
                assert_eq!(contacts.len(), 1);
                assert_eq!(contacts[0].uri().as_str(), "sip:alice@192.0.2.1:5060");
            }
            ContactList::Star => panic!("star"),
        }
        let info = build(
            dialog
                .request(Method::Info, "z9hG4bKinfo", "192.0.2.1:5060", "UDP")
                .unwrap(),
        );
        assert_eq!(info.cseq().unwrap().number, 314161);
        assert_eq!(dialog.local_cseq(), Some(314161));
        // The re-INVITE's ACK reuses the re-INVITE's number.
        let ack = build(dialog.ack_for(314160, "z9hG4bKack2", "192.0.2.1:5060", "UDP"));
        assert_eq!(ack.cseq().unwrap().number, 314160);

        assert_eq!(
            dialog.request(Method::Ack, "z9hG4bKx", "h", "UDP").unwrap_err(),
            RequestError::AckOrCancel
        );
        assert_eq!(
            dialog.request(Method::Cancel, "z9hG4bKx", "h", "UDP").unwrap_err(),
            RequestError::AckOrCancel
        );
        dialog.terminate();
        assert_eq!(
            dialog.request(Method::Bye, "z9hG4bKx", "h", "UDP").unwrap_err(),
            RequestError::Terminated
        );
    }

    #[test]
    fn local_cseq_exhaustion_is_an_error() {
        let text = String::from_utf8(invite_at_uac().as_bytes().to_vec())
            .unwrap()
            .replace("314159", "4294967295");
        let ok = String::from_utf8(
            response_at_uac("200 OK", "Contact: <sip:bob@192.0.2.4>\n")
                .as_bytes()
                .to_vec(),
        )
        .unwrap()
        .replace("314159", "4294967295");
        let mut dialog = Dialog::uac(&message(&text), &message(&ok)).unwrap();
        assert_eq!(
            dialog.request(Method::Bye, "z9hG4bKx", "h", "UDP").unwrap_err(),
            RequestError::CSeqExhausted
        );
    }

    #[test]
    fn strict_first_route_at_the_uac() {
        // p1 (nearest to Alice) is an RFC 2543 strict router; the method parameter and URI headers
        // may not appear in a Request-URI and are stripped there.
        let ok = response_at_uac(
            "200 OK",
            "Record-Route: <sip:p2.example.com;lr>\n\
Record-Route: <sip:p1.example.com;transport=udp;method=INVITE?x=y>\n\
Contact: <sip:bob@192.0.2.4>\n",
        );
        let mut dialog = Dialog::uac(&invite_at_uac(), &ok).unwrap();
        assert_eq!(
            routes(&dialog),
            [
                "<sip:p1.example.com;transport=udp;method=INVITE?x=y>",
                "<sip:p2.example.com;lr>"
            ]
        );
        assert_eq!(dialog.next_hop(), "sip:p1.example.com;transport=udp;method=INVITE?x=y");
        let bye = build(dialog.request(Method::Bye, "z9hG4bKb", "192.0.2.1", "UDP").unwrap());
        assert_eq!(bye.request_uri_raw(), Some(&b"sip:p1.example.com;transport=udp"[..]));
        assert_eq!(route_headers(&bye), ["<sip:p2.example.com;lr>", "<sip:bob@192.0.2.4>"]);
    }

    #[test]
    fn strict_first_route_at_the_uas() {
        let mut dialog = bob("Record-Route: <sip:p2.example.com>, <sip:p1.example.com;lr>\n");
        assert_eq!(routes(&dialog), ["<sip:p2.example.com>", "<sip:p1.example.com;lr>"]);
        let bye = build(dialog.request(Method::Bye, "z9hG4bKb", "192.0.2.4", "UDP").unwrap());
        assert_eq!(bye.request_uri_raw(), Some(&b"sip:p2.example.com"[..]));
        assert_eq!(
            route_headers(&bye),
            ["<sip:p1.example.com;lr>", "<sip:alice@192.0.2.1:5060>"]
        );
    }

    #[test]
    fn strict_route_alone_and_no_routes() {
        let mut dialog = bob("Record-Route: <sip:p2.example.com>\n");
        let bye = build(dialog.request(Method::Bye, "z9hG4bKb", "192.0.2.4", "UDP").unwrap());
        assert_eq!(bye.request_uri_raw(), Some(&b"sip:p2.example.com"[..]));
        assert_eq!(route_headers(&bye), ["<sip:alice@192.0.2.1:5060>"]);

        let mut dialog = bob("");
        assert_eq!(dialog.next_hop(), "sip:alice@192.0.2.1:5060");
        let bye = build(dialog.request(Method::Bye, "z9hG4bKb", "192.0.2.4", "UDP").unwrap());
        assert_eq!(bye.request_uri_raw(), Some(&b"sip:alice@192.0.2.1:5060"[..]));
        assert!(route_headers(&bye).is_empty());
    }

    #[test]
    fn request_uri_form_strips_only_after_the_host() {
        assert_eq!(request_uri_form("sip:p1.example.com;lr"), "sip:p1.example.com;lr");
        assert_eq!(
            request_uri_form("sip:a;b?c@p1.example.com;method=BYE;lr?h=v"),
            "sip:a;b?c@p1.example.com;lr"
        );
        assert_eq!(
            request_uri_form("sip:[2001:db8::1]:5060;METHOD=x"),
            "sip:[2001:db8::1]:5060"
        );
        assert_eq!(request_uri_form("tel:+1555;method=x"), "tel:+1555;method=x");
        // No parameters or headers: unchanged (and not parsed).
        for uri in [
            "sip:bob@192.0.2.4",
            "sips:bob@[2001:db8::1]:5061",
            "sip:not a uri",
            "tel:+1555",
        ] {
            assert_eq!(request_uri_form(uri), uri);
        }
    }

    // ---- incoming requests ------------------------------------------------------------------------

    #[test]
    fn remote_cseq_ordering() {
        let mut dialog = bob("");
        assert_eq!(dialog.remote_cseq(), Some(314159));
        // The ACK for the 2xx carries the INVITE's number: accepted, nothing recorded.
        dialog.check_request(&from_alice("ACK", 314159, "")).unwrap();
        let lower = from_alice("INFO", 314158, "");
        let error = dialog.check_request(&lower).unwrap_err();
        assert_eq!(
            error,
            InDialogError::OutOfOrder {
                received: 314158,
                remote: 314159
            }
        );
        assert_eq!(error.status(), Some((500, "Server Internal Error")));
        assert!(matches!(
            dialog.check_request(&from_alice("INFO", 314159, "")),
            Err(InDialogError::OutOfOrder { .. })
        ));
        // Gaps are fine (§12.2.2).
        dialog.check_request(&from_alice("INFO", 314170, "")).unwrap();
        assert_eq!(dialog.remote_cseq(), Some(314170));
        // ACK and CANCEL are never out of order.
        dialog.check_request(&from_alice("ACK", 314160, "")).unwrap();
        dialog.check_request(&from_alice("CANCEL", 314160, "")).unwrap();
        assert_eq!(dialog.remote_cseq(), Some(314170));
        dialog.check_request(&from_alice("BYE", 314171, "")).unwrap();
        dialog.terminate();
        let error = dialog.check_request(&from_alice("BYE", 314172, "")).unwrap_err();
        assert_eq!(error, InDialogError::Terminated);
        assert_eq!(error.status().map(|(code, _)| code), Some(481));
    }

    #[test]
    fn uac_dialog_takes_the_first_remote_cseq() {
        let ok = response_at_uac("200 OK", "Contact: <sip:bob@192.0.2.4>\n");
        let mut dialog = Dialog::uac(&invite_at_uac(), &ok).unwrap();
        // Bob's view reversed: Bob sends with his tag in From.
        let bye = message(&format!(
            "BYE sip:alice@192.0.2.1:5060 SIP/2.0\n\
Via: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKbb\n\
To: \"Alice\" <sip:alice@example.com>;tag=1928301774\n\
From: Bob <sip:bob@example.com>;tag=a6c85cf\n\
Call-ID: {CALL_ID}\n\
CSeq: 7 BYE\n\n"
        ));
        dialog.check_request(&bye).unwrap();
        assert_eq!(dialog.remote_cseq(), Some(7));
    }

    #[test]
    fn target_refresh_by_reinvite_and_update() {
        let mut dialog = bob(TWO_LOOSE);
        dialog
            .check_request(&from_alice(
                "INVITE",
                314160,
                "Contact: <sip:alice@198.51.100.7:5070>\n",
            ))
            .unwrap();
        assert_eq!(dialog.remote_target(), "sip:alice@198.51.100.7:5070");
        // Requests that are no target refresh leave it alone, as does a refresh without Contact.
        dialog
            .check_request(&from_alice("INFO", 314161, "Contact: <sip:alice@203.0.113.1>\n"))
            .unwrap();
        dialog.check_request(&from_alice("UPDATE", 314162, "")).unwrap();
        assert_eq!(dialog.remote_target(), "sip:alice@198.51.100.7:5070");
        dialog
            .check_request(&from_alice("UPDATE", 314163, "Contact: <sip:alice@203.0.113.9>\n"))
            .unwrap();
        assert_eq!(dialog.remote_target(), "sip:alice@203.0.113.9");
        // In-dialog Record-Route does not change the route set.
        dialog
            .check_request(&from_alice(
                "INVITE",
                314164,
                "Record-Route: <sip:evil.example.com;lr>\n",
            ))
            .unwrap();
        assert_eq!(routes(&dialog), ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]);
        // A later BYE goes to the new target.
        let bye = build(dialog.request(Method::Bye, "z9hG4bKb", "192.0.2.4", "UDP").unwrap());
        assert_eq!(bye.request_uri_raw(), Some(&b"sip:alice@203.0.113.9"[..]));
        // A refresh with Contact `*` is malformed and changes nothing.
        let star = from_alice("INVITE", 314165, "Contact: *\n");
        let error = dialog.check_request(&star).unwrap_err();
        assert_eq!(error.status().map(|(code, _)| code), Some(400));
        assert_eq!(dialog.remote_cseq(), Some(314164));
    }

    #[test]
    fn uac_target_refresh_and_termination_by_response() {
        let ok = response_at_uac("200 OK", "Contact: <sip:bob@192.0.2.4>\n");
        let mut dialog = Dialog::uac(&invite_at_uac(), &ok).unwrap();
        let reinvite_ok = message(
            &String::from_utf8(
                response_at_uac("200 OK", "Contact: <sip:bob@198.51.100.4>\n")
                    .as_bytes()
                    .to_vec(),
            )
            .unwrap()
            .replace("CSeq: 314159 INVITE", "CSeq: 314160 INVITE"),
        );
        dialog.check_response(&reinvite_ok).unwrap();
        assert_eq!(dialog.remote_target(), "sip:bob@198.51.100.4");
        let info_481 = message(
            &String::from_utf8(
                response_at_uac("481 Call/Transaction Does Not Exist", "")
                    .as_bytes()
                    .to_vec(),
            )
            .unwrap()
            .replace("CSeq: 314159 INVITE", "CSeq: 314161 INFO"),
        );
        dialog.check_response(&info_481).unwrap();
        assert_eq!(dialog.state(), DialogState::Terminated);
        assert_eq!(dialog.check_response(&reinvite_ok), Err(DialogError::Terminated));
    }

    #[test]
    fn check_request_refuses_other_dialogs() {
        let mut dialog = bob("");
        let text = String::from_utf8(from_alice("BYE", 314160, "").as_bytes().to_vec()).unwrap();
        let other_tag = message(&text.replace("tag=1928301774", "tag=999"));
        let error = dialog.check_request(&other_tag).unwrap_err();
        assert_eq!(error, InDialogError::NotThisDialog);
        assert_eq!(error.status().map(|(code, _)| code), Some(481));
        let response = response_at_uac("200 OK", "");
        assert_eq!(dialog.check_request(&response), Err(InDialogError::NotARequest));
        assert_eq!(InDialogError::NotARequest.status(), None);
        assert_eq!(dialog.remote_cseq(), Some(314159));
    }

    // ---- table --------------------------------------------------------------------------------------

    #[test]
    fn table_find_and_481() {
        let mut table = Dialogs::new(8);
        let id = table.insert(bob("")).unwrap().id().clone();
        assert_eq!(table.len(), 1);

        let bye = from_alice("BYE", 314160, "");
        assert!(is_in_dialog(&bye));
        let dialog = table
            .find(&bye)
            .expect("matches by Call-ID, To tag (ours), From tag (theirs)");
        dialog.check_request(&bye).unwrap();
        dialog.terminate();

        // Tagged request with unknown tags: no dialog, answer 481.
        let text = String::from_utf8(bye.as_bytes().to_vec()).unwrap();
        for unknown in [
            text.replace("tag=a6c85cf", "tag=nothere"),
            text.replace("tag=1928301774", "tag=nothere"),
            text.replace(CALL_ID, "another-call@example.com"),
        ] {
            let request = message(&unknown);
            assert!(table.find(&request).is_none());
            assert!(is_in_dialog(&request), "answer 481");
        }
        // Swapped tags do not match: our tag must be in To.
        let swapped = message(
            &text
                .replace("tag=a6c85cf", "tag=TMP")
                .replace("tag=1928301774", "tag=a6c85cf")
                .replace("tag=TMP", "tag=1928301774"),
        );
        assert!(table.find(&swapped).is_none());
        // A new INVITE (no To tag) is outside any dialog, not a 481.
        let invite = invite_at_uas("");
        assert!(table.find(&invite).is_none());
        assert!(!is_in_dialog(&invite));
        assert!(!is_in_dialog(&response_at_uac("200 OK", "")));

        assert_eq!(table.get(&id).map(Dialog::state), Some(DialogState::Terminated));
        assert!(table.remove(&id).is_some());
        assert!(table.is_empty());
    }

    #[test]
    fn table_finds_responses_by_from_tag() {
        let mut table = Dialogs::new(8);
        let ringing = response_at_uac("180 Ringing", "Contact: <sip:bob@192.0.2.4>\n");
        table.insert(Dialog::uac(&invite_at_uac(), &ringing).unwrap()).unwrap();
        assert!(table.find(&ringing).is_some());
        // A forked 2xx with another To tag is another dialog.
        let fork = message(
            &String::from_utf8(
                response_at_uac("200 OK", "Contact: <sip:bob@192.0.2.44>\n")
                    .as_bytes()
                    .to_vec(),
            )
            .unwrap()
            .replace("tag=a6c85cf", "tag=fork2"),
        );
        assert!(table.find(&fork).is_none());
        let forked = Dialog::uac(&invite_at_uac(), &fork).unwrap();
        assert_eq!(forked.state(), DialogState::Confirmed);
        table.insert(forked).unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.find(&fork).unwrap().remote_target(), "sip:bob@192.0.2.44");
    }

    #[test]
    fn table_is_bounded() {
        let mut table = Dialogs::new(2);
        let invite = invite_at_uas("");
        for tag in ["t1", "t2"] {
            table
                .insert(Dialog::uas(&invite, tag, "<sip:bob@192.0.2.4>").unwrap())
                .unwrap();
        }
        let third = Dialog::uas(&invite, "t3", "<sip:bob@192.0.2.4>").unwrap();
        assert_eq!(table.insert(third.clone()).unwrap_err(), InsertError::Full);
        let duplicate = Dialog::uas(&invite, "t1", "<sip:bob@192.0.2.4>").unwrap();
        assert_eq!(table.insert(duplicate).unwrap_err(), InsertError::Duplicate);
        assert_eq!(table.len(), table.max_dialogs());
        table.remove(&DialogId::new(CALL_ID, "t1", "1928301774")).unwrap();
        table.insert(third).unwrap();
        assert_eq!(table.iter().count(), 2);
    }

    // ---- property tests -----------------------------------------------------------------------------

    const BYE: &str = "BYE sip:bob@192.0.2.4 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx\r\n\
Record-Route: <sip:p1.example.com;lr>\r\n\
To: Bob <sip:bob@example.com>;tag=a6c85cf\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314160 INVITE\r\n\
Contact: <sip:alice@192.0.2.1>\r\n\
\r\n";

    /// Runs every entry point on a message of unknown shape; only panics matter.
    fn exercise(message: &Message) {
        let mut table = Dialogs::new(4);
        table.insert(bob(TWO_LOOSE)).unwrap();
        let _ = is_in_dialog(message);
        let _ = DialogId::of_received(message);
        if let Some(dialog) = table.find(message) {
            let _ = dialog.check_request(message);
            let _ = dialog.check_response(message);
        }
        let mut dialog = bob("Record-Route: <sip:p2.example.com>\n");
        let _ = dialog.check_request(message);
        let _ = dialog.check_response(message);
        let _ = dialog.confirm(message);
        for created in [
            Dialog::uas(message, "t", "<sip:bob@192.0.2.4>"),
            Dialog::uac(&invite_at_uac(), message),
            Dialog::uac(message, &response_at_uac("200 OK", "Contact: <sip:b@h>\n")),
        ]
        .into_iter()
        .flatten()
        {
            let mut created = created;
            if let Ok(builder) = created.request(Method::Invite, "z9hG4bKp", "h", "UDP") {
                let _ = builder.build();
            }
            let _ = created.ack_for(1, "z9hG4bKa", "h", "UDP").build();
            let _ = created.check_request(message);
        }
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9.!%*_+`'~-]{1,12}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_mutated_messages(
            base in 0usize..3,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..12)
        ) {
            let mut bytes = match base {
                0 => BYE.as_bytes().to_vec(),
                1 => invite_at_uas(TWO_LOOSE).as_bytes().to_vec(),
                _ => response_at_uac("200 OK", "Record-Route: <sip:p1;lr>\nContact: <sip:b@h>\n")
                    .as_bytes()
                    .to_vec(),
            };
            for (index, byte, kind) in edits {
                let at = index.index(bytes.len() + 1);
                match kind {
                    0 => bytes.insert(at, byte),
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => {}
                }
            }
            match Message::parse_datagram_unvalidated(Bytes::from(bytes)) {
                Ok(message) => exercise(&message),
                Err(rejection) => {
                    if let Some(message) = rejection.message() {
                        exercise(message);
                    }
                }
            }
        }

        /// `find` matches exactly when Call-ID and both tags agree, and `check_request` accepts exactly
        /// the requests whose CSeq is above every one accepted before (ACK and CANCEL always).
        #[test]
        fn find_and_cseq_follow_the_rfc(
            tags in proptest::collection::vec((prop::bool::ANY, prop::bool::ANY, token()), 1..6),
            requests in proptest::collection::vec((any::<u32>(), 0usize..4), 1..24),
        ) {
            let mut table = Dialogs::new(2);
            table.insert(bob("")).unwrap();
            for (keep_local, keep_remote, random) in tags {
                let local = if keep_local { "a6c85cf".to_owned() } else { format!("x{random}") };
                let remote = if keep_remote { "1928301774".to_owned() } else { format!("y{random}") };
                let text = from_alice("BYE", 1, "").as_bytes().to_vec();
                let text = String::from_utf8(text).unwrap()
                    .replace("tag=a6c85cf", &format!("tag={local}"))
                    .replace("tag=1928301774", &format!("tag={remote}"));
                let request = Message::parse_datagram(Bytes::from(text)).unwrap();
                prop_assert_eq!(table.find(&request).is_some(), keep_local && keep_remote);
                prop_assert!(is_in_dialog(&request));
            }

            let mut dialog = bob("");
            let mut highest = 314159u32;
            for (number, kind) in requests {
                let method = ["BYE", "INFO", "ACK", "CANCEL"][kind];
                let result = dialog.check_request(&from_alice(method, number, ""));
                if kind >= 2 {
                    prop_assert_eq!(result, Ok(()));
                } else if number > highest {
                    prop_assert_eq!(result, Ok(()));
                    highest = number;
                } else {
                    prop_assert_eq!(result, Err(InDialogError::OutOfOrder { received: number, remote: highest }));
                }
                prop_assert_eq!(dialog.remote_cseq(), Some(highest));
            }
        }
    }
}
