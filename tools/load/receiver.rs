//! Listener side of the user plane: threads that read every session's RTP socket (epoll +
//! `recvmmsg`, kernel receive timestamps) and check each stream as it arrives.
//!
//! Per listener slot (one RTP socket = one terminal's session in one group call or single
//! call) it checks, against the probe payload the talker wrote:
//!
//! - **loss / duplicates / reordering**: distinct packet indexes per spurt (compared with what
//!   was sent when the run ends), a bit already set, an index below the highest seen;
//! - **continuity** within a session: one SSRC; the sequence number advancing exactly as the
//!   talker's packet index did within a spurt and by exactly one across a talker switch; the
//!   timestamp advancing by the talker's packet time within a spurt, and across a switch by the
//!   wall-clock time since the previous packet (±100 ms) and at least one packet time; the marker
//!   bit on the first packet of a new spurt (docs/protocol.md, group bridge);
//! - **payload integrity** (the pattern after the probe fields) and that no talker hears itself;
//! - **latency**: mouth-to-ear (kernel receive time − send time) and switch latency (first
//!   packet of a spurt − the floor grant), both in microseconds.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::rtp;
use crate::stats::{self, lock, ReceiverOutput, Shared, SlotResult, SpurtSeen};

const BATCH: usize = 32;
const BUFFER: usize = 2048;
const CONTROL: usize = 64;
/// Spurts tracked at once per listener (older ones are closed).
const OPEN_SPURTS: usize = 4;
/// Highest packet index tracked in a spurt (bitmap bound).
const MAX_INDEX: u32 = 1 << 20;

/// One listener socket.
pub struct SlotSocket {
    pub slot: u32,
    pub socket: UdpSocket,
    /// RTP clock rate and samples per packet of the session's codec.
    pub clock_rate: u32,
    pub samples_per_packet: u32,
    /// The listener is served by a TCF other than the group's home (its packets cross a
    /// member TCF): its switch and mouth-to-ear latencies are kept apart.
    pub remote: bool,
}

struct OpenSpurt {
    spurt: u32,
    bits: Vec<u64>,
    unique: u32,
    highest: u32,
}

struct Listener {
    socket: UdpSocket,
    remote: bool,
    clock_rate: u32,
    samples_per_packet: u32,
    result: SlotResult,
    open: Vec<OpenSpurt>,
    /// Newest spurt id closed (packets of older spurts are late).
    closed_up_to: u32,
    session: u32,
    last: Option<Last>,
}

#[derive(Clone, Copy)]
struct Last {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    rx_ns: u64,
    sent_ns: u64,
    spurt: u32,
    index: u32,
}

impl Listener {
    /// Keeps the first few discontinuities, described, for the report.
    fn note(&mut self, text: String) {
        if self.result.notes.len() < 3 {
            self.result.notes.push(text);
        }
    }

    fn close_oldest(&mut self) {
        if let Some((position, _)) = self.open.iter().enumerate().min_by_key(|(_, open)| open.spurt) {
            let open = self.open.swap_remove(position);
            self.closed_up_to = self.closed_up_to.max(open.spurt);
            self.result.spurts.insert(
                open.spurt,
                SpurtSeen {
                    unique: open.unique,
                    bits: open.bits,
                },
            );
        }
    }

    fn finish(mut self) -> SlotResult {
        while !self.open.is_empty() {
            self.close_oldest();
        }
        self.result
    }

    /// Accounts one packet; returns (mouth-to-ear ns, switch ns when it opened a spurt).
    fn packet(&mut self, run: u32, packet: &[u8], rx_ns: u64) -> Option<(i64, Option<i64>)> {
        if rtp::is_rtcp(packet) {
            self.result.rtcp += 1;
            return None;
        }
        let Some(header) = rtp::parse_header(packet) else {
            self.result.foreign += 1;
            return None;
        };
        let Some((probe, intact)) = rtp::read_probe(&packet[header.payload_start..header.payload_end]) else {
            self.result.foreign += 1;
            return None;
        };
        if probe.run != run {
            self.result.foreign += 1;
            return None;
        }
        self.result.packets += 1;
        if !intact {
            self.result.corrupt += 1;
        }
        if probe.talker == self.result.slot {
            self.result.self_heard += 1;
            return None;
        }
        let mouth_to_ear = rx_ns as i64 - probe.sent_ns as i64;
        // Continuity, within one session.
        let newer = match self.last {
            Some(last) if last.spurt == probe.spurt => probe.index > last.index,
            Some(last) => probe.spurt > last.spurt,
            None => true,
        };
        if probe.session != self.session {
            self.session = probe.session;
            self.last = None;
        } else if let (Some(last), true) = (self.last, newer) {
            if header.ssrc != last.ssrc {
                self.result.ssrc_changes += 1;
            }
            let seq_delta = header.seq.wrapping_sub(last.seq);
            let ts_delta = header.timestamp.wrapping_sub(last.timestamp);
            if probe.spurt == last.spurt {
                let index_delta = probe.index - last.index;
                if u32::from(seq_delta) != index_delta & 0xffff {
                    self.result.seq_discontinuities += 1;
                    self.note(format!(
                        "spurt {}: seq +{seq_delta} for packet index +{index_delta}",
                        probe.spurt
                    ));
                }
                if ts_delta != index_delta.wrapping_mul(self.samples_per_packet) {
                    self.result.ts_discontinuities += 1;
                    self.note(format!(
                        "spurt {}: timestamp +{} for packet index +{index_delta}",
                        probe.spurt, ts_delta as i32
                    ));
                }
            } else {
                if seq_delta != 1 {
                    self.result.seq_discontinuities += 1;
                    self.note(format!("switch to spurt {}: seq +{}", probe.spurt, seq_delta as i16));
                }
                let elapsed = rx_ns.saturating_sub(last.rx_ns) as i64;
                let expected = elapsed as i128 * i128::from(self.clock_rate) / 1_000_000_000;
                let tolerance = i128::from(self.clock_rate) / 10;
                let advance = i128::from(ts_delta as i32);
                if advance < i128::from(self.samples_per_packet) || (advance - expected).abs() > tolerance {
                    self.result.ts_discontinuities += 1;
                    let ms = |samples: i128| samples as f64 * 1000.0 / f64::from(self.clock_rate);
                    self.note(format!(
                        "switch to spurt {}: timestamp +{advance} ({:.1} ms) with {:.1} ms between the packets' arrivals ({:.1} ms between their sending)",
                        probe.spurt,
                        ms(advance),
                        elapsed as f64 / 1e6,
                        (probe.sent_ns as i64 - last.sent_ns as i64) as f64 / 1e6
                    ));
                }
                if !header.marker {
                    self.result.marker_missing += 1;
                }
            }
        }
        if newer || self.last.is_none() {
            self.last = Some(Last {
                ssrc: header.ssrc,
                seq: header.seq,
                timestamp: header.timestamp,
                rx_ns,
                sent_ns: probe.sent_ns,
                spurt: probe.spurt,
                index: probe.index,
            });
        }
        // Loss, duplicates, reordering.
        let mut opened = None;
        let position = match self.open.iter().position(|open| open.spurt == probe.spurt) {
            Some(position) => position,
            None => {
                if probe.spurt <= self.closed_up_to {
                    self.result.late_spurt += 1;
                    return Some((mouth_to_ear, None));
                }
                if self.open.len() >= OPEN_SPURTS {
                    self.close_oldest();
                }
                self.open.push(OpenSpurt {
                    spurt: probe.spurt,
                    bits: Vec::new(),
                    unique: 0,
                    highest: 0,
                });
                if probe.grant_ns != 0 {
                    opened = Some(rx_ns as i64 - probe.grant_ns as i64);
                }
                self.open.len() - 1
            }
        };
        let open = &mut self.open[position];
        if probe.index < MAX_INDEX {
            let word = (probe.index / 64) as usize;
            let bit = 1u64 << (probe.index % 64);
            if open.bits.len() <= word {
                open.bits.resize(word + 1, 0);
            }
            if open.bits[word] & bit != 0 {
                self.result.duplicates += 1;
            } else {
                open.bits[word] |= bit;
                open.unique += 1;
                if open.unique > 1 && probe.index < open.highest {
                    self.result.reordered += 1;
                }
                open.highest = open.highest.max(probe.index);
            }
        }
        Some((mouth_to_ear, opened))
    }
}

/// Starts a receiver thread for `sockets`.
pub fn spawn(
    index: usize,
    sockets: Vec<SlotSocket>,
    shared: Arc<Shared>,
) -> std::io::Result<JoinHandle<ReceiverOutput>> {
    std::thread::Builder::new()
        .name(format!("load-rx-{index}"))
        .spawn(move || receive(sockets, &shared))
}

fn receive(sockets: Vec<SlotSocket>, shared: &Shared) -> ReceiverOutput {
    let mut mouth_to_ear = stats::histogram();
    let mut switch = stats::histogram();
    // [served by the group home, served by another node]
    let mut switch_by_place = [stats::histogram(), stats::histogram()];
    let mut mouth_to_ear_by_place = [stats::histogram(), stats::histogram()];
    let mut interval = stats::histogram();
    let mut kernel_timestamps = true;
    let mut listeners: Vec<Listener> = Vec::with_capacity(sockets.len());
    // SAFETY: plain syscall; the result is checked.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    for (position, slot) in sockets.into_iter().enumerate() {
        let _ = slot.socket.set_nonblocking(true);
        kernel_timestamps &= floorcast::io::stamp::enable(slot.socket.as_raw_fd());
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: position as u64,
        };
        // SAFETY: `epoll` and the socket fd are open; `event` is a valid epoll_event.
        unsafe {
            libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, slot.socket.as_raw_fd(), &mut event);
        }
        listeners.push(Listener {
            socket: slot.socket,
            remote: slot.remote,
            clock_rate: slot.clock_rate.max(1),
            samples_per_packet: slot.samples_per_packet,
            result: SlotResult {
                slot: slot.slot,
                ..SlotResult::default()
            },
            open: Vec::new(),
            closed_up_to: 0,
            session: 0,
            last: None,
        });
    }
    let mut buffers = vec![[0u8; BUFFER]; BATCH];
    let mut controls = vec![[0u64; CONTROL / 8]; BATCH];
    let mut iovecs: Vec<libc::iovec> = buffers
        .iter_mut()
        .map(|buffer| libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: BUFFER,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; an all-zero value is valid (null pointers, zero lengths).
    let mut messages: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (index, message) in messages.iter_mut().enumerate() {
        message.msg_hdr.msg_iov = &mut iovecs[index];
        message.msg_hdr.msg_iovlen = 1;
        message.msg_hdr.msg_control = controls[index].as_mut_ptr().cast();
    }
    // SAFETY: epoll_event is plain data.
    let mut events: Vec<libc::epoll_event> = (0..256).map(|_| unsafe { std::mem::zeroed() }).collect();
    let mut last_flush = Instant::now();
    let run = shared.run_id;
    let mut received_since_flush = 0u64;
    loop {
        let stopping = shared.stop_receivers.load(Ordering::Relaxed);
        // SAFETY: `events` has room for its length; `epoll` is open.
        let ready = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 10) };
        for event in events.iter().take(ready.max(0) as usize) {
            let position = event.u64 as usize;
            let Some(listener) = listeners.get_mut(position) else {
                continue;
            };
            loop {
                for message in messages.iter_mut() {
                    message.msg_hdr.msg_controllen = CONTROL as _;
                    message.msg_len = 0;
                }
                // SAFETY: every mmsghdr points at a live iovec/buffer and control buffer of the
                // stated sizes; the fd is open.
                let count = unsafe {
                    libc::recvmmsg(
                        listener.socket.as_raw_fd(),
                        messages.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if count <= 0 {
                    break;
                }
                let fallback = rtp::now_ns();
                for index in 0..count as usize {
                    let length = messages[index].msg_len as usize;
                    let rx_ns = match floorcast::io::stamp::from_control(&messages[index].msg_hdr) {
                        Some(ns) => ns,
                        None => {
                            kernel_timestamps = false;
                            fallback
                        }
                    };
                    let packet = &buffers[index][..length.min(BUFFER)];
                    if let Some((latency, opened)) = listener.packet(run, packet, rx_ns) {
                        received_since_flush += 1;
                        let place = usize::from(listener.remote);
                        stats::record_ns(&mut mouth_to_ear, latency);
                        stats::record_ns(&mut mouth_to_ear_by_place[place], latency);
                        stats::record_ns(&mut interval, latency);
                        if let Some(switch_ns) = opened {
                            stats::record_ns(&mut switch, switch_ns);
                            stats::record_ns(&mut switch_by_place[place], switch_ns);
                        }
                    }
                }
                if (count as usize) < BATCH {
                    break;
                }
            }
        }
        if last_flush.elapsed() >= Duration::from_millis(10) || stopping {
            shared.rx_packets.fetch_add(received_since_flush, Ordering::Relaxed);
            received_since_flush = 0;
            let _ = lock(&shared.live_latency).add(&interval);
            interval.reset();
            last_flush = Instant::now();
        }
        if stopping && ready <= 0 {
            break;
        }
    }
    // SAFETY: closing the epoll fd we created.
    unsafe {
        libc::close(epoll);
    }
    ReceiverOutput {
        slots: listeners.into_iter().map(Listener::finish).collect(),
        mouth_to_ear,
        switch,
        switch_by_place,
        mouth_to_ear_by_place,
        kernel_timestamps,
    }
}
