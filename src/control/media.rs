//! What call control asks of the user plane: relay bridges and their legs. The node gives the
//! SIP core the real engine ([`crate::io::Engine`]); sans-IO tests give it [`FakeMedia`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::io::Engine;
use crate::media::api::{BridgeId, BridgeKind, Event, LegId, LegInfo, LegSpec};

/// The media operations call control needs. Each returns at once (the engine applies them on
/// its workers for the next packet).
pub trait MediaPlane: Send {
    /// Creates a bridge.
    fn create_bridge(&mut self, kind: BridgeKind) -> Result<BridgeId, String>;
    /// Adds a leg (allocates its ports).
    fn add_leg(&mut self, bridge: BridgeId, spec: LegSpec) -> Result<LegInfo, String>;
    /// Replaces a leg's description after a renegotiation.
    fn update_leg(&mut self, leg: LegId, spec: LegSpec) -> Result<(), String>;
    /// Removes a bridge and all its legs (their ports go into quarantine).
    fn remove_bridge(&mut self, bridge: BridgeId);
    /// Sets the leg a group bridge forwards (the floor holder), or none.
    fn set_source(&mut self, bridge: BridgeId, leg: Option<LegId>) -> Result<(), String>;
    /// Removes one leg (its ports go into quarantine).
    fn remove_leg(&mut self, leg: LegId);
    /// The next event of the user plane (talker first packet, talker silent), if any.
    /// Called by the driver once it has sent what a batch of messages produced: a plane that
    /// defers work (the engine's wake-ups, [`Engine::defer_wakes`]) does it now.
    fn flush(&mut self) {}
    fn poll_event(&mut self) -> Option<Event> {
        None
    }
}

impl MediaPlane for Arc<Engine> {
    fn create_bridge(&mut self, kind: BridgeKind) -> Result<BridgeId, String> {
        Engine::create_bridge(self, kind).map_err(|error| error.to_string())
    }

    fn add_leg(&mut self, bridge: BridgeId, spec: LegSpec) -> Result<LegInfo, String> {
        Engine::add_leg(self, bridge, spec).map_err(|error| error.to_string())
    }

    fn update_leg(&mut self, leg: LegId, spec: LegSpec) -> Result<(), String> {
        Engine::update_leg(self, leg, spec).map_err(|error| error.to_string())
    }

    fn remove_bridge(&mut self, bridge: BridgeId) {
        if let Err(error) = Engine::remove_bridge(self, bridge) {
            tracing::warn!(%bridge, %error, "removing a bridge failed");
        }
    }

    fn set_source(&mut self, bridge: BridgeId, leg: Option<LegId>) -> Result<(), String> {
        Engine::set_source(self, bridge, leg).map_err(|error| error.to_string())
    }

    fn remove_leg(&mut self, leg: LegId) {
        if let Err(error) = Engine::remove_leg(self, leg) {
            tracing::warn!(%leg, %error, "removing a leg failed");
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events().try_recv().ok()
    }

    fn flush(&mut self) {
        self.flush_wakes();
    }
}

/// No user plane: every allocation fails (calls that need media are refused with 503).
#[derive(Debug, Default)]
pub struct NoMedia;

impl MediaPlane for NoMedia {
    fn create_bridge(&mut self, _kind: BridgeKind) -> Result<BridgeId, String> {
        Err("no media engine".to_owned())
    }

    fn add_leg(&mut self, _bridge: BridgeId, _spec: LegSpec) -> Result<LegInfo, String> {
        Err("no media engine".to_owned())
    }

    fn update_leg(&mut self, _leg: LegId, _spec: LegSpec) -> Result<(), String> {
        Err("no media engine".to_owned())
    }

    fn remove_bridge(&mut self, _bridge: BridgeId) {}

    fn set_source(&mut self, _bridge: BridgeId, _leg: Option<LegId>) -> Result<(), String> {
        Err("no media engine".to_owned())
    }

    fn remove_leg(&mut self, _leg: LegId) {}
}

/// An in-memory user plane for sans-IO tests: hands out port pairs and records every leg's
/// description, so tests can check what call control asked for.
#[derive(Debug, Clone)]
pub struct FakeMedia {
    state: Arc<std::sync::Mutex<FakeState>>,
}

/// What [`FakeMedia`] holds.
#[derive(Debug, Default)]
pub struct FakeState {
    next_id: u64,
    next_port: u16,
    /// Live bridges and their legs.
    pub bridges: HashMap<BridgeId, Vec<LegId>>,
    /// Live legs: local RTP address and latest description.
    pub legs: HashMap<LegId, (SocketAddr, LegSpec)>,
    /// Group bridges' sources.
    pub sources: HashMap<BridgeId, Option<LegId>>,
    /// What kind each live bridge is.
    pub kinds: HashMap<BridgeId, BridgeKind>,
}

impl FakeMedia {
    /// A fake whose legs live on `address`, ports from 40000 up.
    pub fn new() -> FakeMedia {
        FakeMedia {
            state: Arc::new(std::sync::Mutex::new(FakeState {
                next_port: 40_000,
                ..FakeState::default()
            })),
        }
    }

    /// Runs `f` on the recorded state.
    pub fn inspect<T>(&self, f: impl FnOnce(&FakeState) -> T) -> T {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&state)
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut state)
    }
}

impl Default for FakeMedia {
    fn default() -> Self {
        Self::new()
    }
}

impl MediaPlane for FakeMedia {
    fn create_bridge(&mut self, kind: BridgeKind) -> Result<BridgeId, String> {
        Ok(self.with(|state| {
            state.next_id += 1;
            let id = BridgeId(state.next_id);
            state.bridges.insert(id, Vec::new());
            state.kinds.insert(id, kind);
            id
        }))
    }

    fn add_leg(&mut self, bridge: BridgeId, spec: LegSpec) -> Result<LegInfo, String> {
        self.with(|state| {
            state.next_id += 1;
            let id = LegId(state.next_id);
            let port = state.next_port;
            state.next_port = state.next_port.wrapping_add(2);
            let local = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
            let legs = state.bridges.get_mut(&bridge).ok_or("unknown bridge")?;
            legs.push(id);
            state.legs.insert(id, (local, spec));
            Ok(LegInfo {
                id,
                local_rtp: local,
                local_rtcp: SocketAddr::new(local.ip(), port.wrapping_add(1)),
                ssrc: 1,
            })
        })
    }

    fn update_leg(&mut self, leg: LegId, spec: LegSpec) -> Result<(), String> {
        self.with(|state| match state.legs.get_mut(&leg) {
            Some(entry) => {
                entry.1 = spec;
                Ok(())
            }
            None => Err("unknown leg".to_owned()),
        })
    }

    fn remove_bridge(&mut self, bridge: BridgeId) {
        self.with(|state| {
            for leg in state.bridges.remove(&bridge).unwrap_or_default() {
                state.legs.remove(&leg);
            }
            state.sources.remove(&bridge);
            state.kinds.remove(&bridge);
        });
    }

    fn set_source(&mut self, bridge: BridgeId, leg: Option<LegId>) -> Result<(), String> {
        self.with(|state| {
            if !state.bridges.contains_key(&bridge) {
                return Err("unknown bridge".to_owned());
            }
            state.sources.insert(bridge, leg);
            Ok(())
        })
    }

    fn remove_leg(&mut self, leg: LegId) {
        self.with(|state| {
            state.legs.remove(&leg);
            for legs in state.bridges.values_mut() {
                legs.retain(|&other| other != leg);
            }
        });
    }
}
