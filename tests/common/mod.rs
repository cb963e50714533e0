//! Shared test kit: engines on loopback, terminals that send and receive real RTP/RTCP.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

pub mod cluster;
pub mod phone;
pub mod sched;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use floorcast::config::{Config, MediaConfig};
use floorcast::io::Engine;
use floorcast::media::api::{BridgeId, BridgeKind, LegInfo, LegSpec};
use webrtc_util::marshal::{Marshal, Unmarshal};

/// A media config for tests: loopback, the given port range, two workers, short RTCP interval.
pub fn media_config(port_min: u16, port_max: u16) -> MediaConfig {
    let mut config = Config::from_toml("").expect("defaults are valid").media;
    config.port_min = port_min;
    config.port_max = port_max;
    config.workers = 2;
    config.port_quarantine = Duration::from_millis(200);
    config.rtcp_interval = Duration::from_millis(500);
    config
}

/// Starts an engine on `port_min..=port_max`.
pub fn engine(port_min: u16, port_max: u16) -> Engine {
    Engine::start(&media_config(port_min, port_max), "test-node").expect("engine starts")
}

/// A terminal: one loopback UDP socket for RTP (and one for RTCP).
pub struct Terminal {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
}

impl Terminal {
    pub fn new(ssrc: u32) -> Terminal {
        // RTCP on RTP port + 1 where we can get such a pair.
        for _ in 0..100 {
            let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let port = rtp.local_addr().unwrap().port();
            if port == u16::MAX {
                continue;
            }
            if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
                rtp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                rtcp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                return Terminal {
                    rtp,
                    rtcp,
                    ssrc,
                    seq: (ssrc as u16).wrapping_mul(7),
                    timestamp: ssrc.wrapping_mul(13),
                };
            }
        }
        panic!("no RTP/RTCP port pair");
    }

    pub fn address(&self) -> SocketAddr {
        self.rtp.local_addr().unwrap()
    }

    pub fn rtcp_address(&self) -> SocketAddr {
        self.rtcp.local_addr().unwrap()
    }

    /// The leg spec pointing at this terminal.
    pub fn spec(&self) -> LegSpec {
        LegSpec {
            remote: Some(self.address()),
            ..LegSpec::default()
        }
    }

    /// Builds the next RTP packet (20 ms of PCMU) with `payload`.
    pub fn next_packet(&mut self, payload: &[u8]) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(160);
        rtp_packet(self.ssrc, self.seq, self.timestamp, 0, false, payload)
    }

    /// Sends the next RTP packet to `to`; returns it.
    pub fn send_next(&mut self, to: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let packet = self.next_packet(payload);
        self.rtp.send_to(&packet, to).unwrap();
        packet
    }

    /// Receives RTP datagrams until `count` arrived or `timeout` passed.
    pub fn receive(&self, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        receive_on(&self.rtp, count, timeout)
    }

    /// Receives whatever arrives within `timeout`.
    pub fn drain(&self, timeout: Duration) -> Vec<Vec<u8>> {
        receive_on(&self.rtp, usize::MAX, timeout)
    }
}

pub fn receive_on(socket: &UdpSocket, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut packets = Vec::new();
    let mut buffer = [0u8; 2048];
    while packets.len() < count && Instant::now() < deadline {
        match socket.recv_from(&mut buffer) {
            Ok((length, _)) => packets.push(buffer[..length].to_vec()),
            Err(_) => continue,
        }
    }
    packets
}

/// An RTP packet made by the webrtc-rs `rtp` crate (an independent implementation).
pub fn rtp_packet(ssrc: u32, seq: u16, timestamp: u32, payload_type: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
    let packet = rtp::packet::Packet {
        header: rtp::header::Header {
            version: 2,
            marker,
            payload_type,
            sequence_number: seq,
            timestamp,
            ssrc,
            ..Default::default()
        },
        payload: bytes::Bytes::copy_from_slice(payload),
    };
    packet.marshal().expect("marshal").to_vec()
}

/// Parses an RTP packet with the webrtc-rs `rtp` crate.
pub fn parse_rtp(data: &[u8]) -> rtp::packet::Packet {
    let mut buffer = data;
    rtp::packet::Packet::unmarshal(&mut buffer).expect("valid RTP from the engine")
}

/// Creates a group bridge with default options at 8 kHz.
pub fn group(engine: &Engine) -> BridgeId {
    engine
        .create_bridge(BridgeKind::Group(floorcast::media::api::GroupOptions::default()))
        .expect("bridge")
}

/// Adds a leg for `terminal` to `bridge`.
pub fn leg_for(engine: &Engine, bridge: BridgeId, terminal: &Terminal) -> LegInfo {
    engine.add_leg(bridge, terminal.spec()).expect("leg")
}

/// Waits until `condition` holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

/// Gives the workers a moment to apply queued commands (leg creation is asynchronous).
pub fn settle() {
    std::thread::sleep(Duration::from_millis(30));
}
