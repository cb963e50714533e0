//! The SIP driver: one tokio task owns the UDP socket and the sans-IO [`Tcf`] core, feeds it
//! datagrams and timeouts, and carries out what it asks: send, persist, report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::control::tcf::{Binding, Location, Now, Output, Registration, StoreWrite, Tcf, TcfEvent};
use crate::node::store::{Store, Table};
use crate::proto::Number;

/// Terminal bindings (the serving-TCF view).
pub const BINDINGS: Table<Binding> = Table::new("bindings");
/// Home registrations (the H-TCF view).
pub const REGISTRATIONS: Table<Registration> = Table::new("registrations");
/// Group member locations (the group-home view, F-REG-07).
pub const LOCATIONS: Table<Location> = Table::new("locations");

/// A question to the running core (control path; for operators and tests).
#[derive(Debug)]
enum Query {
    Binding(Number, oneshot::Sender<Option<Binding>>),
    Registration(Number, oneshot::Sender<Option<Registration>>),
    Location(Number, oneshot::Sender<Option<Location>>),
    PeerUp(String, oneshot::Sender<Option<bool>>),
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
    Ok(())
}

/// Starts the SIP task on `socket`; it runs until `shutdown` fires (or the handle's channels
/// close).
pub fn spawn(
    socket: UdpSocket,
    mut tcf: Tcf,
    store: Store,
    mut shutdown: broadcast::Receiver<()>,
) -> anyhow::Result<(SipHandle, tokio::task::JoinHandle<()>)> {
    let address = socket.local_addr()?;
    let (events, _) = broadcast::channel(4096);
    let (queries, mut query_receiver) = mpsc::channel(64);
    let handle = SipHandle {
        address,
        events: events.clone(),
        queries,
    };
    let socket = Arc::new(socket);
    let task = tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        loop {
            carry_out(&mut tcf, &socket, &store, &events).await;
            let deadline = tokio::time::Instant::from_std(tcf.poll_timeout());
            tokio::select! {
                received = socket.recv_from(&mut buffer) => match received {
                    Ok((length, from)) => {
                        let datagram = Bytes::copy_from_slice(&buffer[..length]);
                        tcf.handle_datagram(now(), from, datagram);
                    }
                    Err(error) => tracing::debug!(%error, "SIP receive failed"),
                },
                _ = tokio::time::sleep_until(deadline) => tcf.handle_timeout(now()),
                query = query_receiver.recv() => match query {
                    Some(query) => answer(&tcf, query),
                    None => break,
                },
                _ = shutdown.recv() => break,
            }
        }
        carry_out(&mut tcf, &socket, &store, &events).await;
        if let Err(error) = store.flush() {
            tracing::error!(%error, "store flush at shutdown failed");
        }
    });
    Ok((handle, task))
}

fn answer(tcf: &Tcf, query: Query) {
    match query {
        Query::Binding(user, reply) => drop(reply.send(tcf.binding(&user).cloned())),
        Query::Registration(user, reply) => drop(reply.send(tcf.registration(&user).cloned())),
        Query::Location(user, reply) => drop(reply.send(tcf.location(&user).cloned())),
        Query::PeerUp(peer, reply) => drop(reply.send(tcf.peer_up(&peer))),
    }
}

async fn carry_out(tcf: &mut Tcf, socket: &UdpSocket, store: &Store, events: &broadcast::Sender<TcfEvent>) {
    while let Some(output) = tcf.poll_output() {
        match output {
            Output::Transmit { destination, bytes } => {
                if let Err(error) = socket.send_to(&bytes, destination).await {
                    tracing::debug!(%error, %destination, "SIP send failed");
                }
            }
            Output::Store(write) => {
                let result = match write {
                    StoreWrite::PutBinding(binding) => store.put(&BINDINGS, binding.user.as_str(), &binding),
                    StoreWrite::RemoveBinding(user) => store.remove(&BINDINGS, user.as_str()),
                    StoreWrite::PutRegistration(registration) => {
                        store.put(&REGISTRATIONS, registration.user.as_str(), &registration)
                    }
                    StoreWrite::RemoveRegistration(user) => store.remove(&REGISTRATIONS, user.as_str()),
                    StoreWrite::PutLocation(location) => store.put(&LOCATIONS, location.user.as_str(), &location),
                    StoreWrite::RemoveLocation(user) => store.remove(&LOCATIONS, user.as_str()),
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
}
