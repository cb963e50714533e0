//! The SIP driver: one tokio task owns the UDP socket and the sans-IO [`Tcf`] core, feeds it
//! datagrams and timeouts, and carries out what it asks: send, persist, report.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::control::tcf::{
    Binding, Location, MonitorRecord, Now, Output, Registration, Regroup, SipStats, SkrRecord, StoreWrite, Tcf,
    TcfEvent,
};
use crate::io::worker::thread_cpu_time;
use crate::node::datagrams::{watch, RecvDatagrams, SendDatagrams};
use crate::node::realtime::{Governor, WINDOW};
use crate::node::store::{Store, Table};
use crate::proto::Number;
use crate::sip::{Frame, Message, Rejection, StreamFramer};

/// Terminal bindings (the serving-TCF view).
pub const BINDINGS: Table<Binding> = Table::new("bindings");
/// Home registrations (the H-TCF view).
pub const REGISTRATIONS: Table<Registration> = Table::new("registrations");
/// Group member locations (the group-home view, F-REG-07).
pub const LOCATIONS: Table<Location> = Table::new("locations");
/// Regrouping overlays, one row per group (F-RGP-02).
pub const REGROUPS: Table<Regroup> = Table::new("regroups");
/// Users' stun/kill states (F-SKR: at the user's home, and a copy where it is served).
pub const SKR_STATES: Table<SkrRecord> = Table::new("skr_states");
/// Dispatcher monitorings (F-MON-01, F-MON-02), keyed `group/<gdn>/<dc>` or `user/<udn>/<dc>`.
pub const MONITORS: Table<MonitorRecord> = Table::new("monitors");

/// A question to the running core (control path; for operators and tests).
#[derive(Debug)]
enum Query {
    Binding(Number, oneshot::Sender<Option<Binding>>),
    Registration(Number, oneshot::Sender<Option<Registration>>),
    Location(Number, oneshot::Sender<Option<Location>>),
    PeerUp(String, oneshot::Sender<Option<bool>>),
    Stats(oneshot::Sender<SipStats>),
    Scheduling(oneshot::Sender<SipScheduling>),
    Monitors(oneshot::Sender<Vec<MonitorRecord>>),
}

/// How the SIP thread is scheduled now (`sip.realtime_priority`, for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SipScheduling {
    /// Under `SCHED_FIFO` now.
    pub realtime: bool,
    /// Moves between real-time and ordinary scheduling since the start.
    pub changes: u64,
}

/// A handle on a running SIP core.
#[derive(Debug, Clone)]
pub struct SipHandle {
    /// Where SIP listens.
    pub address: SocketAddr,
    events: broadcast::Sender<TcfEvent>,
    queries: mpsc::Sender<Query>,
}

impl SipHandle {
    /// Subscribes to the core's events (registrations, peers, locations).
    pub fn subscribe(&self) -> broadcast::Receiver<TcfEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.queries.send(make(reply)).await.ok()?;
        answer.await.ok()
    }

    /// A terminal's binding at this node.
    pub async fn binding(&self, user: &Number) -> Option<Binding> {
        self.ask(|reply| Query::Binding(user.clone(), reply)).await.flatten()
    }

    /// A user's home registration at this node.
    pub async fn registration(&self, user: &Number) -> Option<Registration> {
        self.ask(|reply| Query::Registration(user.clone(), reply))
            .await
            .flatten()
    }

    /// A group member's location known at this node.
    pub async fn location(&self, user: &Number) -> Option<Location> {
        self.ask(|reply| Query::Location(user.clone(), reply)).await.flatten()
    }

    /// A snapshot of the core for metrics.
    pub async fn stats(&self) -> Option<SipStats> {
        self.ask(Query::Stats).await
    }

    /// How the SIP thread is scheduled now.
    pub async fn scheduling(&self) -> Option<SipScheduling> {
        self.ask(Query::Scheduling).await
    }

    /// The monitoring relations recorded at this node (F-MON-01, F-MON-02).
    pub async fn monitors(&self) -> Option<Vec<MonitorRecord>> {
        self.ask(Query::Monitors).await
    }

    /// A peer's heartbeat state.
    pub async fn peer_up(&self, peer: &str) -> Option<bool> {
        self.ask(|reply| Query::PeerUp(peer.to_owned(), reply)).await.flatten()
    }
}

fn now() -> Now {
    Now {
        instant: Instant::now(),
        wall: SystemTime::now(),
    }
}

/// Restores the core's durable state from the store.
pub fn restore(tcf: &mut Tcf, store: &Store) -> anyhow::Result<()> {
    let bindings = store.scan(&BINDINGS)?.into_iter().map(|(_, value)| value).collect();
    let registrations = store
        .scan(&REGISTRATIONS)?
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    let locations = store.scan(&LOCATIONS)?.into_iter().map(|(_, value)| value).collect();
    tcf.restore(bindings, registrations, locations, now());
    let regroups = store.scan(&REGROUPS)?.into_iter().map(|(_, value)| value).collect();
    tcf.restore_regroups(regroups);
    tcf.restore_skr(store.scan(&SKR_STATES)?.into_iter().map(|(_, value)| value).collect());
    tcf.restore_monitors(store.scan(&MONITORS)?.into_iter().map(|(_, value)| value).collect());
    Ok(())
}

/// Most datagrams handled per wake-up before the answers go out (bounds the added latency).
const RECEIVE_BURST: usize = 32;

/// Bytes of receive buffers: as many datagram slots of `sip.max_message_size` as fit, up to
/// [`RECEIVE_BURST`] (32 slots at the default 64 KiB).
const RECEIVE_BUFFERS: usize = 2 * 1024 * 1024;

/// What connection tasks tell the core task.
enum Inbound {
    /// A connection opened: frames to send to `peer` go to `writer`.
    Opened {
        peer: SocketAddr,
        writer: mpsc::Sender<Bytes>,
    },
    /// A message framed from a connection.
    Message { peer: SocketAddr, message: Message },
    /// A complete message that failed validation.
    Rejected { peer: SocketAddr, rejection: Rejection },
    /// The connection closed.
    Closed { peer: SocketAddr },
}

/// Transport limits.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    /// Largest message.
    pub max_message_size: usize,
    /// Most simultaneous TCP connections.
    pub max_connections: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: std::time::Duration,
}

/// Starts the SIP core on a thread of its own ("sip", with a single-threaded tokio runtime):
/// the core is one sequential state machine, so it gains nothing from hopping between the
/// node's runtime workers and loses cache warmth and wake-up latency when it does. `socket`
/// (UDP) and `listener` (TCP, same address) must be non-blocking. Runs until `shutdown` fires.
/// `realtime` may run the thread under `SCHED_FIFO` while it is lightly loaded
/// (`sip.realtime_priority`, [`crate::node::realtime`]); when the kernel refuses, the node warns
/// and goes on with ordinary scheduling.
#[allow(clippy::too_many_arguments)]
pub fn spawn_dedicated(
    socket: std::net::UdpSocket,
    listener: std::net::TcpListener,
    limits: TransportLimits,
    realtime: Realtime,
    tcf: Tcf,
    store: Store,
    shutdown: broadcast::Receiver<()>,
) -> anyhow::Result<(SipHandle, std::thread::JoinHandle<()>)> {
    let (handed, handle) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new().name("sip".into()).spawn(move || {
        let governed = (realtime.priority > 0 && realtime.start()).then_some(realtime);
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = handed.send(Err(anyhow::anyhow!("SIP runtime: {error}")));
                return;
            }
        };
        runtime.block_on(async move {
            let sockets = SipSocket::new(socket).and_then(|socket| Ok((socket, TcpListener::from_std(listener)?)));
            let (socket, listener) = match sockets {
                Ok(sockets) => sockets,
                Err(error) => {
                    let _ = handed.send(Err(anyhow::anyhow!("SIP sockets: {error}")));
                    return;
                }
            };
            match spawn(socket, listener, limits, governed, tcf, store, shutdown) {
                Ok((handle, task)) => {
                    let _ = handed.send(Ok(handle));
                    let _ = task.await;
                }
                Err(error) => {
                    let _ = handed.send(Err(error));
                }
            }
        });
    })?;
    let handle = handle
        .recv()
        .map_err(|_| anyhow::anyhow!("SIP thread ended before starting"))??;
    Ok((handle, thread))
}

/// How the SIP thread is scheduled (`sip.realtime_priority`, `sip.realtime_max_busy`).
#[derive(Debug, Clone, Copy)]
pub struct Realtime {
    /// `SCHED_FIFO` priority; 0: ordinary scheduling throughout.
    pub priority: u8,
    /// Share of a CPU above which the thread goes ordinary for a while.
    pub max_busy: f64,
}

impl Realtime {
    /// Makes the calling thread real-time; false (with a warning) when the kernel refuses.
    fn start(&self) -> bool {
        match crate::io::worker::set_realtime(self.priority) {
            Ok(()) => {
                tracing::info!(
                    priority = self.priority,
                    max_busy = self.max_busy,
                    "SIP thread runs under SCHED_FIFO while lightly loaded"
                );
                true
            }
            Err(error) => {
                tracing::warn!(
                    priority = self.priority,
                    %error,
                    "cannot run the SIP thread under SCHED_FIFO (needs CAP_SYS_NICE or RLIMIT_RTPRIO); ordinary scheduling"
                );
                false
            }
        }
    }

    /// Moves the calling thread (the SIP thread) as `governor` decided, counting the moves in
    /// `scheduling`. A refusal (the right to real time withdrawn since the start) leaves the
    /// thread ordinary, and is logged once.
    fn apply(
        &self,
        governor: &mut Governor,
        change: Option<crate::node::realtime::Change>,
        scheduling: &mut SipScheduling,
        refusals: &mut u64,
    ) {
        use crate::node::realtime::Change;
        let result = match change {
            Some(Change::Ordinary) => crate::io::worker::set_ordinary(),
            Some(Change::Realtime) => crate::io::worker::set_realtime(self.priority),
            None => return,
        };
        match result {
            Ok(()) => {
                scheduling.changes += 1;
                tracing::debug!(?change, "SIP thread scheduling changed");
            }
            Err(error) => {
                governor.refused(Instant::now(), thread_cpu_time());
                *refusals += 1;
                if *refusals == 1 {
                    tracing::warn!(?change, %error, "SIP thread scheduling change refused; it stays ordinary until allowed");
                }
            }
        }
        scheduling.realtime = governor.realtime();
    }
}

/// Starts the SIP task on the current runtime. `governed`: the thread runs real-time, and the
/// task moves it between real-time and ordinary scheduling as its load asks
/// ([`crate::node::realtime::Governor`]).
fn spawn(
    socket: SipSocket,
    listener: TcpListener,
    limits: TransportLimits,
    governed: Option<Realtime>,
    mut tcf: Tcf,
    store: Store,
    mut shutdown: broadcast::Receiver<()>,
) -> anyhow::Result<(SipHandle, tokio::task::JoinHandle<()>)> {
    let address = socket.0.get_ref().local_addr()?;
    let (events, _) = broadcast::channel(4096);
    let (queries, mut query_receiver) = mpsc::channel(64);
    let handle = SipHandle {
        address,
        events: events.clone(),
        queries,
    };
    let socket = Arc::new(socket);
    let (inbound_sender, mut inbound) = mpsc::channel::<Inbound>(1024);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let task = tokio::spawn(async move {
        // One byte more than the longest message accepted, so that an oversize one shows.
        let slot = limits.max_message_size + 1;
        let mut inbound_datagrams = RecvDatagrams::new((RECEIVE_BUFFERS / slot).clamp(1, RECEIVE_BURST), slot);
        let mut outbound_datagrams = SendDatagrams::new();
        let mut connections: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
        let mut governor = governed.map(|realtime| {
            let governor = Governor::new(realtime.max_busy, Instant::now(), thread_cpu_time());
            (realtime, governor)
        });
        let mut refusals = 0u64;
        let mut scheduling = SipScheduling {
            realtime: governor.is_some(),
            changes: 0,
        };
        let mut windows = tokio::time::interval(WINDOW);
        windows.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            carry_out(
                &mut tcf,
                &socket,
                &mut outbound_datagrams,
                &connections,
                &store,
                &events,
            )
            .await;
            let deadline = tokio::time::Instant::from_std(tcf.poll_timeout());
            tokio::select! {
                ready = socket.0.readable() => {
                    // One `recvmmsg` takes what is queued (bounded) before anything is sent:
                    // one wake-up then serves a burst instead of one datagram.
                    let received = match ready {
                        Ok(mut guard) => match guard.try_io(|fd| inbound_datagrams.receive(fd.as_raw_fd())) {
                            Ok(result) => result,
                            Err(_would_block) => Err(std::io::ErrorKind::WouldBlock.into()),
                        },
                        Err(error) => Err(error),
                    };
                    match received {
                        Ok(count) => {
                            if let Some((realtime, governor)) = governor.as_mut() {
                                if governor.received(count) {
                                    let change = governor.backlog(Instant::now(), thread_cpu_time());
                                    realtime.apply(governor, change, &mut scheduling, &mut refusals);
                                }
                            }
                            let now = now();
                            for (from, bytes) in inbound_datagrams.datagrams() {
                                tcf.handle_datagram(now, from, Bytes::copy_from_slice(bytes));
                            }
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(error) => tracing::debug!(%error, "SIP receive failed"),
                    }
                },
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let sender = inbound_sender.clone();
                            tokio::spawn(connection(stream, peer, limits, sender, permit));
                        }
                        Err(_) => tracing::warn!(%peer, "TCP connection refused: sip.max_tcp_connections reached"),
                    },
                    Err(error) => tracing::debug!(%error, "TCP accept failed"),
                },
                Some(message) = inbound.recv() => match message {
                    Inbound::Opened { peer, writer } => { connections.insert(peer, writer); }
                    Inbound::Closed { peer } => { connections.remove(&peer); }
                    Inbound::Message { peer, message } => tcf.handle_message(now(), peer, message, true),
                    Inbound::Rejected { peer, rejection } => tcf.handle_rejection(now(), peer, &rejection),
                },
                _ = tokio::time::sleep_until(deadline) => tcf.handle_timeout(now()),
                _ = windows.tick(), if governor.is_some() => {
                    if let Some((realtime, governor)) = governor.as_mut() {
                        let change = governor.observe(Instant::now(), thread_cpu_time());
                        realtime.apply(governor, change, &mut scheduling, &mut refusals);
                    }
                },
                query = query_receiver.recv() => match query {
                    Some(Query::Scheduling(reply)) => drop(reply.send(scheduling)),
                    Some(query) => answer(&tcf, query),
                    None => break,
                },
                _ = shutdown.recv() => break,
            }
        }
        carry_out(
            &mut tcf,
            &socket,
            &mut outbound_datagrams,
            &connections,
            &store,
            &events,
        )
        .await;
        let flushed = tokio::task::spawn_blocking(move || store.flush()).await;
        if let Ok(Err(error)) = flushed {
            tracing::error!(%error, "store flush at shutdown failed");
        }
    });
    Ok((handle, task))
}

/// One TCP connection: frames messages by Content-Length (RFC 3261 §18.3), hands them to the
/// core, writes what the core sends to this peer. Closes on a framing error, on idle, or when
/// the core is gone.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    limits: TransportLimits,
    inbound: mpsc::Sender<Inbound>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (outbound, mut outbound_receiver) = mpsc::channel::<Bytes>(64);
    if inbound.send(Inbound::Opened { peer, writer: outbound }).await.is_err() {
        return;
    }
    let writing = tokio::spawn(async move {
        while let Some(bytes) = outbound_receiver.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut framer = StreamFramer::new(limits.max_message_size);
    let mut chunk = vec![0u8; 16 * 1024];
    'read: loop {
        let read = match tokio::time::timeout(limits.idle_timeout, reader.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => read,
        };
        framer.push(&chunk[..read]);
        loop {
            match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Message(message))) => {
                    if inbound.send(Inbound::Message { peer, message }).await.is_err() {
                        break 'read;
                    }
                }
                Ok(Some(Frame::Rejected(rejection))) => {
                    if inbound.send(Inbound::Rejected { peer, rejection }).await.is_err() {
                        break 'read;
                    }
                }
                Ok(Some(Frame::Ping)) => {} // keep-alive; the connection stays open
                Err(error) => {
                    tracing::debug!(%peer, %error, "closing TCP connection");
                    break 'read;
                }
            }
        }
    }
    let _ = inbound.send(Inbound::Closed { peer }).await;
    writing.abort();
}

fn answer(tcf: &Tcf, query: Query) {
    match query {
        Query::Binding(user, reply) => drop(reply.send(tcf.binding(&user).cloned())),
        Query::Registration(user, reply) => drop(reply.send(tcf.registration(&user).cloned())),
        Query::Location(user, reply) => drop(reply.send(tcf.location(&user).cloned())),
        Query::PeerUp(peer, reply) => drop(reply.send(tcf.peer_up(&peer))),
        Query::Stats(reply) => drop(reply.send(tcf.stats())),
        Query::Monitors(reply) => drop(reply.send(tcf.monitors())),
        // Answered by the loop, which holds the scheduling state.
        Query::Scheduling(_) => {}
    }
}

/// The SIP UDP socket, watched for readability only. A UDP socket is writable nearly always,
/// and every datagram the kernel frees after sending it raises an edge-triggered `EPOLLOUT`:
/// registered for both (as `tokio::net::UdpSocket` is), each wake-up of the SIP thread cost
/// one more `epoll_wait` that returned at once with nothing to do. Writability is watched only
/// while a send waits for buffer room ([`send_datagrams`]).
struct SipSocket(AsyncFd<std::net::UdpSocket>);

impl SipSocket {
    fn new(socket: std::net::UdpSocket) -> std::io::Result<SipSocket> {
        socket.set_nonblocking(true)?;
        Ok(SipSocket(watch(socket, Interest::READABLE)?))
    }

    /// Waits until the socket has buffer room again: a duplicate of its descriptor is watched
    /// for writability for as long as this takes (the original stays registered for reading).
    async fn writable(&self) -> std::io::Result<()> {
        let watcher = watch(self.0.get_ref().try_clone()?, Interest::WRITABLE)?;
        let mut guard = watcher.writable().await?;
        guard.clear_ready();
        Ok(())
    }
}

async fn carry_out(
    tcf: &mut Tcf,
    socket: &SipSocket,
    datagrams: &mut SendDatagrams,
    connections: &HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    store: &Store,
    events: &broadcast::Sender<TcfEvent>,
) {
    while let Some(output) = tcf.poll_output() {
        match output {
            Output::Transmit { destination, bytes } => {
                // Connection reuse (RFC 3261 §18): a peer with an open connection gets its
                // messages on it; everyone else over UDP.
                if let Some(connection) = connections.get(&destination) {
                    if connection.try_send(bytes.clone()).is_ok() {
                        continue;
                    }
                }
                datagrams.push(destination, bytes);
            }
            Output::Store(write) => {
                // A dispatcher's order (regrouping F-RGP-02, stun/kill/revive F-SKR-02, monitoring F-MON) is
                // answered only once it is on disk: the answer follows this write in the outputs.
                let durable = matches!(
                    write,
                    StoreWrite::PutRegroup(_)
                        | StoreWrite::RemoveRegroup(_)
                        | StoreWrite::PutSkrState(_)
                        | StoreWrite::RemoveSkrState(_)
                        | StoreWrite::PutMonitor(_)
                        | StoreWrite::RemoveMonitor(_)
                );
                let result = match write {
                    StoreWrite::PutBinding(binding) => store.put(&BINDINGS, binding.user.as_str(), &binding),
                    StoreWrite::RemoveBinding(user) => store.remove(&BINDINGS, user.as_str()),
                    StoreWrite::PutRegistration(registration) => {
                        store.put(&REGISTRATIONS, registration.user.as_str(), &registration)
                    }
                    StoreWrite::RemoveRegistration(user) => store.remove(&REGISTRATIONS, user.as_str()),
                    StoreWrite::PutLocation(location) => store.put(&LOCATIONS, location.user.as_str(), &location),
                    StoreWrite::RemoveLocation(user) => store.remove(&LOCATIONS, user.as_str()),
                    StoreWrite::PutRegroup(regroup) => store.put(&REGROUPS, regroup.group.as_str(), &regroup),
                    StoreWrite::RemoveRegroup(group) => store.remove(&REGROUPS, group.as_str()),
                    StoreWrite::PutSkrState(record) => store.put(&SKR_STATES, record.user.as_str(), &record),
                    StoreWrite::RemoveSkrState(user) => store.remove(&SKR_STATES, user.as_str()),
                    StoreWrite::PutMonitor(record) => store.put(&MONITORS, &record.key.store_key(), &record),
                    StoreWrite::RemoveMonitor(key) => store.remove(&MONITORS, &key.store_key()),
                };
                let result = match result {
                    Ok(()) if durable => {
                        let store = store.clone();
                        tokio::task::spawn_blocking(move || store.flush())
                            .await
                            .unwrap_or(Ok(()))
                    }
                    other => other,
                };
                if let Err(error) = result {
                    tracing::error!(%error, "durable state write failed");
                }
            }
            Output::Event(event) => {
                tracing::debug!(?event, "sip event");
                let _ = events.send(event);
            }
        }
    }
    send_datagrams(socket, datagrams).await;
    // The responses are out: now wake the media workers the changes they carry are owed to
    // (`Engine::defer_wakes`).
    tcf.flush_media();
}

/// Sends the queued datagrams with as few `sendmmsg` calls as the kernel allows. Only a full
/// socket buffer waits; a datagram the kernel refuses (say, no route) is dropped and logged.
async fn send_datagrams(socket: &SipSocket, datagrams: &mut SendDatagrams) {
    while !datagrams.is_empty() {
        match datagrams.send(socket.0.as_raw_fd()) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(error) = socket.writable().await {
                    tracing::debug!(%error, "SIP socket not writable; dropping queued datagrams");
                    datagrams.consume(datagrams.len());
                }
            }
            Err(error) => {
                if let Some((destination, _)) = datagrams.queued().first() {
                    tracing::debug!(%error, %destination, "SIP send failed");
                }
                datagrams.consume(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIP socket is watched for reading only: a send leaves no readiness behind that
    /// would wake the thread, a datagram does wake it, and waiting for buffer room (a
    /// duplicate descriptor watched for writing) works while the socket stays registered.
    #[tokio::test(flavor = "current_thread")]
    async fn the_sip_socket_wakes_for_datagrams_only() {
        let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = std_socket.local_addr().unwrap();
        let socket = SipSocket::new(std_socket).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Sending raises no readiness of its own.
        let mut outbound = SendDatagrams::new();
        outbound.push(peer.local_addr().unwrap(), Bytes::from_static(b"ping"));
        send_datagrams(&socket, &mut outbound).await;
        let mut buffer = [0u8; 16];
        assert_eq!(peer.recv(&mut buffer).unwrap(), 4);
        let idle = tokio::time::timeout(std::time::Duration::from_millis(50), socket.0.readable()).await;
        assert!(idle.is_err(), "no readiness without a datagram");
        // A datagram does.
        peer.send_to(b"pong", address).unwrap();
        let mut guard = tokio::time::timeout(std::time::Duration::from_secs(5), socket.0.readable())
            .await
            .expect("woken by the datagram")
            .unwrap();
        let mut inbound = RecvDatagrams::new(4, 64);
        let received = guard
            .try_io(|fd| inbound.receive(fd.as_raw_fd()))
            .expect("ready")
            .unwrap();
        assert_eq!(received, 1);
        // Waiting for room on a socket that has it returns at once, twice (the watcher is gone
        // after each wait).
        for _ in 0..2 {
            tokio::time::timeout(std::time::Duration::from_secs(5), socket.writable())
                .await
                .expect("room at once")
                .unwrap();
        }
    }
}
