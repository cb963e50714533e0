//! A media worker: one thread that owns its legs' sockets and a [`Shard`] outright, driven by
//! level-triggered epoll, `recvmmsg` and batched sends.
//!
//! One loop turn: drain control commands; wait for readiness (or the next timer); take one
//! batch (at most `batch_size` datagrams) from each ready socket in turn, hand it to the shard
//! and send what it produced before touching the next socket; run due timers. Level-triggered
//! epoll means a socket that still holds datagrams after its batch is reported again on the
//! next turn: no socket can starve the others, and none is ever forgotten after an overload
//! (the failure that stopped a widely deployed relay for good).

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use std::{io, mem};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::io::udp::{RecvBatch, SendBatch, SendOutcome};
use crate::io::uring::UringSender;
use crate::media::api::{BridgeId, BridgeKind, Event, LegId, LegSpec, LegStats, WorkerStats};
use crate::media::out::{Channel, OutBatch};
use crate::media::shard::{Now, Shard, ShardConfig, StreamOrigin};
use crate::media::stats::{DropCause, DROP_CAUSES};

const WAKE_TOKEN: u64 = u64::MAX;
const MAX_EVENTS: usize = 256;
/// Messages queued before the batch is flushed even mid-fan-out (bounds memory and latency).
const FLUSH_THRESHOLD: usize = 4096;

/// A leg's sockets, owned by the worker that runs the leg.
#[derive(Debug)]
pub struct LegSockets {
    /// RTP socket (also RTCP with rtcp-mux).
    pub rtp: UdpSocket,
    /// RTCP socket (none with rtcp-mux).
    pub rtcp: Option<UdpSocket>,
}

/// Orders from the control plane to a worker.
#[derive(Debug)]
pub enum Command {
    /// Create a bridge.
    AddBridge {
        /// Its identifier.
        id: BridgeId,
        /// Relay or group.
        kind: BridgeKind,
    },
    /// Remove a bridge and all its legs.
    RemoveBridge {
        /// The bridge.
        id: BridgeId,
    },
    /// Add a leg with its sockets.
    AddLeg {
        /// The leg.
        id: LegId,
        /// Its bridge.
        bridge: BridgeId,
        /// Its description.
        spec: LegSpec,
        /// Numbering of the stream the engine originates on it.
        origin: StreamOrigin,
        /// Its sockets.
        sockets: LegSockets,
    },
    /// Change a leg's description.
    UpdateLeg {
        /// The leg.
        id: LegId,
        /// The new description.
        spec: LegSpec,
    },
    /// Remove a leg (its sockets close).
    RemoveLeg {
        /// The leg.
        id: LegId,
    },
    /// Set or clear a group bridge's source (the floor holder).
    SetSource {
        /// The bridge.
        bridge: BridgeId,
        /// The new source.
        leg: Option<LegId>,
    },
    /// Report statistics.
    Stats {
        /// Include every leg.
        with_legs: bool,
        /// Where to answer.
        reply: Sender<WorkerStats>,
    },
    /// Report one leg's statistics.
    LegStats {
        /// The leg.
        id: LegId,
        /// Where to answer.
        reply: Sender<Option<LegStats>>,
    },
    /// Stop the worker.
    Shutdown,
}

/// Settings of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker index (for logs and metrics).
    pub index: usize,
    /// Datagrams per `recvmmsg`.
    pub batch_size: usize,
    /// Send with io_uring (falls back to `sendmmsg` when unavailable).
    pub io_uring: bool,
    /// Pause after a busy turn so the next one takes more datagrams per wake-up.
    pub rx_coalesce: std::time::Duration,
    /// Pin the worker thread to this CPU.
    pub cpu: Option<usize>,
    /// Shard settings.
    pub shard: ShardConfig,
}

/// The wake-up side of a worker's eventfd: the control plane writes to it after queueing a
/// command so the worker leaves `epoll_wait` at once.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// Wakes the worker.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// The worker's state.
pub struct Worker {
    config: WorkerConfig,
    shard: Shard,
    epoll: OwnedFd,
    wake: RawFd,
    commands: Receiver<Command>,
    events: Sender<Event>,
    sockets: Vec<Option<LegSockets>>,
    /// Last `SO_RXQ_OVFL` count seen per slot and channel.
    overflow: Vec<[u32; 2]>,
    rx: RecvBatch,
    tx: SendBatch,
    out: OutBatch,
    uring: Option<UringSender>,
    clock_origin: Instant,
    wakeups: u64,
    events_lost: u64,
    /// Drops already reported in the log, and when the next report may be written.
    logged_drops: [u64; DROP_CAUSES],
    next_drop_log_ns: u64,
}

/// Drops are summarised in the log at most this often (never per packet).
const DROP_LOG_INTERVAL_NS: u64 = 10_000_000_000;

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("index", &self.config.index).finish()
    }
}

impl Worker {
    /// Creates a worker and the waker for it.
    pub fn new(
        config: WorkerConfig,
        commands: Receiver<Command>,
        events: Sender<Event>,
        clock_origin: Instant,
    ) -> io::Result<(Worker, Waker)> {
        // SAFETY: plain syscalls; the fds are checked and wrapped in OwnedFd at once.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        let wake_raw = wake.as_raw_fd();
        epoll_add(epoll.as_raw_fd(), wake_raw, WAKE_TOKEN)?;
        let uring = if config.io_uring {
            match UringSender::new(1024) {
                Ok(sender) => Some(sender),
                Err(error) => {
                    tracing::warn!(worker = config.index, %error, "io_uring unavailable, sending with sendmmsg");
                    None
                }
            }
        } else {
            None
        };
        let worker = Worker {
            shard: Shard::new(config.shard.clone()),
            rx: RecvBatch::new(config.batch_size),
            tx: SendBatch::new(256),
            out: OutBatch::with_capacity(256),
            config,
            epoll,
            wake: wake_raw,
            commands,
            events,
            sockets: Vec::new(),
            overflow: Vec::new(),
            uring,
            clock_origin,
            wakeups: 0,
            events_lost: 0,
            logged_drops: [0; DROP_CAUSES],
            next_drop_log_ns: 0,
        };
        // The waker owns the eventfd; the worker keeps the raw number (it lives as long as the
        // engine keeps the waker, which outlives the worker thread).
        Ok((worker, Waker { fd: wake }))
    }

    /// Whether sends go through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.uring.is_some()
    }

    fn now(&self) -> Now {
        let mono_ns = self.clock_origin.elapsed().as_nanos() as u64;
        let unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Now { mono_ns, unix_ns }
    }

    /// Runs until a [`Command::Shutdown`] arrives or the command channel closes.
    pub fn run(mut self) {
        if let Some(cpu) = self.config.cpu {
            if let Err(error) = pin_to_cpu(cpu) {
                tracing::warn!(worker = self.config.index, cpu, %error, "cannot pin media worker");
            }
        }
        // SAFETY: all-zero is a valid epoll_event array.
        let mut ready: [libc::epoll_event; MAX_EVENTS] = unsafe { mem::zeroed() };
        let mut next_timer = 0u64;
        loop {
            if !self.drain_commands() {
                return;
            }
            let now = self.now();
            if now.mono_ns >= next_timer {
                next_timer = self.run_timers(now);
            }
            let wait_ms = next_timer.saturating_sub(now.mono_ns).div_ceil(1_000_000).min(1000) as i32;
            // SAFETY: `ready` has room for MAX_EVENTS entries.
            let count =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), ready.as_mut_ptr(), MAX_EVENTS as i32, wait_ms) };
            if count < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(worker = self.config.index, %error, "epoll_wait failed; worker stops");
                return;
            }
            self.wakeups += 1;
            // Commands first, so a floor change queued before a packet applies to it.
            if !self.drain_commands() {
                return;
            }
            let now = self.now();
            let mut traffic = false;
            for event in ready.iter().take(count as usize) {
                let token = event.u64;
                if token == WAKE_TOKEN {
                    let mut value = 0u64;
                    // SAFETY: reading 8 bytes into a u64 from our eventfd.
                    let _ = unsafe { libc::read(self.wake, (&mut value as *mut u64).cast(), 8) };
                    continue;
                }
                traffic |= self.service(token, now);
            }
            // Coalescing: after a turn with traffic, let packets gather for a moment so the
            // next turn takes many per wake-up (wake-ups, not packets, dominate the cost at
            // PTT rates). Bounded to one pause per turn, so it adds at most that much latency.
            if traffic && !self.config.rx_coalesce.is_zero() {
                std::thread::sleep(self.config.rx_coalesce);
            }
        }
    }

    /// Receives one batch from the socket behind `token`, processes and sends it. Returns
    /// whether anything was received.
    fn service(&mut self, token: u64, now: Now) -> bool {
        let slot = (token >> 1) as u32;
        let channel = if token & 1 == 0 { Channel::Rtp } else { Channel::Rtcp };
        let Some(Some(sockets)) = self.sockets.get(slot as usize) else {
            return false;
        };
        let fd = match channel {
            Channel::Rtp => sockets.rtp.as_raw_fd(),
            Channel::Rtcp => match &sockets.rtcp {
                Some(socket) => socket.as_raw_fd(),
                None => return false,
            },
        };
        // Bound the messages one batch can produce: a 1->1000 fan-out takes fewer packets per
        // turn than a relay, so the out batch (and the time before other sockets get a turn)
        // stays bounded.
        let limit = (FLUSH_THRESHOLD / self.shard.fanout_width(slot)).clamp(1, self.config.batch_size);
        match self.rx.receive_at_most(fd, limit) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(worker = self.config.index, %error, "recvmmsg failed");
                return false;
            }
        }
        if let Some(count) = self.rx.overflow_count() {
            if let Some(seen) = self.overflow.get_mut(slot as usize) {
                let index = usize::from(channel == Channel::Rtcp);
                let delta = count.wrapping_sub(seen[index]);
                seen[index] = count;
                if delta > 0 {
                    self.shard.kernel_dropped(slot, u64::from(delta));
                }
            }
        }
        let events = &self.events;
        let events_lost = &mut self.events_lost;
        let mut sink = |event: Event| {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = events.try_send(event) {
                *events_lost += 1;
            }
        };
        match channel {
            Channel::Rtp => self.shard.on_rtp(slot, &self.rx, now, &mut self.out, &mut sink),
            Channel::Rtcp => self.shard.on_rtcp(slot, &self.rx, now, &mut self.out, &mut sink),
        }
        self.flush();
        true
    }

    fn run_timers(&mut self, now: Now) -> u64 {
        let events = &self.events;
        let events_lost = &mut self.events_lost;
        let mut sink = |event: Event| {
            if events.try_send(event).is_err() {
                *events_lost += 1;
            }
        };
        let next = self.shard.poll_timers(now, &mut self.out, &mut sink);
        self.flush();
        if now.mono_ns >= self.next_drop_log_ns {
            self.next_drop_log_ns = now.mono_ns + DROP_LOG_INTERVAL_NS;
            self.log_drops();
        }
        next.min(self.next_drop_log_ns)
    }

    /// Rate-limited log of hostile or failed input: one line per cause that grew since the
    /// last report, at most every ten seconds. The counters themselves are exact.
    fn log_drops(&mut self) {
        let totals = self.shard.totals();
        for cause in DropCause::ALL {
            let count = totals.drops(cause);
            let new = count - self.logged_drops[cause as usize].min(count);
            self.logged_drops[cause as usize] = count;
            if new == 0 || matches!(cause, DropCause::NotHolder | DropCause::Late | DropCause::Duplicate) {
                continue; // normal floor-control and network behaviour, not worth a log line
            }
            tracing::warn!(
                worker = self.config.index,
                cause = cause.name(),
                new,
                total = count,
                "packets dropped"
            );
        }
    }

    /// Sends everything in the out batch: one `sendmmsg` per run of messages from the same
    /// socket, or one io_uring submission for all of them.
    fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let messages = &self.out.messages;
        self.tx.prepare(messages, &self.out.arena, &self.rx);
        if let Some(uring) = self.uring.as_mut() {
            let sockets = &self.sockets;
            let fds = messages
                .iter()
                .map(|message| socket_fd(sockets, message.leg, message.channel));
            match uring.send_all(&self.tx, fds) {
                Ok(results) => {
                    let mut start = 0;
                    while start < messages.len() {
                        let (leg, channel) = (messages[start].leg, messages[start].channel);
                        let mut end = start + 1;
                        while end < messages.len() && messages[end].leg == leg && messages[end].channel == channel {
                            end += 1;
                        }
                        let mut outcome = SendOutcome::default();
                        for (index, result) in results.iter().enumerate().take(end).skip(start) {
                            if *result >= 0 {
                                outcome.packets += 1;
                                outcome.bytes += self.tx.length(index);
                            } else {
                                outcome.failed += 1;
                            }
                        }
                        self.shard
                            .sent(leg, channel, outcome.packets, outcome.bytes, outcome.failed);
                        start = end;
                    }
                    self.out.clear();
                    return;
                }
                Err(error) => {
                    tracing::warn!(worker = self.config.index, %error, "io_uring send failed; using sendmmsg from now on");
                    self.uring = None;
                }
            }
        }
        let mut start = 0;
        while start < messages.len() {
            let (leg, channel) = (messages[start].leg, messages[start].channel);
            let mut end = start + 1;
            while end < messages.len() && messages[end].leg == leg && messages[end].channel == channel {
                end += 1;
            }
            let outcome = match socket_fd(&self.sockets, leg, channel) {
                Some(fd) => self.tx.send_mmsg(fd, start..end),
                None => SendOutcome {
                    failed: (end - start) as u64,
                    ..SendOutcome::default()
                },
            };
            self.shard
                .sent(leg, channel, outcome.packets, outcome.bytes, outcome.failed);
            start = end;
        }
        self.out.clear();
    }

    /// Applies every queued command. Returns false when the worker must stop.
    fn drain_commands(&mut self) -> bool {
        loop {
            let command = match self.commands.try_recv() {
                Ok(command) => command,
                Err(crossbeam_channel::TryRecvError::Empty) => return true,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
            };
            if !self.apply(command) {
                return false;
            }
        }
    }

    fn apply(&mut self, command: Command) -> bool {
        let index = self.config.index;
        match command {
            Command::AddBridge { id, kind } => {
                if let Err(error) = self.shard.add_bridge(id, kind) {
                    tracing::warn!(worker = index, %id, %error, "add bridge refused");
                }
            }
            Command::RemoveBridge { id } => match self.shard.remove_bridge(id) {
                Ok(slots) => {
                    for slot in slots {
                        self.close_slot(slot);
                    }
                }
                Err(error) => tracing::warn!(worker = index, %id, %error, "remove bridge refused"),
            },
            Command::AddLeg {
                id,
                bridge,
                spec,
                origin,
                sockets,
            } => {
                let now = self.now();
                match self.shard.add_leg(id, bridge, &spec, origin, now) {
                    Ok(slot) => {
                        if let Err(error) = self.register(slot, sockets) {
                            tracing::error!(worker = index, %id, %error, "cannot watch leg sockets");
                            let _ = self.shard.remove_leg(id);
                        }
                    }
                    Err(error) => tracing::warn!(worker = index, %id, %error, "add leg refused"),
                }
            }
            Command::UpdateLeg { id, spec } => {
                if let Err(error) = self.shard.update_leg(id, &spec) {
                    tracing::warn!(worker = index, %id, %error, "update leg refused");
                }
            }
            Command::RemoveLeg { id } => match self.shard.remove_leg(id) {
                Ok(slot) => self.close_slot(slot),
                Err(error) => tracing::warn!(worker = index, %id, %error, "remove leg refused"),
            },
            Command::SetSource { bridge, leg } => {
                if let Err(error) = self.shard.set_source(bridge, leg) {
                    tracing::warn!(worker = index, %bridge, %error, "set source refused");
                }
            }
            Command::Stats { with_legs, reply } => {
                let mut stats = self.shard.snapshot(index, with_legs);
                stats.wakeups = self.wakeups;
                stats.events_lost = self.events_lost;
                let _ = reply.send(stats);
            }
            Command::LegStats { id, reply } => {
                let _ = reply.send(self.shard.leg_snapshot(id));
            }
            Command::Shutdown => return false,
        }
        true
    }

    fn register(&mut self, slot: u32, sockets: LegSockets) -> io::Result<()> {
        let epoll = self.epoll.as_raw_fd();
        epoll_add(epoll, sockets.rtp.as_raw_fd(), u64::from(slot) << 1)?;
        if let Some(rtcp) = &sockets.rtcp {
            if let Err(error) = epoll_add(epoll, rtcp.as_raw_fd(), (u64::from(slot) << 1) | 1) {
                epoll_delete(epoll, sockets.rtp.as_raw_fd());
                return Err(error);
            }
        }
        let index = slot as usize;
        if self.sockets.len() <= index {
            self.sockets.resize_with(index + 1, || None);
            self.overflow.resize(index + 1, [0, 0]);
        }
        self.sockets[index] = Some(sockets);
        self.overflow[index] = [0, 0];
        Ok(())
    }

    fn close_slot(&mut self, slot: u32) {
        let epoll = self.epoll.as_raw_fd();
        if let Some(sockets) = self.sockets.get_mut(slot as usize).and_then(Option::take) {
            epoll_delete(epoll, sockets.rtp.as_raw_fd());
            if let Some(rtcp) = &sockets.rtcp {
                epoll_delete(epoll, rtcp.as_raw_fd());
            }
        }
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it; sched_setaffinity(0) acts
    // on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in `pin_to_cpu`; CPU_ISSET reads within the set.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        if libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

fn socket_fd(sockets: &[Option<LegSockets>], leg: u32, channel: Channel) -> Option<RawFd> {
    let sockets = sockets.get(leg as usize)?.as_ref()?;
    Some(match (channel, &sockets.rtcp) {
        (Channel::Rtcp, Some(rtcp)) => rtcp.as_raw_fd(),
        _ => sockets.rtp.as_raw_fd(),
    })
}

fn epoll_add(epoll: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: valid epoll fd and event struct.
    let result = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn epoll_delete(epoll: RawFd, fd: RawFd) {
    // SAFETY: valid epoll fd; a null event is allowed for EPOLL_CTL_DEL.
    unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
}
