//! Video (F-VID-01, F-VID-02).
//!
//! # F-VID-01: video in a single call
//!
//! A single call ([`super::call`]) may carry a video stream besides its audio: in the initial
//! INVITE or added, changed or removed by a re-INVITE. An anchoring hop relays it like the
//! audio, on a second relay bridge of its own (two legs: one facing side A, one facing side
//! B); the relayed video m-line ([`crate::sdp::video_of`]: the first active `m=video` over
//! RTP/AVP or RTP/AVPF) is re-anchored at the leg facing the receiver of the body, hop by hop,
//! offer and answer alike ([`crate::sdp::reanchor_av`]). Video formats are passed through as
//! offered: no codec choice, no transcoding; the legs pass payload types unchanged.
//!
//! - A malformed relayed video m-line (no format, a format that is not a payload type number,
//!   a port count, an unusable address) gets 488, like an offer without a usable audio codec.
//! - No video bridge can be had (ports): the video m-line goes on with port 0 (declined), the
//!   call goes on with audio.
//! - The answerer declines the video (port 0) or answers it wrongly: its bridge is freed, the
//!   m-line goes back with port 0.
//! - A re-INVITE whose offer has no active video any more (port 0) frees the video bridge once
//!   the far side accepted it (2xx); a re-INVITE that adds video creates the bridge at once and
//!   frees it again if the far side refuses the re-INVITE or declines the video.
//! - The call's end frees both bridges.
//!
//! Non-anchoring hops pass the SDP through unchanged, video included. Ambient viewing
//! (calltype 7, [`super::ambient`]) is a single call: its video is relayed the same way.
//!
//! Wire formats: `docs/protocol.md`, section "Video (F-VID-01, F-VID-02)".

use crate::media::api::{BridgeKind, LegSpec};
use crate::sdp::{Ports, VideoStream};

use super::call::{leg_spec, Anchor, Side};
use super::*;

/// What a re-INVITE does to the call's video bridge, applied when its answer comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum VideoChange {
    /// Nothing to do: the video bridge (if any) stays as it is.
    Keep,
    /// The bridge was created for this re-INVITE: freed again if it fails or video is declined.
    Added,
    /// The offer removed the video: the bridge is freed on a 2xx.
    Removed,
}

/// The ports of the leg of `anchor` facing `side`, for [`crate::sdp::reanchor_av`].
pub(super) fn ports_facing(anchor: &Anchor, side: Side) -> Ports {
    let leg = match side {
        Side::A => &anchor.a,
        Side::B => &anchor.b,
    };
    Ports {
        rtp: leg.local_rtp.port(),
        rtcp: Some(leg.local_rtcp.port()),
    }
}

/// The spec of a video leg sending to the stream's remote address.
pub(super) fn video_spec(stream: &VideoStream) -> LegSpec {
    leg_spec(stream.remote_rtp, stream.remote_rtcp, false)
}

impl Tcf {
    /// A video relay bridge for a call whose side `from` offered `stream`: the leg facing
    /// `from` sends to the offered address, the other learns its remote from the answer.
    /// `None`: no media resources (the video is then declined).
    pub(super) fn video_bridge(&mut self, from: Side, stream: &VideoStream) -> Option<Anchor> {
        let bridge = self.media.create_bridge(BridgeKind::Relay).ok()?;
        let (spec_a, spec_b) = match from {
            Side::A => (video_spec(stream), LegSpec::default()),
            Side::B => (LegSpec::default(), video_spec(stream)),
        };
        let legs = self
            .media
            .add_leg(bridge, spec_a)
            .and_then(|a| Ok((a, self.media.add_leg(bridge, spec_b)?)));
        match legs {
            Ok((a, b)) => Some(Anchor { bridge, a, b }),
            Err(error) => {
                tracing::warn!(%error, "no video relay legs: video declined");
                self.media.remove_bridge(bridge);
                None
            }
        }
    }

    /// Frees a call's video bridge.
    pub(super) fn free_video(&mut self, video: &mut Option<Anchor>) {
        if let Some(anchor) = video.take() {
            self.media.remove_bridge(anchor.bridge);
        }
    }
}
