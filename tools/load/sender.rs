//! Talker side of the user plane: one thread paces every active talker's RTP (the codec's
//! packet rate, first packet at once when a spurt starts) and stamps each probe with its send
//! time.
//!
//! A talker keeps its SSRC, sequence number and timestamp across its spurts, as a phone does:
//! the sequence runs on by one per packet, the timestamp by the packet time, and across a pause
//! by the wall-clock time of the pause.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

use crate::rtp::{self, Probe};
use crate::stats::Shared;

/// What a spurt sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub packets: u32,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// The media of one talker's spurt.
pub struct Spurt {
    /// The talker's slot (its RTP socket for the session).
    pub slot: u32,
    pub socket: Arc<UdpSocket>,
    pub destination: SocketAddr,
    pub payload_type: u8,
    pub session: u32,
    pub spurt: u32,
    pub grant_ns: u64,
    /// How many listeners should hear each packet (for the live loss figure).
    pub listeners: u32,
}

pub enum SendCommand {
    Start(Spurt),
    Stop { slot: u32, reply: oneshot::Sender<Sent> },
    Shutdown,
}

/// Pacing and packet shape.
#[derive(Debug, Clone, Copy)]
pub struct SendConfig {
    pub packet_rate: u32,
    pub payload_size: usize,
    pub clock_rate: u32,
}

impl SendConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(1_000_000_000 / u64::from(self.packet_rate.max(1)))
    }

    pub fn samples_per_packet(&self) -> u32 {
        self.clock_rate / self.packet_rate.max(1)
    }
}

struct Talker {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    /// When the timestamp was last advanced for a packet.
    stamped_at: Option<Instant>,
}

struct Active {
    spurt: Spurt,
    next_due: Instant,
    index: u32,
    sent: Sent,
}

/// Starts the sender thread.
pub fn spawn(config: SendConfig, shared: Arc<Shared>) -> std::io::Result<(Sender<SendCommand>, JoinHandle<()>)> {
    let (commands, receiver) = crossbeam_channel::unbounded();
    let handle = std::thread::Builder::new()
        .name("load-tx".to_owned())
        .spawn(move || send_loop(config, &shared, &receiver))?;
    Ok((commands, handle))
}

fn send_loop(config: SendConfig, shared: &Shared, commands: &Receiver<SendCommand>) {
    let interval = config.interval();
    let samples = config.samples_per_packet();
    let mut talkers: HashMap<u32, Talker> = HashMap::new();
    let mut active: Vec<Active> = Vec::new();
    let mut packet = vec![0u8; 12 + config.payload_size.max(rtp::PROBE_HEADER)];
    let handle = |command: SendCommand, active: &mut Vec<Active>| -> bool {
        match command {
            SendCommand::Start(spurt) => {
                active.retain(|running| running.spurt.slot != spurt.slot);
                active.push(Active {
                    spurt,
                    next_due: Instant::now(),
                    index: 0,
                    sent: Sent::default(),
                });
                true
            }
            SendCommand::Stop { slot, reply } => {
                let sent = match active.iter().position(|running| running.spurt.slot == slot) {
                    Some(position) => active.swap_remove(position).sent,
                    None => Sent::default(),
                };
                let _ = reply.send(sent);
                true
            }
            SendCommand::Shutdown => false,
        }
    };
    loop {
        let now = Instant::now();
        let horizon = now + Duration::from_micros(200);
        for running in active.iter_mut() {
            if running.next_due > horizon {
                continue;
            }
            if now.saturating_duration_since(running.next_due) > interval * 5 {
                // Far behind (the machine stalled us): resume at the rate, count it.
                shared.sender_late.fetch_add(1, Ordering::Relaxed);
                running.next_due = now;
            }
            let slot = running.spurt.slot;
            let talker = talkers.entry(slot).or_insert_with(|| Talker {
                ssrc: rand::random(),
                seq: rand::random(),
                timestamp: rand::random(),
                stamped_at: None,
            });
            let marker = running.index == 0;
            talker.seq = talker.seq.wrapping_add(1);
            talker.timestamp = match (marker, talker.stamped_at) {
                // A new spurt: the clock ran on during the pause.
                (true, Some(at)) => {
                    let paused = now.saturating_duration_since(at);
                    let advance = (paused.as_nanos() * u128::from(config.clock_rate) / 1_000_000_000) as u32;
                    talker.timestamp.wrapping_add(advance.max(samples))
                }
                _ => talker.timestamp.wrapping_add(samples),
            };
            talker.stamped_at = Some(now);
            rtp::write_header(
                &mut packet,
                marker,
                running.spurt.payload_type,
                talker.seq,
                talker.timestamp,
                talker.ssrc,
            );
            let sent_ns = rtp::now_ns();
            rtp::write_probe(
                &Probe {
                    run: shared.run_id,
                    session: running.spurt.session,
                    spurt: running.spurt.spurt,
                    index: running.index,
                    talker: slot,
                    sent_ns,
                    grant_ns: running.spurt.grant_ns,
                },
                &mut packet[12..],
            );
            match running.spurt.socket.send_to(&packet, running.spurt.destination) {
                Ok(_) => {
                    shared.tx_packets.fetch_add(1, Ordering::Relaxed);
                    shared
                        .expected_deliveries
                        .fetch_add(u64::from(running.spurt.listeners), Ordering::Relaxed);
                    if running.sent.packets == 0 {
                        running.sent.first_ns = sent_ns;
                    }
                    running.sent.packets += 1;
                    running.sent.last_ns = sent_ns;
                }
                Err(_) => {
                    shared.tx_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            running.index += 1;
            running.next_due += interval;
        }
        let next = active
            .iter()
            .map(|running| running.next_due)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(50));
        let wait = next.saturating_duration_since(Instant::now());
        match commands.recv_timeout(wait) {
            Ok(command) => {
                if !handle(command, &mut active) {
                    return;
                }
                while let Ok(command) = commands.try_recv() {
                    if !handle(command, &mut active) {
                        return;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
