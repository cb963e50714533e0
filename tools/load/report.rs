//! The final report: loss accounting (what each listener should have heard against what it
//! did), latency summaries, SLO verdict; as text and as JSON (`--json`).

use std::collections::HashMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plan::Plan;
use crate::procstat::Usage;
use crate::scenario::Scenario;
use crate::stats::{CallCounters, Control, ControlCounters, GroupOutcome, Membership, ReceiverOutput, SlotResult};

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(histogram: &Histogram<u64>) -> Summary {
        if histogram.is_empty() {
            return Summary::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Summary {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }

    fn line(&self) -> String {
        if self.count == 0 {
            return "-".to_owned();
        }
        format!(
            "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// Packets and stream checks, summed over listeners.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Media {
    /// Listener slots that should have heard something.
    pub listeners: usize,
    /// Packets the listeners should have received (each sent packet × its listeners).
    pub expected: u64,
    /// Distinct expected packets received.
    pub received: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    /// Lost packets that were the first of their spurt (and every one before the first
    /// received): what a floor grant racing the talker's first packet loses.
    pub lost_at_spurt_start: u64,
    /// Lost packets that were the last of their spurt (and every one after the last
    /// received): what a release racing the talker's last packet loses.
    pub lost_at_spurt_end: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Packets of a spurt that arrived after a later spurt had started at the listener.
    pub late_spurt: u64,
    pub seq_discontinuities: u64,
    pub ts_discontinuities: u64,
    pub ssrc_changes: u64,
    pub marker_missing: u64,
    pub corrupt: u64,
    pub self_heard: u64,
    pub rtcp: u64,
    pub listeners_with_loss: usize,
    pub listeners_discontinuous: usize,
    /// Listeners that should have heard something and heard nothing.
    pub listeners_silent: usize,
}

impl Media {
    fn add_slot(&mut self, result: &SlotResult) {
        self.duplicates += result.duplicates;
        self.reordered += result.reordered;
        self.late_spurt += result.late_spurt;
        self.seq_discontinuities += result.seq_discontinuities;
        self.ts_discontinuities += result.ts_discontinuities;
        self.ssrc_changes += result.ssrc_changes;
        self.marker_missing += result.marker_missing;
        self.corrupt += result.corrupt;
        self.self_heard += result.self_heard;
        self.rtcp += result.rtcp;
        if result.seq_discontinuities + result.ts_discontinuities + result.ssrc_changes > 0 {
            self.listeners_discontinuous += 1;
        }
    }

    fn finish(&mut self) {
        self.lost = self.expected - self.received;
        self.loss_ratio = if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        };
    }
}

/// A listener that lost packets or saw a discontinuity.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerIssue {
    pub user: String,
    pub session_of: String,
    /// The TCF serving the listener, and whether that is the group's home.
    pub node: String,
    pub at_group_home: bool,
    pub expected: u64,
    pub received: u64,
    pub seq_discontinuities: u64,
    pub ts_discontinuities: u64,
    pub ssrc_changes: u64,
    /// Spurts with packets missing and which (first few).
    pub missed: Vec<String>,
    /// The first discontinuities, described.
    pub discontinuities: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub packets_sent: u64,
    pub send_errors: u64,
    /// Times the sender fell more than five packet times behind (the generator was starved).
    pub sender_stalls: u64,
    pub tx_pps: f64,
    pub rx_pps: f64,
    pub foreign_packets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupsReport {
    pub planned: usize,
    pub set_up: usize,
    pub failed: usize,
    pub members_per_group: f64,
    pub spurts: u64,
    pub setup: Summary,
    pub join: Summary,
    pub floor_grant: Summary,
    /// Floor grants of requesters served by the group's home TCF and by other TCFs.
    pub floor_grant_at_group_home: Summary,
    pub floor_grant_at_other_nodes: Summary,
    pub queued_grant: Summary,
    pub release: Summary,
    pub switch: Summary,
    /// Switch latency at listeners served by the group's home TCF.
    pub switch_at_group_home: Summary,
    /// Switch latency at listeners served by other TCFs (through a member TCF).
    pub switch_at_other_nodes: Summary,
    pub mouth_to_ear_at_group_home: Summary,
    pub mouth_to_ear_at_other_nodes: Summary,
    /// Group listener slots per serving TCF (name).
    pub listeners_by_node: std::collections::BTreeMap<String, usize>,
    /// Loss and continuity of the listeners served by other TCFs than the group's home
    /// (a subset of the report's `media`).
    pub media_at_other_nodes: Media,
    pub teardown: Summary,
    pub outcomes: Vec<GroupOutcome>,
}

/// Cycle mode: group calls set up and torn down per second.
#[derive(Debug, Clone, Serialize)]
pub struct CyclesReport {
    /// Concurrent slots (group calls cycling at once).
    pub slots: usize,
    pub members_per_group: f64,
    /// Complete cycles (set up, every member joined, torn down, every member got its BYE)
    /// during the traffic time.
    pub completed: u64,
    /// Cycles that went wrong (failed set-up, member not invited, missing BYE, SIP error).
    pub failed: u64,
    pub per_second: f64,
    /// INVITE → 200 OK of the initiator.
    pub setup: Summary,
    /// INVITE → the last member joined (its ACK from the TCF).
    pub setup_all: Summary,
    /// The initiator's BYE → the last member's BYE from the TCF.
    pub teardown: Summary,
    /// CPU time of the watched node processes (summed) per complete cycle, milliseconds.
    pub node_cpu_ms_per_call: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallsReport {
    #[serde(flatten)]
    pub counters: CallCounters,
    pub setup: Summary,
    pub ringing: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct SloReport {
    pub max_loss: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub passed: bool,
    pub violations: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub killed_pid: i32,
    pub at_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    /// Traffic time, seconds.
    pub duration_s: f64,
    pub registrations: Summary,
    pub control: ControlCounters,
    pub groups: Option<GroupsReport>,
    pub cycles: Option<CyclesReport>,
    pub calls: Option<CallsReport>,
    /// Listeners of the calls that did not fail.
    pub media: Media,
    /// Listeners of the group calls that failed (their loss does not count against the SLO).
    pub failed_media: Media,
    pub mouth_to_ear: Summary,
    /// Whether the receive times are the kernel's (SO_TIMESTAMPNS) rather than the reader's.
    pub kernel_timestamps: bool,
    pub throughput: Throughput,
    pub worst_listeners: Vec<ListenerIssue>,
    pub nodes: Vec<Usage>,
    pub generator: Usage,
    pub fault: Option<FaultReport>,
    pub slo: SloReport,
    /// First failures, with context.
    pub evidence: Vec<String>,
}

/// Inputs to the accounting.
pub struct Collected {
    pub control: Control,
    pub receivers: Vec<ReceiverOutput>,
    pub duration_s: f64,
    pub packets_sent: u64,
    pub send_errors: u64,
    pub sender_stalls: u64,
    pub nodes: Vec<Usage>,
    pub generator: Usage,
    pub fault: Option<FaultReport>,
}

/// Missing packets before the first received and after the last received of a spurt.
fn edge_losses(sent: u32, has: impl Fn(u32) -> bool) -> (u32, u32) {
    let start = (0..sent).take_while(|&index| !has(index)).count() as u32;
    let end = (0..sent).rev().take_while(|&index| !has(index)).count() as u32;
    (start, end)
}

pub fn build(scenario: &Scenario, plan: &Plan, collected: Collected) -> Report {
    let Collected {
        mut control,
        receivers,
        duration_s,
        packets_sent,
        send_errors,
        sender_stalls,
        nodes,
        generator,
        fault,
    } = collected;
    let mut slots: Vec<Option<SlotResult>> = vec![None; plan.slots.len()];
    let mut mouth_to_ear = crate::stats::histogram();
    let mut switch = crate::stats::histogram();
    let mut switch_by_place = [crate::stats::histogram(), crate::stats::histogram()];
    let mut mouth_to_ear_by_place = [crate::stats::histogram(), crate::stats::histogram()];
    let mut kernel_timestamps = true;
    let mut foreign = 0;
    for receiver in receivers {
        let _ = mouth_to_ear.add(&receiver.mouth_to_ear);
        let _ = switch.add(&receiver.switch);
        for place in 0..2 {
            let _ = switch_by_place[place].add(&receiver.switch_by_place[place]);
            let _ = mouth_to_ear_by_place[place].add(&receiver.mouth_to_ear_by_place[place]);
        }
        kernel_timestamps &= receiver.kernel_timestamps;
        for slot in receiver.slots {
            foreign += slot.foreign;
            let index = slot.slot as usize;
            if index < slots.len() {
                slots[index] = Some(slot);
            }
        }
    }
    // Which group (by plan index) failed.
    let failed_groups: std::collections::HashSet<usize> = control
        .groups
        .iter()
        .filter(|outcome| outcome.failure.is_some())
        .filter_map(|outcome| plan.groups.iter().position(|group| group.number == outcome.group))
        .collect();
    let failed_slot = |slot: u32| -> bool {
        let Some(group) = plan.slots.get(slot as usize).and_then(|slot| slot.group.as_ref()) else {
            return false;
        };
        plan.groups
            .iter()
            .position(|plan_group| &plan_group.number == group)
            .is_some_and(|index| failed_groups.contains(&index))
    };
    let mut by_session: HashMap<u32, Vec<Membership>> = HashMap::new();
    for membership in &control.memberships {
        by_session.entry(membership.session).or_default().push(*membership);
    }
    // Per listener slot: (expected, received), and what was missed (first few spurts).
    let mut per_slot: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut missed: HashMap<u32, Vec<String>> = HashMap::new();
    let mut edges: HashMap<u32, (u64, u64)> = HashMap::new();
    for spurt in &control.spurts {
        if spurt.sent == 0 {
            continue;
        }
        let Some(members) = by_session.get(&spurt.session) else {
            continue;
        };
        for membership in members {
            if membership.slot == spurt.talker_slot
                || membership.joined_ns > spurt.first_ns
                || membership.left_ns.is_some_and(|left| left < spurt.last_ns)
            {
                continue;
            }
            let seen = slots
                .get(membership.slot as usize)
                .and_then(|slot| slot.as_ref())
                .and_then(|slot| slot.spurts.get(&spurt.id));
            let heard = seen.map_or(0, |seen| seen.unique).min(spurt.sent);
            let has = |index: u32| seen.is_some_and(|seen| seen.has(index));
            if heard < spurt.sent && heard > 0 {
                let (start, end) = edge_losses(spurt.sent, has);
                let entry = edges.entry(membership.slot).or_default();
                entry.0 += u64::from(start);
                entry.1 += u64::from(end);
            }
            if heard < spurt.sent {
                let list = missed.entry(membership.slot).or_default();
                if list.len() < 5 {
                    let indexes: Vec<String> = (0..spurt.sent)
                        .filter(|&index| !seen.is_some_and(|seen| seen.has(index)))
                        .take(12)
                        .map(|index| index.to_string())
                        .collect();
                    let talker = plan
                        .slots
                        .get(spurt.talker_slot as usize)
                        .map_or_else(String::new, |slot| plan.terminals[slot.terminal].number.clone());
                    list.push(format!(
                        "spurt {} of {talker} ({} sent): missing index {}{}",
                        spurt.id,
                        spurt.sent,
                        indexes.join(","),
                        if spurt.sent - heard > 12 { ",..." } else { "" }
                    ));
                }
            }
            let entry = per_slot.entry(membership.slot).or_default();
            entry.0 += u64::from(spurt.sent);
            entry.1 += u64::from(heard);
        }
    }
    let mut media = Media::default();
    let mut failed_media = Media::default();
    let mut remote_media = Media::default();
    let mut worst = Vec::new();
    for (index, result) in slots.iter().enumerate() {
        let Some(result) = result else { continue };
        let slot = index as u32;
        let (expected, received) = per_slot.get(&slot).copied().unwrap_or((0, 0));
        let failed = failed_slot(slot);
        let remote = plan.slots[index].remote;
        let mut buckets: Vec<&mut Media> = Vec::with_capacity(2);
        if failed {
            buckets.push(&mut failed_media);
        } else {
            buckets.push(&mut media);
            if remote {
                buckets.push(&mut remote_media);
            }
        }
        for bucket in buckets {
            bucket.add_slot(result);
            if let Some((start, end)) = edges.get(&slot) {
                bucket.lost_at_spurt_start += start;
                bucket.lost_at_spurt_end += end;
            }
            if expected > 0 {
                bucket.listeners += 1;
                bucket.expected += expected;
                bucket.received += received;
                if received < expected {
                    bucket.listeners_with_loss += 1;
                }
                if received == 0 {
                    bucket.listeners_silent += 1;
                }
            }
        }
        let discontinuous = result.seq_discontinuities + result.ts_discontinuities + result.ssrc_changes;
        if received < expected || discontinuous > 0 {
            let plan_slot = &plan.slots[index];
            worst.push(ListenerIssue {
                user: plan.terminals[plan_slot.terminal].number.clone(),
                session_of: plan_slot.group.clone().unwrap_or_else(|| "single call".to_owned()),
                node: plan_slot.node.clone(),
                at_group_home: plan_slot.group.is_some() && !plan_slot.remote,
                expected,
                received,
                seq_discontinuities: result.seq_discontinuities,
                ts_discontinuities: result.ts_discontinuities,
                ssrc_changes: result.ssrc_changes,
                missed: missed.remove(&slot).unwrap_or_default(),
                discontinuities: result.notes.clone(),
            });
        }
    }
    media.finish();
    failed_media.finish();
    remote_media.finish();
    worst.sort_by_key(|issue| {
        std::cmp::Reverse((
            issue.expected - issue.received.min(issue.expected),
            issue.seq_discontinuities + issue.ts_discontinuities,
        ))
    });
    worst.truncate(20);
    let mouth_to_ear_summary = Summary::of(&mouth_to_ear);
    let mut violations = Vec::new();
    if let Some(max_loss) = scenario.slo.max_loss {
        if media.loss_ratio > max_loss {
            violations.push(format!(
                "loss {:.4}% > {:.4}%",
                media.loss_ratio * 100.0,
                max_loss * 100.0
            ));
        }
    }
    if let Some(max_p99) = scenario.slo.max_p99_ms {
        if mouth_to_ear_summary.p99_ms > max_p99 {
            violations.push(format!(
                "mouth-to-ear p99 {:.2} ms > {max_p99:.2} ms",
                mouth_to_ear_summary.p99_ms
            ));
        }
    }
    let groups_failed = failed_groups.len();
    if fault.is_none() {
        if groups_failed > 0 {
            violations.push(format!("{groups_failed} group call(s) failed"));
        }
        if control.calls.failed > 0 && scenario.calls.answer == crate::scenario::Callee::Answer {
            violations.push(format!("{} single call(s) failed", control.calls.failed));
        }
        if control.counters.registrations_failed > 0 {
            violations.push(format!(
                "{} registration(s) failed",
                control.counters.registrations_failed
            ));
        }
    }
    let spurts = control.spurts.len() as u64;
    let groups = scenario.group.enabled.then(|| {
        control.groups.sort_by(|a, b| a.group.cmp(&b.group));
        let set_up = control
            .groups
            .iter()
            .filter(|outcome| outcome.failure.is_none() || outcome.spurts > 0)
            .count();
        let members: usize = plan.groups.iter().map(|group| group.members.len()).sum();
        GroupsReport {
            planned: plan.groups.len(),
            set_up,
            failed: groups_failed,
            members_per_group: members as f64 / plan.groups.len().max(1) as f64,
            spurts,
            setup: Summary::of(&control.latencies.group_setup),
            join: Summary::of(&control.latencies.join),
            floor_grant: Summary::of(&control.latencies.floor_grant),
            floor_grant_at_group_home: Summary::of(&control.latencies.floor_grant_by_place[0]),
            floor_grant_at_other_nodes: Summary::of(&control.latencies.floor_grant_by_place[1]),
            queued_grant: Summary::of(&control.latencies.queued_grant),
            release: Summary::of(&control.latencies.release),
            switch: Summary::of(&switch),
            switch_at_group_home: Summary::of(&switch_by_place[0]),
            switch_at_other_nodes: Summary::of(&switch_by_place[1]),
            mouth_to_ear_at_group_home: Summary::of(&mouth_to_ear_by_place[0]),
            mouth_to_ear_at_other_nodes: Summary::of(&mouth_to_ear_by_place[1]),
            listeners_by_node: plan.slots.iter().filter(|slot| slot.group.is_some()).fold(
                std::collections::BTreeMap::new(),
                |mut counts, slot| {
                    *counts.entry(slot.node.clone()).or_insert(0) += 1;
                    counts
                },
            ),
            media_at_other_nodes: remote_media.clone(),
            teardown: Summary::of(&control.latencies.teardown),
            outcomes: control.groups.clone(),
        }
    });
    let cycles = (scenario.group.enabled && scenario.group.cycle).then(|| {
        let completed = control.counters.cycles_completed;
        let node_cpu_s: f64 = nodes.iter().map(|usage| usage.cpu_s).sum();
        let members: usize = plan.groups.iter().map(|group| group.members.len()).sum();
        CyclesReport {
            slots: plan.groups.len(),
            members_per_group: members as f64 / plan.groups.len().max(1) as f64,
            completed,
            failed: control.counters.cycles_failed,
            per_second: completed as f64 / duration_s.max(1e-9),
            setup: Summary::of(&control.latencies.group_setup),
            setup_all: Summary::of(&control.latencies.group_setup_all),
            teardown: Summary::of(&control.latencies.teardown),
            node_cpu_ms_per_call: (completed > 0 && !nodes.is_empty()).then(|| node_cpu_s * 1000.0 / completed as f64),
        }
    });
    if let Some(cycles) = &cycles {
        if fault.is_none() && cycles.failed > 0 {
            violations.push(format!("{} group call cycle(s) failed", cycles.failed));
        }
    }
    let calls = scenario.calls.enabled.then(|| CallsReport {
        counters: control.calls.clone(),
        setup: Summary::of(&control.latencies.call_setup),
        ringing: Summary::of(&control.latencies.call_ringing),
    });
    let received_total = media.received + failed_media.received;
    Report {
        scenario: scenario.clone(),
        duration_s,
        registrations: Summary::of(&control.latencies.register),
        control: control.counters.clone(),
        groups,
        cycles,
        calls,
        media,
        failed_media,
        mouth_to_ear: mouth_to_ear_summary,
        kernel_timestamps,
        throughput: Throughput {
            packets_sent,
            send_errors,
            sender_stalls,
            tx_pps: packets_sent as f64 / duration_s.max(1e-9),
            rx_pps: received_total as f64 / duration_s.max(1e-9),
            foreign_packets: foreign,
        },
        worst_listeners: worst,
        nodes,
        generator,
        fault,
        slo: SloReport {
            max_loss: scenario.slo.max_loss,
            max_p99_ms: scenario.slo.max_p99_ms,
            passed: violations.is_empty(),
            violations,
        },
        evidence: std::mem::take(&mut control.evidence),
    }
}

fn media_lines(out: &mut String, title: &str, media: &Media) {
    let _ = writeln!(
        out,
        "{title}: {} listeners, expected {} received {} lost {} ({:.4}%)",
        media.listeners,
        media.expected,
        media.received,
        media.lost,
        media.loss_ratio * 100.0
    );
    if media.lost > 0 {
        let _ = writeln!(
            out,
            "  of the lost: {} at a spurt's start, {} at a spurt's end",
            media.lost_at_spurt_start, media.lost_at_spurt_end
        );
    }
    let _ = writeln!(
        out,
        "  duplicates {}  reordered {}  late {}  seq-discontinuities {}  ts-discontinuities {}  ssrc-changes {}  marker-missing {}  corrupt {}  self-heard {}",
        media.duplicates,
        media.reordered,
        media.late_spurt,
        media.seq_discontinuities,
        media.ts_discontinuities,
        media.ssrc_changes,
        media.marker_missing,
        media.corrupt,
        media.self_heard
    );
    let _ = writeln!(
        out,
        "  listeners with loss {}  discontinuous {}  silent {}",
        media.listeners_with_loss, media.listeners_discontinuous, media.listeners_silent
    );
}

/// The report as text.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== floorcast-load report ==");
    let _ = writeln!(out, "traffic time        {:.1} s", report.duration_s);
    let _ = writeln!(
        out,
        "registrations       {} ok, {} failed; {}",
        report.control.registrations_ok,
        report.control.registrations_failed,
        report.registrations.line()
    );
    if let Some(groups) = &report.groups {
        let _ = writeln!(
            out,
            "group calls         {} planned, {} set up, {} failed; {:.1} members each; {} spurts",
            groups.planned, groups.set_up, groups.failed, groups.members_per_group, groups.spurts
        );
        for (name, summary) in [
            ("  set-up (INVITE→200)", &groups.setup),
            ("  member joined", &groups.join),
            ("  floor grant", &groups.floor_grant),
            ("    at the group home", &groups.floor_grant_at_group_home),
            ("    at other nodes", &groups.floor_grant_at_other_nodes),
            ("  queued grant", &groups.queued_grant),
            ("  release", &groups.release),
            ("  switch (grant→1st pkt)", &groups.switch),
            ("    at the group home", &groups.switch_at_group_home),
            ("    at other nodes", &groups.switch_at_other_nodes),
            ("  teardown", &groups.teardown),
        ] {
            let _ = writeln!(out, "{name:<26}{}", summary.line());
        }
        let _ = writeln!(
            out,
            "  listeners by serving node: {}",
            groups
                .listeners_by_node
                .iter()
                .map(|(node, count)| format!("{node} {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if groups.media_at_other_nodes.listeners > 0 {
            let _ = writeln!(
                out,
                "  listeners at other nodes than the group home: {} lost of {} ({:.4}%); mouth-to-ear {}",
                groups.media_at_other_nodes.lost,
                groups.media_at_other_nodes.expected,
                groups.media_at_other_nodes.loss_ratio * 100.0,
                groups.mouth_to_ear_at_other_nodes.line()
            );
        }
        let counters = &report.control;
        let _ = writeln!(
            out,
            "  floor: {} requests, {} granted, {} queued, {} rejected, {} revoked by the TCF, {} releases; {} pttinfo",
            counters.floor_requests,
            counters.floor_granted,
            counters.floor_queued,
            counters.floor_rejected,
            counters.floor_revoked,
            counters.floor_releases,
            counters.talker_notifications
        );
        for outcome in groups.outcomes.iter().filter(|outcome| outcome.failure.is_some()) {
            if let Some(failure) = &outcome.failure {
                let _ = writeln!(
                    out,
                    "  FAILED group {} (home {}) at {:.2} s: {}",
                    outcome.group, outcome.home, failure.at_s, failure.reason
                );
            }
        }
    }
    if let Some(cycles) = &report.cycles {
        let _ = writeln!(
            out,
            "group call cycles   {} slots of {:.1} members: {} complete ({:.1} group calls/s), {} failed{}",
            cycles.slots,
            cycles.members_per_group,
            cycles.completed,
            cycles.per_second,
            cycles.failed,
            cycles
                .node_cpu_ms_per_call
                .map_or_else(String::new, |ms| format!("; node CPU {ms:.2} ms per group call")),
        );
        for (name, summary) in [
            ("  INVITE→200", &cycles.setup),
            ("  INVITE→last joined", &cycles.setup_all),
            ("  BYE→last BYE", &cycles.teardown),
        ] {
            let _ = writeln!(out, "{name:<26}{}", summary.line());
        }
    }
    if let Some(calls) = &report.calls {
        let _ = writeln!(
            out,
            "single calls        {} attempted, {} answered, {} failed, {} completed, {} skipped (pairs busy), max {} at once; statuses {:?}",
            calls.counters.attempted,
            calls.counters.answered,
            calls.counters.failed,
            calls.counters.completed,
            calls.counters.skipped,
            calls.counters.max_concurrent,
            calls.counters.by_status
        );
        let _ = writeln!(out, "  {:<24}{}", "set-up (INVITE→200)", calls.setup.line());
        let _ = writeln!(out, "  {:<24}{}", "ringing (INVITE→180)", calls.ringing.line());
    }
    let _ = writeln!(
        out,
        "sip                 {} timeouts, {} errors, {} unexpected BYEs, {} members not invited",
        report.control.sip_timeouts,
        report.control.sip_errors,
        report.control.unexpected_byes,
        report.control.members_missing
    );
    media_lines(&mut out, "media", &report.media);
    if report.failed_media.listeners > 0 {
        media_lines(&mut out, "media of failed calls", &report.failed_media);
    }
    let _ = writeln!(
        out,
        "mouth-to-ear        {}{}",
        report.mouth_to_ear.line(),
        if report.kernel_timestamps {
            ""
        } else {
            " (reader clock)"
        }
    );
    let _ = writeln!(
        out,
        "throughput          tx {:.0} pps, rx {:.0} pps; {} sent, {} send errors, {} sender stalls",
        report.throughput.tx_pps,
        report.throughput.rx_pps,
        report.throughput.packets_sent,
        report.throughput.send_errors,
        report.throughput.sender_stalls
    );
    for usage in report.nodes.iter().chain(std::iter::once(&report.generator)) {
        let _ = writeln!(
            out,
            "process {:>7} {:<16} cpu {:.2} s ({:.1}% of a core), rss {:.1} → {:.1} MB (peak {:.1} MB), {} threads{}",
            usage.pid,
            usage.name,
            usage.cpu_s,
            usage.cpu_percent,
            usage.rss_kb_start as f64 / 1024.0,
            usage.rss_kb_end as f64 / 1024.0,
            usage.rss_kb_peak as f64 / 1024.0,
            usage.threads,
            if usage.exited { ", exited" } else { "" }
        );
    }
    if let Some(fault) = &report.fault {
        let _ = writeln!(
            out,
            "fault               killed pid {} at {:.2} s",
            fault.killed_pid, fault.at_s
        );
    }
    if !report.worst_listeners.is_empty() {
        let _ = writeln!(out, "listeners with loss or discontinuities (worst first):");
        for issue in report.worst_listeners.iter().take(10) {
            let _ = writeln!(
                out,
                "  {} in {} (at {}): {}/{} received, seq {} ts {} ssrc {}",
                issue.user,
                issue.session_of,
                issue.node,
                issue.received,
                issue.expected,
                issue.seq_discontinuities,
                issue.ts_discontinuities,
                issue.ssrc_changes
            );
            for line in issue.missed.iter().chain(&issue.discontinuities) {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
    if !report.evidence.is_empty() {
        let _ = writeln!(out, "evidence:");
        for line in report.evidence.iter().take(20) {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(
        out,
        "SLO                 {}{}",
        if report.slo.passed { "passed" } else { "MISSED: " },
        report.slo.violations.join("; ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_at_the_edges_of_a_spurt() {
        let received = [2u32, 3, 5, 6];
        let has = |index: u32| received.contains(&index);
        // 0 and 1 before the first received, 7..=9 after the last; 4 is in the middle.
        assert_eq!(edge_losses(10, has), (2, 3));
        assert_eq!(edge_losses(7, has), (2, 0));
    }
}
