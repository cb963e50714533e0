//! A media worker: one thread that owns its legs' sockets and a [`Shard`] outright, driven by
//! level-triggered epoll, `recvmmsg` and batched sends.
//!
//! One loop turn: drain control commands; wait for readiness (or the next timer); take one
//! batch (at most `batch_size` datagrams) from each ready socket in turn, hand it to the shard
//! and send what it produced before touching the next socket; run due timers. Level-triggered
//! epoll means a socket that still holds datagrams after its batch is reported again on the
//! next turn: no socket can starve the others, and none is ever forgotten after an overload
//! (the failure that stopped a widely deployed relay for good).
//!
//! Sockets belong to ports, not legs: with the leg pool (`media.leg_pool`) a released port's
//! sockets stay open, bound and registered with this worker's epoll, and the next leg on this
//! worker that takes the port reuses them without a system call (the engine has drained them).
//! Datagrams reaching a port no leg uses are read and dropped (`idle_port`), never forwarded.

use crate::proto::NetMap;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
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
/// A leg slot without a port (see `Worker::leg_ports`).
const NO_PORT: u32 = u32::MAX;

/// A port's sockets. Shared: with the leg pool the engine keeps a handle too, to drain a
/// pooled port before reuse; a socket closes when its last handle goes.
#[derive(Debug, Clone)]
pub struct LegSockets {
    /// RTP socket (also RTCP with rtcp-mux).
    pub rtp: Arc<UdpSocket>,
    /// RTCP socket (none with rtcp-mux).
    pub rtcp: Option<Arc<UdpSocket>>,
}

/// How a new leg gets its port's sockets.
#[derive(Debug)]
pub enum LegPort {
    /// Sockets bound just now by the engine (or taken over from another worker's pool and
    /// drained): the worker starts watching them and keeps them.
    Fresh(LegSockets),
    /// The port's sockets are already idle in this worker's pool; the engine has drained them.
    Pooled {
        /// An RTCP socket bound now, because the pooled port had none and the leg needs one.
        rtcp: Option<Arc<UdpSocket>>,
    },
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
        /// Its RTP port (RTCP on the next one, unless rtcp-mux).
        port: u16,
        /// Where its sockets come from.
        sockets: LegPort,
        /// Datagrams the engine drained from a reused port before handing it out (counted as
        /// `idle_port` drops).
        drained: u64,
    },
    /// Stop watching an idle pooled port and let go of its sockets (the engine moves the port
    /// to another worker). Answers whether the port was idle here (and is now released).
    ReleasePort {
        /// The port.
        port: u16,
        /// Where to answer.
        reply: Sender<bool>,
    },
    /// Change a leg's description.
    UpdateLeg {
        /// The leg.
        id: LegId,
        /// The new description.
        spec: LegSpec,
    },
    /// Remove a leg (its sockets close, or go idle into the pool).
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
    /// Keep released ports' sockets open for reuse (`media.leg_pool`); otherwise close them.
    pub pool: bool,
    /// Shard settings.
    pub shard: ShardConfig,
}

/// The wake-up side of a worker's eventfd: the control plane writes to it after queueing a
/// command so the worker leaves `epoll_wait` at once — only when the worker is about to sleep
/// or sleeping there: a busy worker drains its commands before its next wait anyway, and the
/// write (a syscall, and a wake-up of the worker for nothing) is most of what queueing a
/// command costs the SIP thread.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    asleep: Arc<AtomicBool>,
}

impl Waker {
    /// Wakes the worker if it waits (or is about to) in `epoll_wait`. Call after queueing.
    pub fn wake(&self) {
        // Pairs with the fence in `Worker::sleep`: either the worker sees the queued command
        // before it waits, or this sees it waiting (or both).
        fence(Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a valid u64 to an eventfd we own.
            let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

/// The worker's state.
pub struct Worker {
    config: WorkerConfig,
    shard: Shard,
    epoll: OwnedFd,
    wake: RawFd,
    /// Set while the worker waits (or is about to) in `epoll_wait`; see [`Waker`].
    asleep: Arc<AtomicBool>,
    commands: Receiver<Command>,
    events: Sender<Event>,
    /// Every port whose sockets this worker holds, in use or idle; the epoll token of a
    /// socket is its index here, shifted left once, plus one for RTCP.
    ports: Vec<Option<PortSockets>>,
    free_ports: Vec<u32>,
    /// Port number to index in `ports` (control path only).
    port_index: NetMap<u16, u32>,
    /// Shard leg slot to index in `ports` ([`NO_PORT`]: none): the sockets a leg sends from.
    leg_ports: Vec<u32>,
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

/// One port's sockets, watched by this worker's epoll for as long as it holds them.
#[derive(Debug)]
struct PortSockets {
    port: u16,
    rtp: Arc<UdpSocket>,
    rtcp: Option<Arc<UdpSocket>>,
    /// The leg slot using the port; `None`: idle in the pool.
    leg: Option<u32>,
    /// The leg receives and sends RTCP on the RTCP socket (false with rtcp-mux).
    rtcp_in_use: bool,
    /// Last `SO_RXQ_OVFL` count seen per channel (a running count per socket).
    overflow: [u32; 2],
}

impl PortSockets {
    fn fd(&self, channel: Channel) -> Option<RawFd> {
        match channel {
            Channel::Rtp => Some(self.rtp.as_raw_fd()),
            Channel::Rtcp => self.rtcp.as_ref().map(AsRawFd::as_raw_fd),
        }
    }

    /// The leg slot that receives what arrives on `channel`, if any.
    fn receiver(&self, channel: Channel) -> Option<u32> {
        match channel {
            Channel::Rtp => self.leg,
            Channel::Rtcp => self.leg.filter(|_| self.rtcp_in_use),
        }
    }
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
            asleep: Arc::new(AtomicBool::new(false)),
            commands,
            events,
            ports: Vec::new(),
            free_ports: Vec::new(),
            port_index: NetMap::default(),
            leg_ports: Vec::new(),
            uring,
            clock_origin,
            wakeups: 0,
            events_lost: 0,
            logged_drops: [0; DROP_CAUSES],
            next_drop_log_ns: 0,
        };
        // The waker owns the eventfd; the worker keeps the raw number (it lives as long as the
        // engine keeps the waker, which outlives the worker thread).
        let asleep = Arc::clone(&worker.asleep);
        Ok((worker, Waker { fd: wake, asleep }))
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
            // Announce the wait, then look at the queue once more: a command queued before the
            // announcement is seen here, one queued after it wakes the eventfd.
            self.asleep.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.commands.is_empty() {
                self.asleep.store(false, Ordering::SeqCst);
                continue;
            }
            // SAFETY: `ready` has room for MAX_EVENTS entries.
            let count =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), ready.as_mut_ptr(), MAX_EVENTS as i32, wait_ms) };
            self.asleep.store(false, Ordering::SeqCst);
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
        let index = (token >> 1) as usize;
        let channel = if token & 1 == 0 { Channel::Rtp } else { Channel::Rtcp };
        let Some(Some(port)) = self.ports.get(index) else {
            return false;
        };
        let Some(fd) = port.fd(channel) else {
            return false;
        };
        let Some(slot) = port.receiver(channel) else {
            // An idle port (or the unused RTCP socket of an rtcp-mux leg): read and drop.
            self.drain_once(index, channel, self.config.batch_size);
            return false;
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
        if let Some(delta) = self.overflow_delta(index, channel) {
            self.shard.kernel_dropped(slot, delta);
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
            if new == 0
                || matches!(
                    cause,
                    DropCause::NotHolder
                        | DropCause::Late
                        | DropCause::Duplicate
                        | DropCause::IdlePort
                        | DropCause::TapInput
                )
            {
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
            let (ports, leg_ports) = (&self.ports, &self.leg_ports);
            let fds = messages
                .iter()
                .map(|message| socket_fd(ports, leg_ports, message.leg, message.channel));
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
            let outcome = match socket_fd(&self.ports, &self.leg_ports, leg, channel) {
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
                        self.detach(slot);
                    }
                }
                Err(error) => tracing::warn!(worker = index, %id, %error, "remove bridge refused"),
            },
            Command::AddLeg {
                id,
                bridge,
                spec,
                origin,
                port,
                sockets,
                drained,
            } => {
                self.shard.idle_dropped(drained);
                // The port's sockets come first, so that even a refused leg leaves them where
                // the engine expects them (idle in this worker's pool).
                let port_index = match self.take_port(port, sockets) {
                    Ok(port_index) => port_index,
                    Err(error) => {
                        tracing::error!(worker = index, %id, port, %error, "cannot watch leg sockets");
                        return true;
                    }
                };
                let now = self.now();
                match self.shard.add_leg(id, bridge, &spec, origin, now) {
                    Ok(slot) => self.attach(slot, port_index, !spec.rtcp_mux),
                    Err(error) => {
                        tracing::warn!(worker = index, %id, %error, "add leg refused");
                        if !self.config.pool {
                            self.forget_port(port_index);
                        }
                    }
                }
            }
            Command::ReleasePort { port, reply } => {
                let _ = reply.send(self.release_port(port).is_some());
            }
            Command::UpdateLeg { id, spec } => {
                if let Err(error) = self.shard.update_leg(id, &spec) {
                    tracing::warn!(worker = index, %id, %error, "update leg refused");
                }
            }
            Command::RemoveLeg { id } => match self.shard.remove_leg(id) {
                Ok(slot) => self.detach(slot),
                Err(error) => tracing::warn!(worker = index, %id, %error, "remove leg refused"),
            },
            Command::SetSource { bridge, leg } => {
                let now = self.now();
                if let Err(error) = self.shard.set_source(bridge, leg, now) {
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

    /// Takes ownership of a port's sockets as idle (not yet used by a leg) and starts watching
    /// them. Used for the ports the engine binds into the pool at start, before `run`.
    pub fn adopt(&mut self, port: u16, sockets: LegSockets) -> io::Result<()> {
        self.watch(port, sockets).map(|_| ())
    }

    /// Registers a port's sockets with epoll and files them; returns their index.
    fn watch(&mut self, port: u16, sockets: LegSockets) -> io::Result<u32> {
        let index = match self.free_ports.pop() {
            Some(index) => index,
            None => {
                self.ports.push(None);
                (self.ports.len() - 1) as u32
            }
        };
        let epoll = self.epoll.as_raw_fd();
        let token = u64::from(index) << 1;
        let registered = epoll_add(epoll, sockets.rtp.as_raw_fd(), token).and_then(|()| match &sockets.rtcp {
            Some(rtcp) => epoll_add(epoll, rtcp.as_raw_fd(), token | 1).inspect_err(|_| {
                epoll_delete(epoll, sockets.rtp.as_raw_fd());
            }),
            None => Ok(()),
        });
        if let Err(error) = registered {
            self.free_ports.push(index);
            return Err(error);
        }
        self.ports[index as usize] = Some(PortSockets {
            port,
            rtp: sockets.rtp,
            rtcp: sockets.rtcp,
            leg: None,
            rtcp_in_use: false,
            overflow: [0, 0],
        });
        self.port_index.insert(port, index);
        Ok(index)
    }

    /// Stops watching a port's sockets and hands them out of the table.
    fn unwatch(&mut self, index: u32) -> Option<LegSockets> {
        let port = self.ports.get_mut(index as usize)?.take()?;
        let epoll = self.epoll.as_raw_fd();
        epoll_delete(epoll, port.rtp.as_raw_fd());
        if let Some(rtcp) = &port.rtcp {
            epoll_delete(epoll, rtcp.as_raw_fd());
        }
        self.port_index.remove(&port.port);
        self.free_ports.push(index);
        Some(LegSockets {
            rtp: port.rtp,
            rtcp: port.rtcp,
        })
    }

    /// Closes a port's sockets.
    fn forget_port(&mut self, index: u32) {
        drop(self.unwatch(index));
    }

    /// Gets the sockets of a new leg's port ready: files fresh ones, or finds the pooled ones
    /// (adding a new RTCP socket). Returns the port's index.
    fn take_port(&mut self, port: u16, sockets: LegPort) -> io::Result<u32> {
        match sockets {
            LegPort::Fresh(sockets) => self.watch(port, sockets),
            LegPort::Pooled { rtcp } => {
                let index = *self
                    .port_index
                    .get(&port)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "port is not in this worker's pool"))?;
                let Some(Some(pooled)) = self.ports.get_mut(index as usize) else {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "pooled port has no sockets"));
                };
                if pooled.leg.is_some() {
                    return Err(io::Error::new(io::ErrorKind::AddrInUse, "pooled port is in use"));
                }
                if let Some(rtcp) = rtcp {
                    if pooled.rtcp.is_none() {
                        epoll_add(self.epoll.as_raw_fd(), rtcp.as_raw_fd(), (u64::from(index) << 1) | 1)?;
                        pooled.rtcp = Some(rtcp);
                        pooled.overflow[1] = 0;
                    }
                }
                Ok(index)
            }
        }
    }

    /// Reads one batch from a socket no leg receives on and drops it (counted). Returns the
    /// number of datagrams read.
    fn drain_once(&mut self, index: usize, channel: Channel, limit: usize) -> usize {
        let Some(fd) = self
            .ports
            .get(index)
            .and_then(Option::as_ref)
            .and_then(|port| port.fd(channel))
        else {
            return 0;
        };
        let count = self.rx.receive_at_most(fd, limit).unwrap_or(0);
        if count > 0 {
            let kernel = self.overflow_delta(index, channel).unwrap_or(0);
            self.shard.idle_dropped(count as u64 + kernel);
        }
        count
    }

    /// Kernel overflow drops on a socket since the last batch from it (its `SO_RXQ_OVFL`
    /// count is a running total per socket, so the baseline lives with the socket).
    fn overflow_delta(&mut self, index: usize, channel: Channel) -> Option<u64> {
        let count = self.rx.overflow_count()?;
        let port = self.ports.get_mut(index)?.as_mut()?;
        let seen = &mut port.overflow[usize::from(channel == Channel::Rtcp)];
        let delta = count.wrapping_sub(*seen);
        *seen = count;
        (delta > 0).then_some(u64::from(delta))
    }

    /// Gives a port to a leg slot.
    fn attach(&mut self, slot: u32, index: u32, rtcp: bool) {
        if let Some(Some(port)) = self.ports.get_mut(index as usize) {
            port.leg = Some(slot);
            port.rtcp_in_use = rtcp && port.rtcp.is_some();
        }
        let slot = slot as usize;
        if self.leg_ports.len() <= slot {
            self.leg_ports.resize(slot + 1, NO_PORT);
        }
        self.leg_ports[slot] = index;
    }

    /// Takes a removed leg's port away from it: idle in the pool, or closed without the pool.
    fn detach(&mut self, slot: u32) {
        let Some(index) = self
            .leg_ports
            .get_mut(slot as usize)
            .map(|index| mem::replace(index, NO_PORT))
        else {
            return;
        };
        if index == NO_PORT {
            return;
        }
        if self.config.pool {
            if let Some(Some(port)) = self.ports.get_mut(index as usize) {
                port.leg = None;
                port.rtcp_in_use = false;
            }
        } else {
            self.forget_port(index);
        }
    }

    /// Hands an idle port's sockets back to the engine.
    fn release_port(&mut self, port: u16) -> Option<LegSockets> {
        let index = *self.port_index.get(&port)?;
        let idle = matches!(self.ports.get(index as usize), Some(Some(sockets)) if sockets.leg.is_none());
        if !idle {
            return None;
        }
        self.unwatch(index)
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
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

/// Runs the calling thread under `SCHED_FIFO` at `priority` (1–99): it then runs as soon as
/// it is woken, ahead of every ordinary thread on its CPU. The kernel's real-time throttling
/// (`kernel.sched_rt_runtime_us`, 95% by default) still leaves ordinary threads some time if it
/// ever spins. Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least `priority`.
/// Threads it starts afterwards (a runtime's blocking pool, say) start with ordinary scheduling
/// (`SCHED_RESET_ON_FORK`), not real-time and ungoverned.
pub fn set_realtime(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: pid 0 is the calling thread (Linux schedules threads); the parameter is a live
    // sched_param.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the calling thread to ordinary scheduling (`SCHED_OTHER`).
pub fn set_ordinary() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pthread_self() names the calling thread; the parameter is a live sched_param.
    let result = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_OTHER, &param) };
    if result != 0 {
        return Err(io::Error::from_raw_os_error(result));
    }
    Ok(())
}

/// The CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut spec = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a live local.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut spec) };
    if result != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
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

fn socket_fd(ports: &[Option<PortSockets>], leg_ports: &[u32], leg: u32, channel: Channel) -> Option<RawFd> {
    let index = *leg_ports.get(leg as usize)?;
    let port = ports.get(index as usize)?.as_ref()?;
    Some(match (channel, &port.rtcp) {
        (Channel::Rtcp, Some(rtcp)) if port.rtcp_in_use => rtcp.as_raw_fd(),
        _ => port.rtp.as_raw_fd(),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::config::SourceCheck;
    use crate::io::udp;
    use crate::media::api::LegId;
    use crate::media::stats::DropCause;

    /// The calling thread's policy (without the reset-on-fork flag) and priority.
    fn policy() -> (libc::c_int, libc::c_int) {
        let mut policy = -1;
        // SAFETY: a zeroed sched_param is valid; both point to live locals.
        let mut param: libc::sched_param = unsafe { mem::zeroed() };
        unsafe { libc::pthread_getschedparam(libc::pthread_self(), &mut policy, &mut param) };
        (policy & !libc::SCHED_RESET_ON_FORK, param.sched_priority)
    }

    /// The thread runs under SCHED_FIFO at the priority asked for, and a thread it starts does
    /// not; or the kernel refused (no CAP_SYS_NICE, no RLIMIT_RTPRIO, no real-time budget in
    /// this cgroup) and nothing changed.
    #[test]
    fn set_realtime_makes_the_calling_thread_fifo_but_not_its_children() {
        let (result, policy, child) = std::thread::spawn(|| {
            let result = set_realtime(7);
            let child = std::thread::spawn(policy).join().unwrap();
            (result, policy(), child)
        })
        .join()
        .unwrap();
        match result {
            Ok(()) => {
                assert_eq!(policy, (libc::SCHED_FIFO, 7));
                assert_eq!(child, (libc::SCHED_OTHER, 0));
            }
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
                assert_eq!(policy, (libc::SCHED_OTHER, 0));
            }
        }
        assert!(set_realtime(100).is_err(), "priority beyond 99 is refused");
    }

    #[test]
    fn set_ordinary_undoes_set_realtime_and_thread_cpu_time_counts_this_thread_only() {
        std::thread::spawn(|| {
            if set_realtime(5).is_ok() {
                assert_eq!(policy(), (libc::SCHED_FIFO, 5));
            }
            set_ordinary().unwrap();
            assert_eq!(policy(), (libc::SCHED_OTHER, 0));
            let before = thread_cpu_time();
            std::thread::sleep(Duration::from_millis(30));
            let slept = thread_cpu_time() - before;
            let spin = std::time::Instant::now();
            while spin.elapsed() < Duration::from_millis(30) {
                std::hint::black_box(0u64);
            }
            let spun = thread_cpu_time() - before - slept;
            assert!(slept < Duration::from_millis(5), "sleeping used {slept:?}");
            assert!(spun > Duration::from_millis(5), "spinning 30 ms used only {spun:?}");
        })
        .join()
        .unwrap();
    }

    fn worker(pool: bool) -> Worker {
        let (_commands, receiver) = crossbeam_channel::unbounded();
        let (events, _) = crossbeam_channel::unbounded();
        let config = WorkerConfig {
            index: 0,
            batch_size: 4,
            io_uring: false,
            rx_coalesce: Duration::ZERO,
            cpu: None,
            pool,
            shard: ShardConfig {
                rtcp_interval: Duration::from_secs(5),
                default_source_check: SourceCheck::Strict,
                cname: "test".to_owned(),
                seed: 1,
            },
        };
        Worker::new(config, receiver, events, Instant::now()).unwrap().0
    }

    fn add_leg(worker: &mut Worker, id: u64, port: u16, remote: std::net::SocketAddr, sockets: LegPort, drained: u64) {
        let spec = LegSpec {
            remote: Some(remote),
            rtcp_mux: true,
            ..LegSpec::default()
        };
        assert!(worker.apply(Command::AddLeg {
            id: LegId(id),
            bridge: BridgeId(1),
            spec,
            origin: StreamOrigin {
                ssrc: 1,
                seq: 1,
                timestamp: 1,
            },
            port,
            sockets,
            drained,
        }));
    }

    fn idle_drops(worker: &Worker) -> u64 {
        worker.shard.totals().drops(DropCause::IdlePort)
    }

    /// A pooled socket: while idle, what reaches it is read and dropped (counted), never
    /// handed to the shard; a leg taking it sees only later datagrams; after the leg is gone
    /// the socket stays open and idle; released, the worker lets go of it.
    #[test]
    fn pooled_socket_forwards_only_while_a_leg_has_it() {
        let mut worker = worker(true);
        let socket = Arc::new(udp::bind("127.0.0.1:0".parse().unwrap(), 0, 0).unwrap());
        let local = socket.local_addr().unwrap();
        let port = local.port();
        let sockets = LegSockets {
            rtp: socket.clone(),
            rtcp: None,
        };
        worker.adopt(port, sockets).unwrap();
        let token = u64::from(worker.port_index[&port]) << 1;
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let packet = [0x80u8, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9, 0xAA];
        for _ in 0..10 {
            peer.send_to(&packet, local).unwrap();
        }
        for _ in 0..3 {
            assert!(!worker.service(token, worker.now()), "an idle port forwards nothing");
        }
        assert_eq!(idle_drops(&worker), 10, "batches of four, all dropped and counted");

        assert!(worker.apply(Command::AddBridge {
            id: BridgeId(1),
            kind: BridgeKind::Relay
        }));
        add_leg(
            &mut worker,
            7,
            port,
            peer.local_addr().unwrap(),
            LegPort::Pooled { rtcp: None },
            5,
        );
        assert_eq!(idle_drops(&worker), 15, "what the engine drained is counted too");
        peer.send_to(&packet, local).unwrap();
        assert!(worker.service(token, worker.now()));
        assert_eq!(worker.shard.leg_snapshot(LegId(7)).unwrap().counters.rtp_in_packets, 1);

        assert!(worker.apply(Command::RemoveLeg { id: LegId(7) }));
        peer.send_to(&packet, local).unwrap();
        assert!(!worker.service(token, worker.now()));
        assert_eq!(idle_drops(&worker), 16);
        assert_eq!(worker.port_index.get(&port), Some(&0), "the socket stays in the pool");

        let (reply, answer) = crossbeam_channel::bounded(1);
        assert!(worker.apply(Command::ReleasePort { port, reply }));
        assert!(answer.recv().unwrap());
        assert!(worker.port_index.is_empty());
        assert_eq!(Arc::strong_count(&socket), 1, "the worker let go of the socket");
    }

    /// Without the pool, a removed leg's sockets are closed.
    #[test]
    fn without_pool_removed_leg_closes_its_sockets() {
        let mut worker = worker(false);
        let socket = udp::bind("127.0.0.1:0".parse().unwrap(), 0, 0).unwrap();
        let local = socket.local_addr().unwrap();
        assert!(worker.apply(Command::AddBridge {
            id: BridgeId(1),
            kind: BridgeKind::Relay
        }));
        let fresh = LegPort::Fresh(LegSockets {
            rtp: Arc::new(socket),
            rtcp: None,
        });
        add_leg(&mut worker, 3, local.port(), local, fresh, 0);
        assert_eq!(worker.port_index.len(), 1);
        assert!(worker.apply(Command::RemoveLeg { id: LegId(3) }));
        assert!(worker.port_index.is_empty());
        // The port is free again: binding it succeeds.
        std::net::UdpSocket::bind(local).unwrap();
    }
}
