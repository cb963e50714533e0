//! Ambient listening and viewing (F-AMB-01, F-AMB-02): a dispatcher listens to (or watches)
//! what a user's terminal picks up, without the terminal alerting its user.
//!
//! # Shape
//!
//! An ambient session is a single call ([`super::call`]) with its own `pttcall` call type
//! ([`Ambient::calltype`]): the DC places it like a call to the target, and it is routed the
//! same way (DC's serving TCF → DC's home → target's home → target's serving TCF → terminal),
//! a B2BUA at every hop, media anchored as for calls. What differs, decided here and applied by
//! the hooks in `call.rs`:
//!
//! - only a dispatcher starts one (`403` at the DC's serving TCF and at its home otherwise);
//! - it marks nobody busy (the target keeps its service, a DC may listen to several users),
//!   but a target in a call its home knows of gets `486`; no ring timer, no call forwarding;
//! - towards the terminal the INVITE says `answermode=direct` whatever the target's provisioned
//!   answer mode, and carries the call type: the terminal answers at once, without alerting;
//! - media is the DC's offer (`a=recvonly`) relayed to the terminal, which answers
//!   `a=sendonly`; the relay carries the audio stream and, for ambient viewing, the video stream
//!   on a second bridge (F-VID-01, module [`super::video`]);
//! - every BYE the node sends for it carries `Ptt-Extension: pttrelease;cause=<n>`: the cause
//!   of the BYE that ended it, else 64 (ordinary release). A BYE's `pttrelease` is passed on
//!   the same way for every single call (`call.rs`).
//!
//! Wire formats: `docs/protocol.md`, section "Ambient listening and viewing".

use crate::control::provisioning::UserKind;
use crate::sip::headers::PttExtension;

use super::*;

/// Which ambient service a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ambient {
    /// Ambient listening: audio from the terminal to the DC.
    Listening,
    /// Ambient viewing: audio and video offered (the relay carries both, F-VID-01).
    Viewing,
}

/// `pttcall;calltype=` of ambient listening.
pub(super) const CALLTYPE_LISTENING: &str = "6";
/// `pttcall;calltype=` of ambient viewing.
pub(super) const CALLTYPE_VIEWING: &str = "7";
/// The token deployed dispatcher clients may use instead of `pttcall` (accepted, never sent).
pub(super) const TOKEN: &str = "pttambiancelistening";
/// The release cause of an ordinary end (no cause received).
pub(super) const ORDINARY_CAUSE: &str = "64";

impl Ambient {
    /// The `calltype` value this node sends.
    pub(super) fn calltype(self) -> &'static str {
        match self {
            Ambient::Listening => CALLTYPE_LISTENING,
            Ambient::Viewing => CALLTYPE_VIEWING,
        }
    }

    /// The ambient service of a call type, if it is one.
    pub(super) fn of_calltype(calltype: &str) -> Option<Ambient> {
        match calltype.trim() {
            CALLTYPE_LISTENING => Some(Ambient::Listening),
            CALLTYPE_VIEWING => Some(Ambient::Viewing),
            _ => None,
        }
    }

    /// The ambient service a received INVITE asks for: `pttcall;calltype=6|7`, or the
    /// `pttambiancelistening` token (viewing with `calltype=7`, listening otherwise).
    pub(super) fn of_request(extension: Option<&PttExtension<'_>>) -> Option<Ambient> {
        let extension = extension?;
        let calltype = extension.param("calltype");
        let calltype = calltype.as_deref().and_then(|value| std::str::from_utf8(value).ok());
        let token = extension.value();
        if token.eq_ignore_ascii_case(TOKEN) {
            return Some(calltype.and_then(Ambient::of_calltype).unwrap_or(Ambient::Listening));
        }
        if token.eq_ignore_ascii_case("pttcall") {
            return calltype.and_then(Ambient::of_calltype);
        }
        None
    }

    /// The service's name, for reason phrases and logs.
    pub(super) fn name(self) -> &'static str {
        match self {
            Ambient::Listening => "ambient listening",
            Ambient::Viewing => "ambient viewing",
        }
    }
}

/// The `pttrelease;cause=<n>` a received BYE carries, normalised for passing on (`None`: no
/// `pttrelease`, or a cause that is not 1–3 digits).
pub(super) fn release_of(request: &Message) -> Option<String> {
    let header = request.headers_named("Ptt-Extension").next()?;
    let extension = PttExtension::parse(header.value).ok()?;
    if !extension.value().eq_ignore_ascii_case("pttrelease") {
        return None;
    }
    let cause = extension.param("cause")?;
    if cause.is_empty() || cause.len() > 3 || !cause.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut text = String::with_capacity(20);
    text.push_str("pttrelease;cause=");
    text.push_str(std::str::from_utf8(&cause).ok()?);
    Some(text)
}

/// The `pttrelease` of a BYE ending an ambient call for which none was received.
pub(super) fn ordinary_release() -> String {
    super::concat(&["pttrelease;cause=", ORDINARY_CAUSE])
}

impl Tcf {
    /// Whether `caller` may start `ambient` on `target`; `Err`: the status to answer.
    /// Checked where the caller's subscription is known (its serving TCF and its home).
    pub(super) fn ambient_allowed(
        &self,
        ambient: Ambient,
        caller: &Number,
        target: &Number,
    ) -> Result<(), (u16, &'static str)> {
        let dispatcher = self
            .subscribers
            .user(caller)
            .is_some_and(|user| user.kind == UserKind::Dispatcher);
        if !dispatcher {
            tracing::debug!(%caller, %target, service = ambient.name(), "refused: not a dispatcher");
            return Err((403, "Forbidden (ambient listening is for dispatchers)"));
        }
        if caller == target {
            return Err((403, "Forbidden (ambient listening on oneself)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extension(text: &str) -> Option<Ambient> {
        let parsed = PttExtension::parse(text.as_bytes()).ok();
        Ambient::of_request(parsed.as_ref())
    }

    #[test]
    fn call_types_and_the_token_name_the_service() {
        assert_eq!(extension("pttcall;calltype=6"), Some(Ambient::Listening));
        assert_eq!(extension("PTTCALL;CallType=7;priority=12"), Some(Ambient::Viewing));
        assert_eq!(extension("pttambiancelistening"), Some(Ambient::Listening));
        assert_eq!(extension("pttambiancelistening;calltype=7"), Some(Ambient::Viewing));
        assert_eq!(extension("pttambiancelistening;calltype=zz"), Some(Ambient::Listening));
        for other in [
            "pttcall;calltype=1",
            "pttcall;calltype=4",
            "pttcall",
            "pttcall;calltype=66",
            "pttcall;calltype=",
            "pttrequest;calltype=6",
        ] {
            assert_eq!(extension(other), None, "{other}");
        }
        assert_eq!(Ambient::of_request(None), None);
        for ambient in [Ambient::Listening, Ambient::Viewing] {
            assert_eq!(Ambient::of_calltype(ambient.calltype()), Some(ambient));
        }
    }

    fn bye(extension: &str) -> Message {
        let text = format!(
            "BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5000;branch=z9hG4bK1\r\n\
             From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\
             Ptt-Extension: {extension}\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse_datagram(Bytes::from(text)).expect("a BYE")
    }

    #[test]
    fn a_release_cause_is_passed_on_normalised_or_not_at_all() {
        assert_eq!(
            release_of(&bye("pttrelease;cause=64")).as_deref(),
            Some("pttrelease;cause=64")
        );
        assert_eq!(
            release_of(&bye("PttRelease ; UDN=9200 ; Cause=\"17\"")).as_deref(),
            Some("pttrelease;cause=17")
        );
        for hostile in [
            "pttrelease",
            "pttrelease;cause=",
            "pttrelease;cause=1234",
            "pttrelease;cause=6x",
            "pttrelease;cause=\"6 7\"",
            "pttreleasefloor;cause=64",
            ";;;",
        ] {
            assert_eq!(release_of(&bye(hostile)), None, "{hostile:?}");
        }
        assert_eq!(ordinary_release(), "pttrelease;cause=64");
    }
}
