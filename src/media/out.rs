//! The outgoing batch a shard fills and an I/O backend flushes.
//!
//! A message is an optional header (bytes in the batch's arena: a rewritten RTP header, or a
//! whole generated RTCP packet) followed by an optional body that points into a receive buffer
//! (the shared payload of a fan-out: never copied per listener). Messages for one socket are
//! emitted next to each other so one `sendmmsg` carries them all.

use std::net::SocketAddr;

/// Which of a leg's sockets sends a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The RTP socket.
    Rtp,
    /// The RTCP socket (the RTP socket with rtcp-mux).
    Rtcp,
}

/// The body of a message: bytes of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxSlice {
    /// Receive buffer index (as given with the received packet).
    pub buffer: u32,
    /// Start offset in that buffer.
    pub start: u32,
    /// End offset (exclusive).
    pub end: u32,
}

/// One datagram to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutMessage {
    /// Shard slot of the sending leg.
    pub leg: u32,
    /// Which socket of the leg.
    pub channel: Channel,
    /// Destination.
    pub destination: SocketAddr,
    /// Header bytes: `arena[head_start..head_end]` (empty: none).
    pub head_start: u32,
    /// End of the header bytes in the arena.
    pub head_end: u32,
    /// Body from a receive buffer, if any.
    pub body: Option<RxSlice>,
}

impl OutMessage {
    /// Total datagram length.
    pub fn len(&self, _arena: &[u8]) -> usize {
        let body = self.body.map_or(0, |body| (body.end - body.start) as usize);
        (self.head_end - self.head_start) as usize + body
    }

    /// Whether the datagram is empty.
    pub fn is_empty(&self, arena: &[u8]) -> bool {
        self.len(arena) == 0
    }
}

/// Messages waiting to be sent, with the arena their headers live in. Capacity is kept between
/// flushes, so a steady state allocates nothing.
#[derive(Debug, Default)]
pub struct OutBatch {
    /// The messages, grouped by sending socket.
    pub messages: Vec<OutMessage>,
    /// Header bytes.
    pub arena: Vec<u8>,
}

impl OutBatch {
    /// An empty batch with room for `messages` messages.
    pub fn with_capacity(messages: usize) -> Self {
        Self {
            messages: Vec::with_capacity(messages),
            arena: Vec::with_capacity(messages * 16),
        }
    }

    /// Forgets every message, keeping capacity.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.arena.clear();
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Queues a body-only message (a relayed packet, unchanged).
    #[inline]
    pub fn push_body(&mut self, leg: u32, channel: Channel, destination: SocketAddr, body: RxSlice) {
        let at = self.arena.len() as u32;
        self.messages.push(OutMessage {
            leg,
            channel,
            destination,
            head_start: at,
            head_end: at,
            body: Some(body),
        });
    }

    /// Queues a message whose header is `head` and whose body (if any) is `body`.
    #[inline]
    pub fn push(&mut self, leg: u32, channel: Channel, destination: SocketAddr, head: &[u8], body: Option<RxSlice>) {
        let head_start = self.arena.len() as u32;
        self.arena.extend_from_slice(head);
        let head_end = self.arena.len() as u32;
        self.messages.push(OutMessage {
            leg,
            channel,
            destination,
            head_start,
            head_end,
            body,
        });
    }

    /// The header bytes of a message.
    pub fn head(&self, message: &OutMessage) -> &[u8] {
        self.arena
            .get(message.head_start as usize..message.head_end as usize)
            .unwrap_or(&[])
    }
}
