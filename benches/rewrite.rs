//! (a) The per-packet cost of the sans-IO path, without sockets: RTP parsing, the per-listener
//! rewrite, and a whole fan-out preparation (gate + rewrite + header into the out batch) for
//! 1, 10, 100 and 1000 listeners. Reported per output packet. And a single call's relay of one
//! 20-packet batch with 0, 1 and 4 monitoring taps (F-MON-02), reported per input packet.
//!
//! Run: `cargo bench --bench rewrite`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use floorcast::config::SourceCheck;
use floorcast::media::api::{BridgeId, BridgeKind, GroupOptions, LegId, LegSpec};
use floorcast::media::out::OutBatch;
use floorcast::media::rewrite::ListenerStream;
use floorcast::media::rtp::RtpView;
use floorcast::media::shard::{Now, RxPacket, Shard, ShardConfig, StreamOrigin};

fn packet(seq: u16) -> Vec<u8> {
    let mut data = vec![0u8; 12 + 160];
    data[0] = 0x80;
    data[1] = 0;
    data[2..4].copy_from_slice(&seq.to_be_bytes());
    data[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    data[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    data
}

fn parse(c: &mut Criterion) {
    let data = packet(7);
    assert!(RtpView::parse(&data).is_ok());
    c.bench_function("rtp_parse", |b| {
        b.iter(|| RtpView::parse(black_box(&data)).map(|view| view.sequence()))
    });
}

fn listener_rewrite(c: &mut Criterion) {
    let mut stream = ListenerStream::new(1, 2, 3, 160);
    let mut seq = 0u16;
    let mut now = 0u64;
    // Round-trip check before timing: consecutive input -> consecutive output.
    let first = stream.rewrite(0, 10, 1600, false, 160, 0, 8000).unwrap();
    let second = stream.rewrite(0, 11, 1760, false, 160, 20_000_000, 8000).unwrap();
    assert_eq!(second.seq, first.seq.wrapping_add(1));
    c.bench_function("listener_rewrite", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            now += 20_000_000;
            stream.rewrite(1, black_box(seq), u32::from(seq) * 160, false, 160, now, 8000)
        })
    });
}

fn fanout_preparation(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_prepare");
    group.measurement_time(Duration::from_secs(3));
    for listeners in [1usize, 10, 100, 1000] {
        let mut shard = Shard::new(ShardConfig {
            rtcp_interval: Duration::from_secs(5),
            default_source_check: SourceCheck::Strict,
            cname: "bench".into(),
            seed: 1,
        });
        let now = Now { mono_ns: 1, unix_ns: 1 };
        let bridge = BridgeId(1);
        shard
            .add_bridge(bridge, BridgeKind::Group(GroupOptions::default()))
            .unwrap();
        let talker_address = SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000));
        let talker_spec = LegSpec {
            remote: Some(talker_address),
            ..LegSpec::default()
        };
        let origin = StreamOrigin {
            ssrc: 1,
            seq: 1,
            timestamp: 1,
        };
        let talker = shard.add_leg(LegId(0), bridge, &talker_spec, origin, now).unwrap();
        for index in 0..listeners {
            let spec = LegSpec {
                remote: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 20_000 + index as u16))),
                ..LegSpec::default()
            };
            shard
                .add_leg(LegId(index as u64 + 1), bridge, &spec, origin, now)
                .unwrap();
        }
        shard.set_source(bridge, Some(LegId(0)), now).unwrap();
        let mut out = OutBatch::with_capacity(listeners);
        let mut data = packet(0);
        let mut seq = 0u16;
        let mut mono = 1u64;
        // Round-trip check: one packet in, one message per listener out.
        {
            let batch = [RxPacket {
                data: &data,
                from: talker_address,
                buffer: 0,
                truncated: false,
            }];
            shard.on_rtp(talker, &batch[..], now, &mut out, &mut |_| {});
            assert_eq!(out.len(), listeners);
            out.clear();
        }
        group.throughput(Throughput::Elements(listeners as u64));
        group.bench_with_input(BenchmarkId::from_parameter(listeners), &listeners, |b, _| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                mono += 20_000_000;
                data[2..4].copy_from_slice(&seq.to_be_bytes());
                let batch = [RxPacket {
                    data: &data,
                    from: talker_address,
                    buffer: 0,
                    truncated: false,
                }];
                let now = Now {
                    mono_ns: mono,
                    unix_ns: mono,
                };
                shard.on_rtp(talker, &batch[..], now, &mut out, &mut |_| {});
                let produced = out.len();
                out.clear();
                produced
            })
        });
    }
    group.finish();
}

/// A relay bridge (single call) with `taps` monitoring taps: one 20-packet batch from one side.
fn relay_taps(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_taps");
    for taps in [0usize, 1, 4] {
        let mut shard = Shard::new(ShardConfig {
            rtcp_interval: Duration::from_secs(5),
            default_source_check: SourceCheck::Strict,
            cname: "bench".into(),
            seed: 1,
        });
        let now = Now { mono_ns: 1, unix_ns: 1 };
        let bridge = BridgeId(1);
        shard.add_bridge(bridge, BridgeKind::Relay).unwrap();
        let origin = StreamOrigin {
            ssrc: 1,
            seq: 1,
            timestamp: 1,
        };
        let leg = |port: u16, tap: bool| LegSpec {
            remote: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
            tap,
            ..LegSpec::default()
        };
        let side = shard
            .add_leg(LegId(1), bridge, &leg(10_000, false), origin, now)
            .unwrap();
        shard
            .add_leg(LegId(2), bridge, &leg(10_002, false), origin, now)
            .unwrap();
        for index in 0..taps {
            shard
                .add_leg(
                    LegId(3 + index as u64),
                    bridge,
                    &leg(20_000 + 2 * index as u16, true),
                    origin,
                    now,
                )
                .unwrap();
        }
        let packets: Vec<Vec<u8>> = (0..20).map(packet).collect();
        let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000));
        let batch: Vec<RxPacket<'_>> = packets
            .iter()
            .enumerate()
            .map(|(index, data)| RxPacket {
                data,
                from,
                buffer: index as u32,
                truncated: false,
            })
            .collect();
        let mut out = OutBatch::with_capacity(20 * (1 + taps));
        shard.on_rtp(side, &batch[..], now, &mut out, &mut |_| {});
        assert_eq!(out.len(), 20 * (1 + taps));
        out.clear();
        group.throughput(Throughput::Elements(20));
        group.bench_with_input(BenchmarkId::from_parameter(taps), &taps, |b, _| {
            b.iter(|| {
                shard.on_rtp(side, &batch[..], now, &mut out, &mut |_| {});
                let produced = out.len();
                out.clear();
                produced
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse, listener_rewrite, fanout_preparation, relay_taps);
criterion_main!(benches);
