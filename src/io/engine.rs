//! The engine handle the control plane drives: it allocates ports and binds sockets (so errors
//! come back to the caller at once), places each bridge on a worker, and sends the worker
//! commands over a lock-free channel. Events come back on [`Engine::events`].
//!
//! Every call here is control path: it may lock the registry and allocate. The per-packet path
//! is entirely inside the workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::config::MediaConfig;
use crate::io::udp;
use crate::io::worker::{Command, LegSockets, Waker, Worker, WorkerConfig};
use crate::media::api::{BridgeId, BridgeKind, Event, LegId, LegInfo, LegSpec, LegStats, WorkerStats};
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
    /// A relay bridge already has two legs.
    #[error("bridge {0} is a relay and already has two legs")]
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
}

struct LegEntry {
    worker: usize,
    bridge: BridgeId,
    port: u16,
}

struct Registry {
    ports: PortPool,
    bridges: HashMap<BridgeId, BridgeEntry>,
    legs: HashMap<LegId, LegEntry>,
    legs_per_worker: Vec<usize>,
    next_id: u64,
}

struct WorkerHandle {
    commands: Sender<Command>,
    waker: Waker,
    thread: Option<JoinHandle<()>>,
}

/// The user-plane engine: media workers plus the registry of bridges and legs.
pub struct Engine {
    config: MediaConfig,
    registry: Mutex<Registry>,
    workers: Vec<WorkerHandle>,
    events: Receiver<Event>,
    io_uring_active: bool,
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
        for index in 0..config.workers.max(1) {
            let (commands, command_receiver) = unbounded();
            let worker_config = WorkerConfig {
                index,
                batch_size: config.batch_size,
                io_uring: config.backend == crate::config::IoBackend::IoUring,
                rx_coalesce: config.rx_coalesce,
                cpu: (!cpus.is_empty()).then(|| cpus[index % cpus.len()]),
                shard: ShardConfig {
                    rtcp_interval: config.rtcp_interval,
                    default_source_check: config.default_source_check,
                    cname: cname.chars().take(255).collect(),
                    seed: rand::random(),
                },
            };
            let (worker, waker) = Worker::new(worker_config, command_receiver, event_sender.clone(), origin)?;
            io_uring_active |= worker.uses_io_uring();
            let thread = std::thread::Builder::new()
                .name(format!("media-{index}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                commands,
                waker,
                thread: Some(thread),
            });
        }
        let registry = Registry {
            ports: PortPool::new(config.port_min, config.port_max, config.port_quarantine),
            bridges: HashMap::new(),
            legs: HashMap::new(),
            legs_per_worker: vec![0; workers.len()],
            next_id: 1,
        };
        Ok(Engine {
            config: config.clone(),
            registry: Mutex::new(registry),
            workers,
            events,
            io_uring_active,
        })
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
        let handle = self.workers.get(worker).ok_or(EngineError::WorkerGone)?;
        handle.commands.send(command).map_err(|_| EngineError::WorkerGone)?;
        handle.waker.wake();
        Ok(())
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
            },
        );
        // Reserve the worker's share now so bridges created in a burst spread out.
        registry.legs_per_worker[worker] += 1;
        self.send(worker, Command::AddBridge { id, kind })?;
        Ok(id)
    }

    /// Removes a bridge and every leg in it; their ports go into quarantine.
    pub fn remove_bridge(&self, id: BridgeId) -> Result<(), EngineError> {
        let mut registry = self.registry();
        let entry = registry.bridges.remove(&id).ok_or(EngineError::UnknownBridge(id))?;
        let now = Instant::now();
        for leg in &entry.legs {
            if let Some(leg_entry) = registry.legs.remove(leg) {
                registry.ports.release(leg_entry.port, now);
            }
        }
        let worker = entry.worker;
        registry.legs_per_worker[worker] = registry.legs_per_worker[worker].saturating_sub(entry.legs.len() + 1);
        self.send(worker, Command::RemoveBridge { id })
    }

    /// Adds a leg to a bridge: takes a port pair from the pool, binds it and hands the sockets
    /// to the bridge's worker. Fails cleanly when the ports are exhausted.
    pub fn add_leg(&self, bridge: BridgeId, spec: LegSpec) -> Result<LegInfo, EngineError> {
        let mut registry = self.registry();
        let entry = registry
            .bridges
            .get(&bridge)
            .ok_or(EngineError::UnknownBridge(bridge))?;
        if entry.kind == BridgeKind::Relay && entry.legs.len() >= 2 {
            return Err(EngineError::RelayFull(bridge));
        }
        let worker = entry.worker;
        let (port, sockets) = self.bind_pair(&mut registry, spec.rtcp_mux)?;
        let id = LegId(registry.next_id);
        registry.next_id += 1;
        let local_rtp = sockets.rtp.local_addr()?;
        let local_rtcp = match &sockets.rtcp {
            Some(socket) => socket.local_addr()?,
            None => local_rtp,
        };
        let origin = StreamOrigin {
            ssrc: rand::random(),
            seq: rand::random(),
            timestamp: rand::random(),
        };
        registry.legs.insert(id, LegEntry { worker, bridge, port });
        if let Some(entry) = registry.bridges.get_mut(&bridge) {
            entry.legs.push(id);
        }
        registry.legs_per_worker[worker] += 1;
        drop(registry);
        self.send(
            worker,
            Command::AddLeg {
                id,
                bridge,
                spec,
                origin,
                sockets,
            },
        )?;
        Ok(LegInfo {
            id,
            local_rtp,
            local_rtcp,
            ssrc: origin.ssrc,
        })
    }

    fn bind_pair(&self, registry: &mut Registry, rtcp_mux: bool) -> Result<(u16, LegSockets), EngineError> {
        let attempts = registry.ports.capacity();
        let now = Instant::now();
        for _ in 0..attempts {
            let port = match registry.ports.allocate(now) {
                Ok(port) => port,
                Err(PortError::Exhausted) => return Err(EngineError::PortsExhausted),
            };
            let address = self.config.address;
            let bound = udp::bind(
                SocketAddr::new(address, port),
                self.config.socket_rcvbuf,
                self.config.socket_sndbuf,
            )
            .and_then(|rtp| {
                let rtcp = if rtcp_mux {
                    None
                } else {
                    Some(udp::bind(
                        SocketAddr::new(address, port + 1),
                        self.config.socket_rcvbuf,
                        self.config.socket_sndbuf,
                    )?)
                };
                Ok(LegSockets { rtp, rtcp })
            });
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
        self.send(worker, Command::UpdateLeg { id: leg, spec })
    }

    /// Removes a leg; its ports go into quarantine.
    pub fn remove_leg(&self, leg: LegId) -> Result<(), EngineError> {
        let mut registry = self.registry();
        let entry = registry.legs.remove(&leg).ok_or(EngineError::UnknownLeg(leg))?;
        registry.ports.release(entry.port, Instant::now());
        if let Some(bridge) = registry.bridges.get_mut(&entry.bridge) {
            bridge.legs.retain(|&other| other != leg);
        }
        registry.legs_per_worker[entry.worker] = registry.legs_per_worker[entry.worker].saturating_sub(1);
        drop(registry);
        self.send(entry.worker, Command::RemoveLeg { id: leg })
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
        self.send(worker, Command::SetSource { bridge, leg })
    }

    /// Relay ports still available now (outside quarantine).
    pub fn ports_available(&self) -> usize {
        self.registry().ports.available(Instant::now())
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

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
