//! The engine handle the control plane drives: it allocates ports and binds sockets (so errors
//! come back to the caller at once), places each bridge on a worker, and sends the worker
//! commands over a lock-free channel. Events come back on [`Engine::events`].
//!
//! With the leg pool (`media.leg_pool`, docs/io.md) a port's sockets are bound once and then
//! belong to one worker for good: a released port waits out its quarantine in that worker's
//! idle queue here, and the next leg of that worker reuses it with no socket system call
//! but a drain: before [`Engine::add_leg`] returns, whatever is still queued on the port (late
//! media of its previous call) is read and dropped here, so the new leg only ever sees
//! datagrams that arrived after it was handed out.
//! A worker without an idle port binds a never-used one, and only when the whole range is
//! bound takes an idle port over from another worker.
//!
//! Every call here is control path: it may lock the registry and allocate. The per-packet path
//! is entirely inside the workers.

use crate::proto::NetMap;
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::config::MediaConfig;
use crate::io::udp;
use crate::io::worker::{Command, LegPort, LegSockets, Waker, Worker, WorkerConfig};
use crate::media::api::{BridgeId, BridgeKind, Event, LegId, LegInfo, LegSpec, LegStats, WorkerStats, MAX_TAPS};
use crate::media::ports::{PortError, PortPool};
use crate::media::shard::{ShardConfig, StreamOrigin};

/// Errors of engine calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Every relay port is in use or in quarantine.
    #[error("no relay port available")]
    PortsExhausted,
    /// No such bridge.
    #[error("unknown bridge {0}")]
    UnknownBridge(BridgeId),
    /// No such leg.
    #[error("unknown leg {0}")]
    UnknownLeg(LegId),
    /// A relay bridge already has two legs (or, for a tap, its `MAX_TAPS` taps).
    #[error("bridge {0} is a relay and already has two legs (or four taps)")]
    RelayFull(BridgeId),
    /// The leg is not in that bridge.
    #[error("{leg} is not in {bridge}")]
    NotInBridge {
        /// The bridge.
        bridge: BridgeId,
        /// The leg.
        leg: LegId,
    },
    /// A worker thread is gone (the engine is shutting down).
    #[error("media worker unavailable")]
    WorkerGone,
    /// An operating-system error (socket, thread).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

struct BridgeEntry {
    worker: usize,
    kind: BridgeKind,
    legs: Vec<LegId>,
    /// The monitoring taps among `legs` (relay bridges).
    taps: Vec<LegId>,
}

struct LegEntry {
    worker: usize,
    bridge: BridgeId,
    port: u16,
    /// With the pool: the engine's handle on the port's sockets (the worker has the other).
    sockets: Option<LegSockets>,
}

/// A pooled port whose sockets are open and idle in a worker.
#[derive(Debug)]
struct IdlePort {
    port: u16,
    sockets: LegSockets,
    /// End of its quarantine.
    ready_at: Instant,
}

/// Most datagrams read when draining a reused port: far more than a socket's receive queue
/// holds, so it ends only under a flood, and then what is left arrived after the hand-out.
const DRAIN_LIMIT: u64 = 4096;

struct Registry {
    /// Ports without sockets: never bound yet with the pool, every free port without it.
    ports: PortPool,
    /// Per worker, its idle pooled ports in release order (so in quarantine order).
    idle: Vec<VecDeque<IdlePort>>,
    bridges: NetMap<BridgeId, BridgeEntry>,
    legs: NetMap<LegId, LegEntry>,
    legs_per_worker: Vec<usize>,
    next_id: u64,
}

struct WorkerHandle {
    commands: Sender<Command>,
    waker: Waker,
    /// A change was queued for this worker while wake-ups were deferred: wake it at the next
    /// [`Engine::flush_wakes`].
    owed: AtomicBool,
    thread: Option<JoinHandle<()>>,
}

/// The user-plane engine: media workers plus the registry of bridges and legs.
pub struct Engine {
    config: MediaConfig,
    registry: Mutex<Registry>,
    workers: Vec<WorkerHandle>,
    events: Receiver<Event>,
    io_uring_active: bool,
    /// See [`Engine::defer_wakes`].
    defer_wakes: AtomicBool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("workers", &self.workers.len()).finish()
    }
}

/// Events queued before the oldest are lost (the control plane is not keeping up).
const EVENT_QUEUE: usize = 65_536;

impl Engine {
    /// Starts the workers. `cname` names this node in RTCP.
    pub fn start(config: &MediaConfig, cname: &str) -> Result<Engine, EngineError> {
        let (event_sender, events) = bounded(EVENT_QUEUE);
        let origin = Instant::now();
        let mut workers = Vec::with_capacity(config.workers);
        let mut io_uring_active = false;
        let cpus = if config.pin_workers {
            crate::io::worker::allowed_cpus()
        } else {
            Vec::new()
        };
        let mut started = Vec::with_capacity(config.workers.max(1));
        for index in 0..config.workers.max(1) {
            let (commands, command_receiver) = unbounded();
            let worker_config = WorkerConfig {
                index,
                batch_size: config.batch_size,
                io_uring: config.backend == crate::config::IoBackend::IoUring,
                rx_coalesce: config.rx_coalesce,
                cpu: (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
                pool: config.leg_pool,
                shard: ShardConfig {
                    rtcp_interval: config.rtcp_interval,
                    default_source_check: config.default_source_check,
                    cname: cname.chars().take(255).collect(),
                    seed: rand::random(),
                },
            };
            let (worker, waker) = Worker::new(worker_config, command_receiver, event_sender.clone(), origin)?;
            io_uring_active |= worker.uses_io_uring();
            started.push((worker, commands, waker));
        }
        let mut registry = Registry {
            ports: PortPool::new(config.port_min, config.port_max, config.port_quarantine),
            idle: (0..started.len()).map(|_| VecDeque::new()).collect(),
            bridges: NetMap::default(),
            legs: NetMap::default(),
            legs_per_worker: vec![0; started.len()],
            next_id: 1,
        };
        if config.leg_pool {
            prebind(config, &mut registry, &mut started);
        }
        for (index, (worker, commands, waker)) in started.into_iter().enumerate() {
            let thread = std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                commands,
                waker,
                owed: AtomicBool::new(false),
                thread: Some(thread),
            });
        }
        Ok(Engine {
            config: config.clone(),
            registry: Mutex::new(registry),
            workers,
            events,
            io_uring_active,
            defer_wakes: AtomicBool::new(false),
        })
    }

    /// Defers the wake-ups that changes (legs, bridges, sources) owe to sleeping workers until
    /// [`Self::flush_wakes`]. Waking a worker is a write to its eventfd and, on a VM, an
    /// interrupt to another vCPU (`strace` of the SIP thread: 8–107 µs per write), paid inside
    /// the message that caused it, before the responses it was building went out. The node's
    /// SIP driver turns this on and flushes right after it sent what a batch of messages
    /// produced: the user plane sees the change a few microseconds later, the responses go out
    /// that much sooner. Queries that wait for a worker's answer (statistics) always wake it
    /// at once.
    pub fn defer_wakes(&self, on: bool) {
        self.defer_wakes.store(on, Ordering::SeqCst);
        if !on {
            self.flush_wakes();
        }
    }

    /// Wakes every worker a deferred change is owed to (see [`Self::defer_wakes`]).
    pub fn flush_wakes(&self) {
        for handle in &self.workers {
            if handle.owed.swap(false, Ordering::AcqRel) {
                handle.waker.wake();
            }
        }
    }

    /// Whether the workers send with io_uring (asked for and available).
    pub fn io_uring_active(&self) -> bool {
        self.io_uring_active
    }

    /// Events from the workers (talker first packet / silence, latching).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Number of worker threads.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A poisoned registry means a panic in this file's control path; the data is still
        // consistent enough to keep serving (every mutation is a single insert/remove).
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, worker: usize, command: Command) -> Result<(), EngineError> {
        self.send_command(worker, command, true)
    }

    /// Queues a command; with `wake` false the worker is not woken for it. That is only for
    /// commands no packet or timer can notice before the worker's next wake-up, because the
    /// worker applies every queued command before it handles any packet or timer.
    fn send_command(&self, worker: usize, command: Command, wake: bool) -> Result<(), EngineError> {
        let handle = self.workers.get(worker).ok_or(EngineError::WorkerGone)?;
        handle.commands.send(command).map_err(|_| EngineError::WorkerGone)?;
        if wake {
            handle.waker.wake();
        }
        Ok(())
    }

    /// Queues a change (a command nobody waits an answer for); the wake-up it needs, if any,
    /// is deferred while [`Self::defer_wakes`] is on.
    fn send_change(&self, worker: usize, command: Command, wake: bool) -> Result<(), EngineError> {
        let defer = wake && self.defer_wakes.load(Ordering::Relaxed);
        self.send_command(worker, command, wake && !defer)?;
        if defer {
            if let Some(handle) = self.workers.get(worker) {
                handle.owed.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Whether removals may wait for the worker's next wake-up: with the pool the sockets stay
    /// open anyway; without it they must close now so the ports can be bound again.
    fn removal_wakes(&self) -> bool {
        !self.config.leg_pool
    }

    /// Creates a bridge on the least loaded worker.
    pub fn create_bridge(&self, kind: BridgeKind) -> Result<BridgeId, EngineError> {
        let mut registry = self.registry();
        let worker = (0..self.workers.len())
            .min_by_key(|&index| registry.legs_per_worker[index])
            .unwrap_or(0);
        let id = BridgeId(registry.next_id);
        registry.next_id += 1;
        registry.bridges.insert(
            id,
            BridgeEntry {
                worker,
                kind,
                legs: Vec::new(),
                taps: Vec::new(),
            },
        );
        // Reserve the worker's share now so bridges created in a burst spread out.
        registry.legs_per_worker[worker] += 1;
        // No wake-up: a bridge without legs sees no packet; its first leg wakes the worker.
        self.send_change(worker, Command::AddBridge { id, kind }, false)?;
        Ok(id)
    }

    /// Removes a bridge and every leg in it; their ports go into quarantine.
    pub fn remove_bridge(&self, id: BridgeId) -> Result<(), EngineError> {
        let mut registry = self.registry();
        let entry = registry.bridges.remove(&id).ok_or(EngineError::UnknownBridge(id))?;
        let now = Instant::now();
        for leg in &entry.legs {
            if let Some(leg_entry) = registry.legs.remove(leg) {
                self.release(&mut registry, leg_entry, now);
            }
        }
        let worker = entry.worker;
        registry.legs_per_worker[worker] = registry.legs_per_worker[worker].saturating_sub(entry.legs.len() + 1);
        // Sent under the registry lock: a port released here can only be handed out again
        // by a command queued after this one.
        self.send_change(worker, Command::RemoveBridge { id }, self.removal_wakes())
    }

    /// Adds a leg to a bridge: takes a port pair from the pool, binds it and hands the sockets
    /// to the bridge's worker. Fails cleanly when the ports are exhausted.
    pub fn add_leg(&self, bridge: BridgeId, spec: LegSpec) -> Result<LegInfo, EngineError> {
        let mut registry = self.registry();
        let entry = registry
            .bridges
            .get(&bridge)
            .ok_or(EngineError::UnknownBridge(bridge))?;
        let tap = spec.tap && entry.kind == BridgeKind::Relay;
        let full = if tap {
            entry.taps.len() >= MAX_TAPS
        } else {
            entry.legs.len() - entry.taps.len() >= 2
        };
        if entry.kind == BridgeKind::Relay && full {
            return Err(EngineError::RelayFull(bridge));
        }
        let worker = entry.worker;
        let (port, kept, sockets, drained) = self.take_port(&mut registry, worker, spec.rtcp_mux)?;
        let id = LegId(registry.next_id);
        registry.next_id += 1;
        let local_rtp = SocketAddr::new(self.config.address, port);
        let local_rtcp = if spec.rtcp_mux {
            local_rtp
        } else {
            SocketAddr::new(self.config.address, port + 1)
        };
        let origin = StreamOrigin {
            ssrc: rand::random(),
            seq: rand::random(),
            timestamp: rand::random(),
        };
        registry.legs.insert(
            id,
            LegEntry {
                worker,
                bridge,
                port,
                sockets: kept,
            },
        );
        if let Some(entry) = registry.bridges.get_mut(&bridge) {
            entry.legs.push(id);
            if tap {
                entry.taps.push(id);
            }
        }
        registry.legs_per_worker[worker] += 1;
        // A pooled port's sockets are already watched by the worker: the first packet to the
        // leg wakes it, and it applies queued commands before any packet, so the leg needs no
        // wake-up of its own (one syscall and one worker turn less per leg). New sockets must
        // be registered with the worker's epoll first: those wake it.
        let wake = !matches!(sockets, LegPort::Pooled { rtcp: None });
        // Sent under the registry lock, so the worker sees a port's release before its reuse.
        self.send_change(
            worker,
            Command::AddLeg {
                id,
                bridge,
                spec,
                origin,
                port,
                sockets,
                drained,
            },
            wake,
        )?;
        drop(registry);
        Ok(LegInfo {
            id,
            local_rtp,
            local_rtcp,
            ssrc: origin.ssrc,
        })
    }

    /// A port for a new leg on `worker`: one of its idle pooled ports out of quarantine, else
    /// a never-bound one, else (range all bound) an idle one taken over from another worker.
    /// Returns the port, the engine's handle on its sockets (with the pool), how the worker
    /// gets them, and how many stale datagrams were drained from a reused port.
    fn take_port(&self, registry: &mut Registry, worker: usize, rtcp_mux: bool) -> Result<TakenPort, EngineError> {
        if !self.config.leg_pool {
            let (port, sockets) = self.bind_pair(registry, rtcp_mux)?;
            return Ok((port, None, LegPort::Fresh(sockets), 0));
        }
        let now = Instant::now();
        let queued = registry.idle.get(worker).map_or(0, VecDeque::len);
        for _ in 0..queued {
            let ready = registry
                .idle
                .get(worker)
                .and_then(VecDeque::front)
                .is_some_and(|idle| idle.ready_at <= now);
            let Some(mut idle) = registry
                .idle
                .get_mut(worker)
                .filter(|_| ready)
                .and_then(VecDeque::pop_front)
            else {
                break;
            };
            let mut rtcp = None;
            if !rtcp_mux && idle.sockets.rtcp.is_none() {
                match self.bind_one(idle.port + 1) {
                    Ok(socket) => {
                        let socket = Arc::new(socket);
                        idle.sockets.rtcp = Some(socket.clone());
                        rtcp = Some(socket);
                    }
                    Err(error) => {
                        // The RTCP port is taken by another program: try this port again later.
                        let kind = error.kind();
                        idle.ready_at = now + self.config.port_quarantine;
                        registry.idle[worker].push_back(idle);
                        if kind == std::io::ErrorKind::AddrInUse {
                            continue;
                        }
                        return Err(EngineError::Io(error));
                    }
                }
            }
            let drained = drain(&idle.sockets);
            return Ok((idle.port, Some(idle.sockets), LegPort::Pooled { rtcp }, drained));
        }
        match self.bind_pair(registry, rtcp_mux) {
            Ok((port, sockets)) => Ok((port, Some(sockets.clone()), LegPort::Fresh(sockets), 0)),
            Err(EngineError::PortsExhausted) => self.take_over(registry, worker, rtcp_mux, now),
            Err(error) => Err(error),
        }
    }

    /// Moves an idle pooled port from another worker (the one whose oldest idle port is ready)
    /// to `worker`: the owner stops watching it, and it goes to `worker` like a new one. Rare:
    /// only when every port of the range is bound.
    fn take_over(
        &self,
        registry: &mut Registry,
        worker: usize,
        rtcp_mux: bool,
        now: Instant,
    ) -> Result<TakenPort, EngineError> {
        for owner in (0..registry.idle.len()).filter(|&owner| owner != worker) {
            while registry.idle[owner].front().is_some_and(|idle| idle.ready_at <= now) {
                let Some(mut idle) = registry.idle[owner].pop_front() else {
                    break;
                };
                let (reply, answer) = bounded(1);
                self.send(owner, Command::ReleasePort { port: idle.port, reply })?;
                let released = answer
                    .recv_timeout(Duration::from_secs(1))
                    .map_err(|_| EngineError::WorkerGone)?;
                if !released {
                    tracing::error!(
                        port = idle.port,
                        owner,
                        "pooled port not idle in its worker; left out of the pool"
                    );
                    continue;
                }
                if !rtcp_mux && idle.sockets.rtcp.is_none() {
                    match self.bind_one(idle.port + 1) {
                        Ok(rtcp) => idle.sockets.rtcp = Some(Arc::new(rtcp)),
                        Err(error) => {
                            // Close it and let the port go back to the unbound pool.
                            drop(idle.sockets);
                            registry.ports.release(idle.port, now);
                            if error.kind() != std::io::ErrorKind::AddrInUse {
                                return Err(EngineError::Io(error));
                            }
                            continue;
                        }
                    }
                }
                let drained = drain(&idle.sockets);
                return Ok((
                    idle.port,
                    Some(idle.sockets.clone()),
                    LegPort::Fresh(idle.sockets),
                    drained,
                ));
            }
        }
        Err(EngineError::PortsExhausted)
    }

    /// Puts a removed leg's port back: into its worker's idle queue with the pool (after the
    /// quarantine), into the port pool's quarantine without it.
    fn release(&self, registry: &mut Registry, leg: LegEntry, now: Instant) {
        if let Some(sockets) = leg.sockets {
            if let Some(queue) = registry.idle.get_mut(leg.worker) {
                queue.push_back(IdlePort {
                    port: leg.port,
                    sockets,
                    ready_at: now + self.config.port_quarantine,
                });
                return;
            }
        }
        registry.ports.release(leg.port, now);
    }

    fn bind_one(&self, port: u16) -> std::io::Result<UdpSocket> {
        udp::bind(
            SocketAddr::new(self.config.address, port),
            self.config.socket_rcvbuf,
            self.config.socket_sndbuf,
        )
    }

    fn bind_pair(&self, registry: &mut Registry, rtcp_mux: bool) -> Result<(u16, LegSockets), EngineError> {
        let attempts = registry.ports.capacity();
        let now = Instant::now();
        for _ in 0..attempts {
            let port = match registry.ports.allocate(now) {
                Ok(port) => port,
                Err(PortError::Exhausted) => return Err(EngineError::PortsExhausted),
            };
            let bound = bind_sockets(&self.config, port, !rtcp_mux);
            match bound {
                Ok(sockets) => return Ok((port, sockets)),
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                    // Taken by another program: skip it for a quarantine period.
                    registry.ports.release(port, now);
                }
                Err(error) => {
                    registry.ports.release(port, now);
                    return Err(EngineError::Io(error));
                }
            }
        }
        Err(EngineError::PortsExhausted)
    }

    /// Replaces a leg's description (remote address, source checking, payload types, fan-out)
    /// after a renegotiation.
    pub fn update_leg(&self, leg: LegId, spec: LegSpec) -> Result<(), EngineError> {
        let worker = self
            .registry()
            .legs
            .get(&leg)
            .map(|entry| entry.worker)
            .ok_or(EngineError::UnknownLeg(leg))?;
        // No wake-up: a new description matters for the leg's next packet (which wakes the
        // worker, and commands go first) or its next RTCP report (a timer, which does too).
        self.send_change(worker, Command::UpdateLeg { id: leg, spec }, false)
    }

    /// Removes a leg; its ports go into quarantine.
    pub fn remove_leg(&self, leg: LegId) -> Result<(), EngineError> {
        let mut registry = self.registry();
        let entry = registry.legs.remove(&leg).ok_or(EngineError::UnknownLeg(leg))?;
        let (worker, bridge) = (entry.worker, entry.bridge);
        self.release(&mut registry, entry, Instant::now());
        if let Some(bridge) = registry.bridges.get_mut(&bridge) {
            bridge.legs.retain(|&other| other != leg);
            bridge.taps.retain(|&other| other != leg);
        }
        registry.legs_per_worker[worker] = registry.legs_per_worker[worker].saturating_sub(1);
        // Under the lock, like `remove_bridge`.
        self.send_change(worker, Command::RemoveLeg { id: leg }, self.removal_wakes())
    }

    /// Sets (or clears) the leg whose RTP a group bridge forwards: the floor holder. It takes
    /// effect for the very next packet the worker handles.
    pub fn set_source(&self, bridge: BridgeId, leg: Option<LegId>) -> Result<(), EngineError> {
        let registry = self.registry();
        let entry = registry
            .bridges
            .get(&bridge)
            .ok_or(EngineError::UnknownBridge(bridge))?;
        if let Some(leg) = leg {
            if !entry.legs.contains(&leg) {
                return Err(EngineError::NotInBridge { bridge, leg });
            }
        }
        let worker = entry.worker;
        drop(registry);
        self.send_change(worker, Command::SetSource { bridge, leg }, true)
    }

    /// Relay ports still available now (outside quarantine), pooled or not yet bound.
    pub fn ports_available(&self) -> usize {
        let now = Instant::now();
        let registry = self.registry();
        let idle: usize = registry
            .idle
            .iter()
            .map(|queue| queue.iter().take_while(|idle| idle.ready_at <= now).count())
            .sum();
        registry.ports.available(now) + idle
    }

    /// Ports whose sockets are open but idle in the pool (in quarantine or ready).
    pub fn ports_pooled(&self) -> usize {
        self.registry().idle.iter().map(VecDeque::len).sum()
    }

    /// Statistics of every worker (waits up to a second for each).
    pub fn stats(&self, with_legs: bool) -> Result<Vec<WorkerStats>, EngineError> {
        let mut replies = Vec::with_capacity(self.workers.len());
        for worker in 0..self.workers.len() {
            let (reply, receiver) = bounded(1);
            self.send(worker, Command::Stats { with_legs, reply })?;
            replies.push(receiver);
        }
        replies
            .into_iter()
            .map(|receiver| {
                receiver
                    .recv_timeout(Duration::from_secs(1))
                    .map_err(|_| EngineError::WorkerGone)
            })
            .collect()
    }

    /// Statistics of one leg.
    pub fn leg_stats(&self, leg: LegId) -> Result<LegStats, EngineError> {
        let worker = self
            .registry()
            .legs
            .get(&leg)
            .map(|entry| entry.worker)
            .ok_or(EngineError::UnknownLeg(leg))?;
        let (reply, receiver) = bounded(1);
        self.send(worker, Command::LegStats { id: leg, reply })?;
        receiver
            .recv_timeout(Duration::from_secs(1))
            .map_err(|_| EngineError::WorkerGone)?
            .ok_or(EngineError::UnknownLeg(leg))
    }

    /// Stops the workers and waits for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for handle in &self.workers {
            let _ = handle.commands.send(Command::Shutdown);
            handle.waker.wake();
        }
        for handle in &mut self.workers {
            if let Some(thread) = handle.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Binds a port's RTP socket and, with `rtcp`, its RTCP socket on the next port.
fn bind_sockets(config: &MediaConfig, port: u16, rtcp: bool) -> std::io::Result<LegSockets> {
    let bind = |port: u16| {
        udp::bind(
            SocketAddr::new(config.address, port),
            config.socket_rcvbuf,
            config.socket_sndbuf,
        )
    };
    let rtp = Arc::new(bind(port)?);
    let rtcp = if rtcp { Some(Arc::new(bind(port + 1)?)) } else { None };
    Ok(LegSockets { rtp, rtcp })
}

/// What [`Engine::take_port`] hands out: the port, the engine's handle on its sockets (with
/// the pool), how the worker gets them, and the stale datagrams drained from it.
type TakenPort = (u16, Option<LegSockets>, LegPort, u64);

/// Reads and drops whatever is queued on a reused port's sockets (late media of its previous
/// call); returns how many datagrams that was. The buffer is tiny on purpose: the rest of
/// each datagram is discarded by the kernel.
fn drain(sockets: &LegSockets) -> u64 {
    let mut drained = 0;
    let mut scratch = [0u8; 1];
    for socket in std::iter::once(&sockets.rtp).chain(sockets.rtcp.as_ref()) {
        let mut count = 0;
        // Non-blocking sockets: the loop ends with WouldBlock once the queue is empty.
        while count < DRAIN_LIMIT && socket.recv(&mut scratch).is_ok() {
            count += 1;
        }
        drained += count;
    }
    drained
}

/// Binds `media.leg_pool_prebind` port pairs (RTP and RTCP) at start and gives each worker an
/// equal block of them (lowest ports to the first worker), idle and ready. Ports taken by
/// other programs are skipped; any other failure stops the prebinding (the pool still grows
/// lazily).
fn prebind(config: &MediaConfig, registry: &mut Registry, workers: &mut [(Worker, Sender<Command>, Waker)]) {
    let now = Instant::now();
    let wanted = config.leg_pool_prebind.min(registry.ports.capacity());
    let mut bound = 0;
    let mut attempts = registry.ports.capacity();
    while bound < wanted && attempts > 0 && !workers.is_empty() {
        attempts -= 1;
        let Ok(port) = registry.ports.allocate(now) else {
            break;
        };
        let sockets = match bind_sockets(config, port, true) {
            Ok(sockets) => sockets,
            Err(error) => {
                registry.ports.release(port, now);
                if error.kind() == std::io::ErrorKind::AddrInUse {
                    continue;
                }
                tracing::warn!(%error, bound, "leg pool prebinding stopped");
                break;
            }
        };
        let worker = (bound / wanted.div_ceil(workers.len()).max(1)).min(workers.len() - 1);
        if let Err(error) = workers[worker].0.adopt(port, sockets.clone()) {
            registry.ports.release(port, now);
            tracing::warn!(%error, bound, "leg pool prebinding stopped");
            break;
        }
        registry.idle[worker].push_back(IdlePort {
            port,
            sockets,
            ready_at: now,
        });
        bound += 1;
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Draining a reused port reads exactly what was queued, on both sockets, and leaves them
    /// empty.
    #[test]
    fn drain_empties_both_sockets_and_counts() {
        let bind = || Arc::new(udp::bind("127.0.0.1:0".parse().unwrap(), 0, 0).unwrap());
        let sockets = LegSockets {
            rtp: bind(),
            rtcp: Some(bind()),
        };
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rtcp = sockets.rtcp.as_ref().unwrap().local_addr().unwrap();
        for index in 0..7u8 {
            peer.send_to(&[index; 200], sockets.rtp.local_addr().unwrap()).unwrap();
        }
        peer.send_to(&[9; 80], rtcp).unwrap();
        assert_eq!(drain(&sockets), 8);
        assert_eq!(drain(&sockets), 0);
        let error = sockets.rtp.recv(&mut [0u8; 16]).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock);
    }

    /// With wake-ups deferred (the node's SIP driver), a change owes its worker a wake-up
    /// until `flush_wakes`, which pays it once; queries still wake the worker at once; turning
    /// deferral off pays what is owed.
    #[test]
    fn deferred_wakes_are_owed_until_flushed_and_queries_still_wake() {
        let config = crate::config::MediaConfig {
            workers: 1,
            ..crate::config::MediaConfig::default()
        };
        let engine = Engine::start(&config, "defer").unwrap();
        let owed = |engine: &Engine| engine.workers[0].owed.load(Ordering::Acquire);
        let bridge = engine.create_bridge(BridgeKind::Group(Default::default())).unwrap();
        let leg = engine.add_leg(bridge, crate::media::api::LegSpec::default()).unwrap();
        engine.flush_wakes();
        assert!(!owed(&engine));
        engine.defer_wakes(true);
        engine.set_source(bridge, Some(leg.id)).unwrap();
        assert!(owed(&engine), "the change owes a wake-up");
        engine.flush_wakes();
        assert!(!owed(&engine), "paid by the flush");
        // Queries are never deferred: each is answered at once even right after a change.
        for _ in 0..200 {
            engine.set_source(bridge, None).unwrap();
            let started = Instant::now();
            engine.stats(false).unwrap();
            assert!(started.elapsed() < Duration::from_millis(500));
        }
        assert!(owed(&engine));
        engine.defer_wakes(false);
        assert!(!owed(&engine), "turning deferral off pays what is owed");
        engine.set_source(bridge, Some(leg.id)).unwrap();
        assert!(!owed(&engine), "not deferred any more");
        engine.shutdown();
    }

    /// The eventfd is written only when the worker waits or is about to (`Waker`); a command
    /// queued in any of those instants must still be served at once. A lost wake-up would
    /// leave an idle worker (no legs: no timer for 1 s) asleep until its idle timeout.
    #[test]
    fn every_request_to_an_idle_worker_is_served_at_once() {
        let config = crate::config::MediaConfig {
            workers: 1,
            ..crate::config::MediaConfig::default()
        };
        let engine = Engine::start(&config, "wake").unwrap();
        let mut slowest = Duration::ZERO;
        for round in 0..3_000u32 {
            let started = Instant::now();
            engine.stats(false).unwrap();
            slowest = slowest.max(started.elapsed());
            // Sometimes let the worker fall asleep, sometimes catch it on its way there.
            match round % 3 {
                0 => std::thread::sleep(Duration::from_micros(u64::from(round % 200))),
                1 => std::thread::yield_now(),
                _ => {}
            }
        }
        assert!(slowest < Duration::from_millis(500), "a request waited {slowest:?}");
        engine.shutdown();
    }
}
