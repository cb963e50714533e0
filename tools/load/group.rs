//! One group call, driven as its members would: the first member sets it up (INVITE to the
//! group number), the others are invited by the TCF and answer; then the floor moves in the
//! scenario's pattern (re-INVITEs `pttrequest` / `pttreleasefloor` in the members' sessions)
//! and each holder talks for a spurt; the initiator's BYE ends it. In cycle mode the call is set
//! up and torn down again and again (group calls per second).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floorcast::sdp::Direction;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};

use crate::run::Ctx;
use crate::scenario::Pattern;
use crate::sender::{SendCommand, Spurt};
use crate::stats::{lock, record, Failure, GroupOutcome, Membership, SpurtRecord};
use crate::ua::{Event, EventKind, UaError};

/// The spurt being sent.
struct Talking {
    slot: u32,
    spurt: u32,
    grant_ns: u64,
}

/// A member's state in the call.
#[derive(Debug, Clone, Default)]
struct Member {
    call_id: Option<String>,
    /// The TCF's leg for this member (where its RTP goes).
    remote_rtp: Option<SocketAddr>,
    payload_type: Option<u8>,
    joined: bool,
    left: bool,
}

struct GroupCall {
    ctx: Arc<Ctx>,
    index: usize,
    session: u32,
    events: mpsc::UnboundedReceiver<Event>,
    members: Vec<Member>,
    /// Terminal index → member position.
    positions: HashMap<usize, usize>,
    holder: Option<usize>,
    /// Floor grants that came as in-dialog INVITEs: (position, when).
    granted: VecDeque<(usize, Instant)>,
    /// The holder lost the floor (pttreleasefloor from the TCF).
    revoked: bool,
    spurts: u32,
    failure: Option<Failure>,
    /// Cycle mode: the first failure of any cycle (what the outcome reports).
    first_failure: Option<Failure>,
    rng: StdRng,
}

/// Runs group call `index` of the plan: set-up (reporting readiness on `ready`), traffic once
/// `go` turns true, teardown when the run stops.
pub async fn run(
    ctx: Arc<Ctx>,
    index: usize,
    events: mpsc::UnboundedReceiver<Event>,
    start_after: Duration,
    ready: oneshot::Sender<bool>,
    mut go: watch::Receiver<bool>,
) {
    let plan = &ctx.plan.groups[index];
    let seed = match ctx.scenario.run.seed {
        0 => rand::random(),
        seed => seed.wrapping_add(index as u64),
    };
    let mut call = GroupCall {
        session: ctx.shared.session_id(),
        members: vec![Member::default(); plan.members.len()],
        positions: plan
            .members
            .iter()
            .enumerate()
            .map(|(position, &terminal)| (terminal, position))
            .collect(),
        ctx: ctx.clone(),
        index,
        events,
        holder: None,
        granted: VecDeque::new(),
        revoked: false,
        spurts: 0,
        failure: None,
        first_failure: None,
        rng: StdRng::seed_from_u64(seed),
    };
    tokio::time::sleep(start_after).await;
    let up = call.set_up().await;
    let _ = ready.send(up);
    if up {
        ctx.shared.groups_up.fetch_add(1, Ordering::Relaxed);
        // Wait for the start of traffic (every group set up), or the end of the run.
        while !*go.borrow() && !ctx.shared.stopping() {
            if go.changed().await.is_err() {
                break;
            }
        }
        if ctx.scenario.group.cycle {
            call.cycles().await;
        } else {
            call.traffic().await;
            call.tear_down().await;
        }
        ctx.shared.groups_up.fetch_sub(1, Ordering::Relaxed);
    }
    call.finish();
}

impl GroupCall {
    fn plan(&self) -> &crate::plan::GroupPlan {
        &self.ctx.plan.groups[self.index]
    }

    fn gdn(&self) -> String {
        self.plan().number.clone()
    }

    fn terminal(&self, position: usize) -> usize {
        self.plan().members[position]
    }

    fn slot(&self, position: usize) -> u32 {
        self.plan().slots[position]
    }

    /// Whether the member is served by another TCF than the group's home.
    fn remote(&self, position: usize) -> bool {
        self.ctx.plan.slots[self.slot(position) as usize].remote
    }

    fn number(&self, position: usize) -> String {
        self.ctx.plan.terminals[self.terminal(position)].number.clone()
    }

    fn fail(&mut self, reason: String) {
        if self.failure.is_none() {
            let at_s = self.ctx.traffic_elapsed_s();
            lock(&self.ctx.shared.control)
                .evidence(format!("group {} failed at {at_s:.2}s: {reason}", self.plan().number));
            self.failure = Some(Failure { reason, at_s });
        }
    }

    fn sip_error(&mut self, what: &str, error: &UaError) {
        {
            let mut control = lock(&self.ctx.shared.control);
            match error {
                UaError::Timeout => control.counters.sip_timeouts += 1,
                _ => control.counters.sip_errors += 1,
            }
        }
        self.fail(format!("{what}: {error}"));
    }

    fn membership(&self, position: usize, joined: Instant) {
        let joined_ns = self.ctx.shared.wall_ns(joined);
        lock(&self.ctx.shared.control).memberships.push(Membership {
            slot: self.slot(position),
            session: self.session,
            joined_ns,
            left_ns: None,
        });
    }

    fn leave(&mut self, position: usize, at: Instant) {
        if self.members[position].left || !self.members[position].joined {
            return;
        }
        self.members[position].left = true;
        let slot = self.slot(position);
        let session = self.session;
        let left_ns = self.ctx.shared.wall_ns(at);
        let mut control = lock(&self.ctx.shared.control);
        if let Some(membership) = control
            .memberships
            .iter_mut()
            .rev()
            .find(|membership| membership.slot == slot && membership.session == session)
        {
            membership.left_ns = Some(left_ns);
        }
    }

    fn joined_count(&self) -> usize {
        self.members
            .iter()
            .filter(|member| member.joined && !member.left)
            .count()
    }

    /// Applies one event from a member's UA.
    fn absorb(&mut self, event: Event) {
        let Some(&position) = self.positions.get(&event.terminal) else {
            return;
        };
        match event.kind {
            EventKind::Joined {
                remote_rtp,
                payload_type,
                ..
            } => {
                let member = &mut self.members[position];
                if member.joined && !member.left {
                    return;
                }
                member.call_id = Some(event.call_id);
                member.remote_rtp = remote_rtp;
                member.payload_type = payload_type;
                member.joined = true;
                member.left = false;
                self.membership(position, event.at);
            }
            EventKind::Talker => {
                lock(&self.ctx.shared.control).counters.talker_notifications += 1;
            }
            EventKind::Waiting => {}
            EventKind::FloorGranted => self.granted.push_back((position, event.at)),
            EventKind::FloorRevoked { cause } => {
                if self.holder == Some(position) {
                    self.revoked = true;
                    self.holder = None;
                }
                lock(&self.ctx.shared.control).counters.floor_revoked += 1;
                let number = self.number(position);
                lock(&self.ctx.shared.control).evidence(format!(
                    "group {}: the TCF took the floor from {number} (pttreleasefloor;cause={cause})",
                    self.plan().number
                ));
            }
            EventKind::Ended { reason } => {
                if self.members[position].call_id.as_deref() != Some(event.call_id.as_str()) {
                    return;
                }
                self.leave(position, event.at);
                if !self.ctx.shared.stopping() {
                    lock(&self.ctx.shared.control).counters.unexpected_byes += 1;
                    let number = self.number(position);
                    self.fail(format!("the TCF ended {number}'s session (BYE {reason})"));
                }
            }
            EventKind::Cancelled => {}
        }
    }

    /// Takes every event already queued.
    fn absorb_queued(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.absorb(event);
        }
    }

    /// Absorbs events until `until` (or the run stops, when `stop_early`).
    async fn pause(&mut self, until: Instant, stop_early: bool) {
        loop {
            self.absorb_queued();
            if (stop_early && (self.ctx.shared.stopping() || self.revoked)) || self.failure.is_some() {
                return;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            let wait = (until - now).min(Duration::from_millis(50));
            if let Ok(Some(event)) = tokio::time::timeout(wait, self.events.recv()).await {
                self.absorb(event);
            }
        }
    }

    /// Absorbs events until a floor grant (for `position`, or anyone) is queued, the call
    /// failed, or `deadline`.
    async fn wait_granted(&mut self, deadline: Instant, position: Option<usize>) {
        loop {
            self.absorb_queued();
            let granted = match position {
                Some(position) => self.granted.iter().any(|(granted, _)| *granted == position),
                None => !self.granted.is_empty(),
            };
            if granted || self.failure.is_some() {
                return;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return;
            }
            match tokio::time::timeout(wait, self.events.recv()).await {
                Ok(Some(event)) => self.absorb(event),
                _ => return,
            }
        }
    }

    async fn set_up(&mut self) -> bool {
        let gdn = self.gdn();
        let ua = self.ctx.uas[self.terminal(0)].clone();
        let port = self.ctx.ports[self.slot(0) as usize];
        let sent = Instant::now();
        match ua.invite(&gdn, port, Some(&gdn)).await {
            Ok(answered) if answered.status == 200 => {
                let now = Instant::now();
                let took = answered.round_trip.unwrap_or(now - sent);
                record(&mut lock(&self.ctx.shared.control).latencies.group_setup, took);
                self.members[0] = Member {
                    call_id: Some(answered.call_id),
                    remote_rtp: answered.remote_rtp,
                    payload_type: answered.payload_type,
                    joined: true,
                    left: false,
                };
                self.membership(0, now);
                if answered.extension.contains("pttaccept") {
                    self.holder = Some(0);
                }
            }
            Ok(answered) => {
                self.fail(format!("set-up answered {} {}", answered.status, answered.extension));
                return false;
            }
            Err(error) => {
                self.sip_error("set-up", &error);
                return false;
            }
        }
        // Everyone else is invited by the TCF.
        let deadline = sent + Duration::from_millis(self.ctx.scenario.run.setup_timeout_ms);
        while self.joined_count() < self.members.len() && Instant::now() < deadline {
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, self.events.recv()).await {
                Ok(Some(event)) => {
                    let joined = matches!(event.kind, EventKind::Joined { .. });
                    let at = event.at;
                    self.absorb(event);
                    if joined {
                        record(&mut lock(&self.ctx.shared.control).latencies.join, at - sent);
                    }
                }
                _ => break,
            }
        }
        let missing = self.members.len() - self.joined_count();
        if missing == 0 {
            record(
                &mut lock(&self.ctx.shared.control).latencies.group_setup_all,
                sent.elapsed(),
            );
        }
        if missing > 0 {
            let absent: Vec<String> = (0..self.members.len())
                .filter(|&position| !self.members[position].joined)
                .map(|position| self.number(position))
                .collect();
            let mut control = lock(&self.ctx.shared.control);
            control.counters.members_missing += missing as u64;
            control.evidence(format!(
                "group {gdn}: {missing} member(s) not invited within the set-up timeout: {}",
                absent.join(", ")
            ));
        }
        self.failure.is_none()
    }

    /// The next talker after `current` in the pattern (never a dispatcher for `burst`).
    fn next_talker(&mut self, current: Option<usize>) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.members.len())
            .filter(|&position| self.members[position].joined && !self.members[position].left)
            .filter(|&position| Some(position) != current)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        match self.ctx.scenario.group.pattern {
            Pattern::RoundRobin => {
                let after = current.unwrap_or(self.members.len() - 1);
                candidates
                    .iter()
                    .copied()
                    .find(|&position| position > after)
                    .or_else(|| candidates.first().copied())
            }
            Pattern::Random | Pattern::Burst => Some(candidates[self.rng.random_range(0..candidates.len())]),
        }
    }

    fn stop_wanted(&self) -> bool {
        let max = self.ctx.scenario.run.max_spurts;
        self.ctx.shared.stopping()
            || self.failure.is_some()
            || (max != 0 && self.ctx.shared.spurts_started.load(Ordering::Relaxed) >= max)
    }

    async fn traffic(&mut self) {
        let mut grant_at = Instant::now();
        // The initiator holds the floor from the set-up: it talks first.
        loop {
            if self.stop_wanted() {
                break;
            }
            let Some(holder) = self.holder else {
                // Nobody holds the floor: ask for it.
                let next = self.next_talker(None);
                match next {
                    Some(next) => {
                        if let Some(at) = self.request_floor(next).await {
                            grant_at = at;
                        }
                        continue;
                    }
                    None => break,
                }
            };
            if self.ctx.scenario.group.pattern == Pattern::Burst {
                if let Some(at) = self.burst_round(holder, grant_at).await {
                    grant_at = at;
                }
                continue;
            }
            self.talk(holder, grant_at).await;
            if self.stop_wanted() {
                break;
            }
            self.release(holder).await;
            if self.failure.is_some() {
                break;
            }
            let gap = Duration::from_millis(self.ctx.scenario.group.gap_ms);
            if !gap.is_zero() {
                self.pause(Instant::now() + gap, true).await;
            }
            if self.stop_wanted() {
                break;
            }
            let next = self.next_talker(Some(holder));
            match next {
                Some(next) => {
                    if let Some(at) = self.request_floor(next).await {
                        grant_at = at;
                    }
                }
                None => break,
            }
        }
    }

    /// Burst: `burst_size` members ask at once while `holder` talks (they are queued); the
    /// holder releases and the floor goes down the queue, each talking a spurt in turn. Returns
    /// the grant time of the member left holding the floor (the last in the queue), if any.
    async fn burst_round(&mut self, holder: usize, grant_at: Instant) -> Option<Instant> {
        let burst = self.ctx.scenario.group.burst_size;
        let mut askers = Vec::new();
        let mut pool: Vec<usize> = (0..self.members.len())
            .filter(|&position| {
                position != holder
                    && self.members[position].joined
                    && !self.members[position].left
                    && !self.ctx.plan.terminals[self.terminal(position)].dispatcher
            })
            .collect();
        while askers.len() < burst && !pool.is_empty() {
            let pick = self.rng.random_range(0..pool.len());
            askers.push(pool.swap_remove(pick));
        }
        self.granted.clear();
        // The holder talks; the requests come in before its spurt ends.
        let spurt = self.spurt_length();
        let (talking, started) = self.start_spurt(holder, grant_at);
        self.pause(started + spurt.mul_f64(0.8), true).await;
        let mut requests = tokio::task::JoinSet::new();
        for &position in &askers {
            let ua = self.ctx.uas[self.terminal(position)].clone();
            let Some(call_id) = self.members[position].call_id.clone() else {
                continue;
            };
            requests.spawn(async move {
                let sent = Instant::now();
                let result = ua.reinvite(&call_id, "pttrequest", Direction::SendOnly).await;
                (position, sent, result)
            });
        }
        let mut queued = 0usize;
        let mut granted_now: Option<(usize, Instant)> = None;
        while let Some(Ok((position, sent, result))) = requests.join_next().await {
            lock(&self.ctx.shared.control).counters.floor_requests += 1;
            match result {
                Ok(answered) if answered.status == 200 && answered.extension.contains("pttwaiting") => {
                    lock(&self.ctx.shared.control).counters.floor_queued += 1;
                    queued += 1;
                }
                Ok(answered) if answered.status == 200 && answered.extension.contains("pttaccept") => {
                    let now = Instant::now();
                    let took = answered.round_trip.unwrap_or(now - sent);
                    let place = usize::from(self.remote(position));
                    let mut control = lock(&self.ctx.shared.control);
                    control.counters.floor_granted += 1;
                    record(&mut control.latencies.floor_grant, took);
                    record(&mut control.latencies.floor_grant_by_place[place], took);
                    granted_now = Some((position, now));
                }
                Ok(_) => lock(&self.ctx.shared.control).counters.floor_rejected += 1,
                Err(error) => self.sip_error("burst floor request", &error),
            }
        }
        self.pause(started + spurt, true).await;
        self.end_spurt(talking).await;
        if let Some((position, at)) = granted_now {
            // A request outranked the holder and took the floor at once.
            self.holder = Some(position);
            return Some(at);
        }
        if self.failure.is_some() || self.stop_wanted() {
            return None;
        }
        let mut released = Instant::now();
        self.release(holder).await;
        for turn in 0..queued {
            let deadline = Instant::now() + Duration::from_millis(self.ctx.scenario.run.sip_timeout_ms);
            self.wait_granted(deadline, None).await;
            if self.failure.is_some() {
                return None;
            }
            let Some((position, at)) = self.granted.pop_front() else {
                self.fail("a queued floor request was never granted".to_owned());
                return None;
            };
            {
                let mut control = lock(&self.ctx.shared.control);
                control.counters.floor_granted += 1;
                record(
                    &mut control.latencies.queued_grant,
                    at.saturating_duration_since(released),
                );
            }
            self.holder = Some(position);
            if turn + 1 == queued || self.stop_wanted() {
                // The last one keeps the floor: it talks first in the next round.
                return Some(at);
            }
            self.talk(position, at).await;
            if self.stop_wanted() {
                return None;
            }
            released = Instant::now();
            self.release(position).await;
        }
        None
    }

    fn start_spurt(&mut self, position: usize, grant_at: Instant) -> (Option<Talking>, Instant) {
        let started = Instant::now();
        self.revoked = false;
        let member = &self.members[position];
        let Some(destination) = member.remote_rtp else {
            return (None, started);
        };
        let spurt = self.ctx.shared.spurt_id();
        let slot = self.slot(position);
        let listeners = self.joined_count().saturating_sub(1) as u32;
        let payload_type = member.payload_type.unwrap_or(0);
        let grant_ns = self.ctx.shared.wall_ns(grant_at);
        let _ = self.ctx.sender.send(SendCommand::Start(Spurt {
            slot,
            socket: self.ctx.sockets[slot as usize].clone(),
            destination,
            payload_type,
            session: self.session,
            spurt,
            grant_ns,
            listeners,
        }));
        self.ctx.shared.spurts_started.fetch_add(1, Ordering::Relaxed);
        self.spurts += 1;
        (Some(Talking { slot, spurt, grant_ns }), started)
    }

    async fn end_spurt(&mut self, talking: Option<Talking>) {
        let Some(talking) = talking else { return };
        let (reply, sent) = oneshot::channel();
        let _ = self.ctx.sender.send(SendCommand::Stop {
            slot: talking.slot,
            reply,
        });
        let sent = sent.await.unwrap_or_default();
        lock(&self.ctx.shared.control).spurts.push(SpurtRecord {
            id: talking.spurt,
            session: self.session,
            owner: self.index,
            talker_slot: talking.slot,
            grant_ns: talking.grant_ns,
            first_ns: sent.first_ns,
            last_ns: sent.last_ns,
            sent: sent.packets,
        });
    }

    /// `position` talks one spurt (or until the floor is taken away / the run stops).
    /// The length of the next spurt: `spurt_ms`, except the call's first, which is 20–100 % of
    /// it at random so that the group calls of a run do not all change talkers in step.
    fn spurt_length(&mut self) -> Duration {
        let spurt = Duration::from_millis(self.ctx.scenario.group.spurt_ms);
        if self.spurts == 0 {
            spurt.mul_f64(self.rng.random_range(0.2..=1.0))
        } else {
            spurt
        }
    }

    async fn talk(&mut self, position: usize, grant_at: Instant) {
        let spurt = self.spurt_length();
        let (talking, started) = self.start_spurt(position, grant_at);
        self.pause(started + spurt, true).await;
        self.end_spurt(talking).await;
    }

    async fn release(&mut self, position: usize) {
        let Some(call_id) = self.members[position].call_id.clone() else {
            return;
        };
        if self.revoked {
            // The TCF took it already.
            self.revoked = false;
            self.holder = None;
            return;
        }
        let delay = Duration::from_millis(self.ctx.scenario.group.release_delay_ms);
        if !delay.is_zero() {
            self.pause(Instant::now() + delay, false).await;
        }
        let ua = self.ctx.uas[self.terminal(position)].clone();
        let sent = Instant::now();
        match ua.reinvite(&call_id, "pttreleasefloor", Direction::RecvOnly).await {
            Ok(answered) if answered.status == 200 => {
                let mut control = lock(&self.ctx.shared.control);
                control.counters.floor_releases += 1;
                record(
                    &mut control.latencies.release,
                    answered.round_trip.unwrap_or(sent.elapsed()),
                );
            }
            Ok(answered) => {
                let number = self.number(position);
                self.fail(format!("release by {number} answered {}", answered.status));
            }
            Err(error) => self.sip_error("floor release", &error),
        }
        self.holder = None;
    }

    /// `position` asks for the floor; waits for a queued request to be granted. Returns when
    /// it was granted (and makes it the holder).
    async fn request_floor(&mut self, position: usize) -> Option<Instant> {
        let call_id = self.members[position].call_id.clone()?;
        let ua = self.ctx.uas[self.terminal(position)].clone();
        for _attempt in 0..5 {
            let sent = Instant::now();
            lock(&self.ctx.shared.control).counters.floor_requests += 1;
            match ua.reinvite(&call_id, "pttrequest", Direction::SendOnly).await {
                Ok(answered) if answered.status == 200 && answered.extension.contains("pttaccept") => {
                    let now = Instant::now();
                    let took = answered.round_trip.unwrap_or(now - sent);
                    let place = usize::from(self.remote(position));
                    let mut control = lock(&self.ctx.shared.control);
                    control.counters.floor_granted += 1;
                    record(&mut control.latencies.floor_grant, took);
                    record(&mut control.latencies.floor_grant_by_place[place], took);
                    drop(control);
                    self.holder = Some(position);
                    return Some(now);
                }
                Ok(answered) if answered.status == 200 && answered.extension.contains("pttwaiting") => {
                    lock(&self.ctx.shared.control).counters.floor_queued += 1;
                    let deadline = Instant::now() + Duration::from_millis(self.ctx.scenario.run.sip_timeout_ms);
                    self.wait_granted(deadline, Some(position)).await;
                    if let Some(found) = self.granted.iter().position(|(granted, _)| *granted == position) {
                        let (_, at) = self.granted.remove(found)?;
                        let mut control = lock(&self.ctx.shared.control);
                        control.counters.floor_granted += 1;
                        record(&mut control.latencies.queued_grant, at.saturating_duration_since(sent));
                        drop(control);
                        self.holder = Some(position);
                        return Some(at);
                    }
                    self.fail("a queued floor request was never granted".to_owned());
                    return None;
                }
                Ok(answered) if answered.status == 480 || answered.status == 491 => {
                    lock(&self.ctx.shared.control).counters.floor_rejected += 1;
                    self.pause(Instant::now() + Duration::from_millis(100), false).await;
                }
                Ok(answered) => {
                    let number = self.number(position);
                    self.fail(format!(
                        "floor request by {number} answered {} {}",
                        answered.status, answered.extension
                    ));
                    return None;
                }
                Err(error) => {
                    self.sip_error("floor request", &error);
                    return None;
                }
            }
        }
        self.fail("floor refused five times in a row".to_owned());
        None
    }

    /// Cycle mode: the call is up; an optional spurt by the initiator, the BYE, every member's
    /// BYE, and a new set-up — until the run stops. A cycle that goes wrong is counted and
    /// reported (the first failure is the outcome's); the slot goes on with a new cycle.
    async fn cycles(&mut self) {
        let spurt = Duration::from_millis(self.ctx.scenario.group.cycle_spurt_ms);
        let mut up = true;
        loop {
            if up && self.joined_count() < self.members.len() {
                self.fail("member(s) not invited within the set-up timeout".to_owned());
            }
            if up && !spurt.is_zero() && self.holder == Some(0) && !self.ctx.shared.stopping() {
                let (talking, started) = self.start_spurt(0, Instant::now());
                self.pause(started + spurt, false).await;
                self.end_spurt(talking).await;
            }
            let complete = up && self.tear_down().await;
            let counted_in_time = !self.ctx.shared.stopping();
            {
                let mut control = lock(&self.ctx.shared.control);
                if complete && self.failure.is_none() {
                    if counted_in_time {
                        control.counters.cycles_completed += 1;
                    }
                } else {
                    control.counters.cycles_failed += 1;
                }
            }
            if self.failure.is_some() {
                // Whatever is left of the failed call: the initiator hangs up (ignoring the
                // outcome), then a pause before the next cycle.
                if let Some(call_id) = self.members[0].call_id.clone() {
                    let ua = self.ctx.uas[self.terminal(0)].clone();
                    let _ = ua.bye(&call_id).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if self.ctx.shared.stopping() {
                break;
            }
            self.next_cycle();
            up = self.set_up().await;
        }
    }

    /// Cycle mode: forgets the previous call (its members, floor and failure) and takes a new
    /// session id for the next.
    fn next_cycle(&mut self) {
        if self.first_failure.is_none() {
            self.first_failure = self.failure.take();
        }
        self.failure = None;
        // What is still queued belongs to the previous call (a late BYE, an INFO).
        while self.events.try_recv().is_ok() {}
        self.session = self.ctx.shared.session_id();
        self.members = vec![Member::default(); self.members.len()];
        self.holder = None;
        self.granted.clear();
        self.revoked = false;
    }

    /// The initiator's BYE; every other member must get the TCF's BYE. Returns whether all did.
    async fn tear_down(&mut self) -> bool {
        self.absorb_queued();
        let Some(call_id) = self.members[0].call_id.clone() else {
            return false;
        };
        let ua = self.ctx.uas[self.terminal(0)].clone();
        // Every spurt is over: memberships end now (what comes later is not expected). The
        // last packets get a moment to arrive before the call goes.
        let over = Instant::now();
        for position in 0..self.members.len() {
            self.leave(position, over);
        }
        if self.spurts > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sent = Instant::now();
        let ended = match ua.bye(&call_id).await {
            Ok(_) => true,
            Err(error) => {
                if self.failure.is_none() {
                    self.sip_error("BYE", &error);
                }
                false
            }
        };
        if !ended || self.failure.is_some() {
            return false;
        }
        // Every other member gets its BYE.
        let mut waiting: Vec<usize> = (1..self.members.len())
            .filter(|&position| self.members[position].joined)
            .collect();
        let deadline = sent + Duration::from_millis(self.ctx.scenario.run.sip_timeout_ms);
        let mut last = sent;
        while !waiting.is_empty() && Instant::now() < deadline {
            let wait = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, self.events.recv()).await {
                Ok(Some(event)) => {
                    if let (EventKind::Ended { .. }, Some(&position)) =
                        (&event.kind, self.positions.get(&event.terminal))
                    {
                        waiting.retain(|&waiting| waiting != position);
                        last = last.max(event.at);
                    }
                }
                _ => break,
            }
        }
        record(&mut lock(&self.ctx.shared.control).latencies.teardown, last - sent);
        if !waiting.is_empty() {
            let numbers: Vec<String> = waiting.iter().map(|&position| self.number(position)).collect();
            lock(&self.ctx.shared.control).evidence(format!(
                "group {}: no BYE reached {} after the initiator hung up",
                self.plan().number,
                numbers.join(", ")
            ));
            return false;
        }
        true
    }

    fn finish(self) {
        let outcome = GroupOutcome {
            group: self.plan().number.clone(),
            home: self.plan().home.clone(),
            session: self.session,
            members: self.members.len(),
            joined: self.members.iter().filter(|member| member.joined).count(),
            spurts: self.spurts,
            failure: self.first_failure.or(self.failure),
        };
        lock(&self.ctx.shared.control).groups.push(outcome);
    }
}
