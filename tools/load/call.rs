//! Single calls, like SIPp's basic UAC/UAS pair: callers place calls to their callees at the
//! scenario's rate; callees answer per the answer mode; answered calls carry RTP both ways for
//! the hold time, then the caller hangs up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::run::Ctx;
use crate::sender::{SendCommand, Spurt};
use crate::stats::{lock, record, Membership, SpurtRecord};
use crate::ua::{Event, EventKind, UaError};

/// Places calls until the run stops or the count is reached; returns when every call ended.
pub async fn run(ctx: Arc<Ctx>, mut events: mpsc::UnboundedReceiver<Event>) {
    let scenario = &ctx.scenario.calls;
    let pairs = ctx.plan.pairs.len();
    let busy: Arc<Vec<AtomicBool>> = Arc::new((0..pairs).map(|_| AtomicBool::new(false)).collect());
    // Callee events go to the call in progress at that callee.
    let routes: Arc<std::sync::Mutex<HashMap<usize, mpsc::UnboundedSender<Event>>>> = Arc::default();
    let router = {
        let routes = routes.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let Some(route) = lock(&routes).get(&event.terminal) {
                    let _ = route.send(event);
                }
            }
        })
    };
    let interval = Duration::from_secs_f64(1.0 / scenario.rate);
    let mut next = Instant::now();
    let mut placed = 0u64;
    let mut calls = tokio::task::JoinSet::new();
    let mut pair = 0usize;
    while !ctx.shared.stopping() && (scenario.count == 0 || placed < scenario.count) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        next += interval;
        if ctx.shared.stopping() {
            break;
        }
        // The next free pair, round robin.
        let Some(free) = (0..pairs)
            .map(|offset| (pair + offset) % pairs)
            .find(|&candidate| !busy[candidate].load(Ordering::Relaxed))
        else {
            lock(&ctx.shared.control).calls.skipped += 1;
            continue;
        };
        pair = free + 1;
        busy[free].store(true, Ordering::Relaxed);
        placed += 1;
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&routes).insert(ctx.plan.pairs[free].callee, sender);
        let ctx = ctx.clone();
        let busy = busy.clone();
        calls.spawn(async move {
            one_call(&ctx, free, receiver).await;
            busy[free].store(false, Ordering::Relaxed);
        });
    }
    while calls.join_next().await.is_some() {}
    router.abort();
}

fn sip_error(ctx: &Ctx, what: &str, error: &UaError) {
    let mut control = lock(&ctx.shared.control);
    match error {
        UaError::Timeout => control.counters.sip_timeouts += 1,
        _ => control.counters.sip_errors += 1,
    }
    control.evidence(format!("single call: {what}: {error}"));
}

async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<Event>,
    deadline: Instant,
    mut wanted: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(event)) if wanted(&event) => return Some(event),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

async fn one_call(ctx: &Ctx, pair: usize, mut callee_events: mpsc::UnboundedReceiver<Event>) {
    let plan = &ctx.plan.pairs[pair];
    let scenario = &ctx.scenario.calls;
    let callee_number = ctx.plan.terminals[plan.callee].number.clone();
    let caller = ctx.uas[plan.caller].clone();
    let session = ctx.shared.session_id();
    lock(&ctx.shared.control).calls.attempted += 1;
    let sent = Instant::now();
    let port = ctx.ports[plan.caller_slot as usize];
    let answered = match caller.invite(&callee_number, port, None).await {
        Ok(answered) => answered,
        Err(error) => {
            lock(&ctx.shared.control).calls.failed += 1;
            sip_error(ctx, "INVITE", &error);
            return;
        }
    };
    {
        let mut control = lock(&ctx.shared.control);
        *control.calls.by_status.entry(answered.status.to_string()).or_default() += 1;
        if let Some(ringing) = answered.ringing_at {
            record(&mut control.latencies.call_ringing, ringing - sent);
        }
        if answered.status != 200 {
            control.calls.failed += 1;
            return;
        }
        control.calls.answered += 1;
        record(
            &mut control.latencies.call_setup,
            answered.round_trip.unwrap_or(sent.elapsed()),
        );
    }
    let up = ctx.shared.calls_up.fetch_add(1, Ordering::Relaxed) as u64 + 1;
    {
        let mut control = lock(&ctx.shared.control);
        control.calls.max_concurrent = control.calls.max_concurrent.max(up);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let joined = wait_for(&mut callee_events, deadline, |event| {
        matches!(event.kind, EventKind::Joined { .. })
    })
    .await;
    let now = Instant::now();
    let joined_ns = ctx.shared.wall_ns(now);
    let mut media = Vec::new();
    if scenario.rtp {
        let callee_leg = match &joined {
            Some(Event {
                kind:
                    EventKind::Joined {
                        remote_rtp,
                        payload_type,
                        ..
                    },
                ..
            }) => remote_rtp.map(|address| (address, payload_type.unwrap_or(0))),
            _ => None,
        };
        let legs = [
            (
                plan.caller_slot,
                plan.callee_slot,
                answered
                    .remote_rtp
                    .map(|address| (address, answered.payload_type.unwrap_or(0))),
            ),
            (plan.callee_slot, plan.caller_slot, callee_leg),
        ];
        {
            let mut control = lock(&ctx.shared.control);
            for slot in [plan.caller_slot, plan.callee_slot] {
                control.memberships.push(Membership {
                    slot,
                    session,
                    joined_ns,
                    left_ns: None,
                });
            }
        }
        for (talker, _listener, leg) in legs {
            let Some((destination, payload_type)) = leg else {
                continue;
            };
            let spurt = ctx.shared.spurt_id();
            let _ = ctx.sender.send(SendCommand::Start(Spurt {
                slot: talker,
                socket: ctx.sockets[talker as usize].clone(),
                destination,
                payload_type,
                session,
                spurt,
                grant_ns: 0,
                listeners: 1,
            }));
            media.push((talker, spurt));
        }
    }
    // Hold (cut short when the run stops).
    let hold_until = now + Duration::from_millis(scenario.hold_ms);
    while Instant::now() < hold_until && !ctx.shared.stopping() {
        let step = hold_until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        tokio::time::sleep(step).await;
    }
    for (talker, spurt) in media {
        let (reply, sent) = oneshot::channel();
        let _ = ctx.sender.send(SendCommand::Stop { slot: talker, reply });
        let sent = sent.await.unwrap_or_default();
        lock(&ctx.shared.control).spurts.push(SpurtRecord {
            id: spurt,
            session,
            owner: pair,
            talker_slot: talker,
            grant_ns: 0,
            first_ns: sent.first_ns,
            last_ns: sent.last_ns,
            sent: sent.packets,
        });
    }
    {
        let left = ctx.shared.wall_ns(Instant::now());
        let mut control = lock(&ctx.shared.control);
        let mut found = 0;
        for membership in control.memberships.iter_mut().rev() {
            if membership.session == session {
                membership.left_ns = Some(left);
                found += 1;
                if found == 2 {
                    break;
                }
            }
        }
    }
    // The last packets get a moment to arrive before the call goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bye_at = Instant::now();
    match caller.bye(&answered.call_id).await {
        Ok(_) => {
            let ended = wait_for(
                &mut callee_events,
                bye_at + Duration::from_millis(ctx.scenario.run.sip_timeout_ms),
                |event| matches!(event.kind, EventKind::Ended { .. }),
            )
            .await;
            let mut control = lock(&ctx.shared.control);
            if ended.is_some() {
                control.calls.completed += 1;
            } else {
                control.evidence(format!("single call to {callee_number}: the callee got no BYE"));
            }
        }
        Err(error) => sip_error(ctx, "BYE", &error),
    }
    ctx.shared.calls_up.fetch_sub(1, Ordering::Relaxed);
}
