//! The relay port pool: even RTP ports (RTCP on the next odd port) from a configured range,
//! with a quarantine so a freed port is not handed out again while late packets of its old call
//! may still arrive. Sans-IO: time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Errors of the port pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortError {
    /// Every port pair of the range is in use or in quarantine.
    #[error("relay port range exhausted")]
    Exhausted,
}

/// A pool of port pairs `(p, p + 1)`, `p` even.
#[derive(Debug)]
pub struct PortPool {
    /// Never used, or out of quarantine: ready to hand out (lowest first).
    free: VecDeque<u16>,
    /// Freed ports and when they may be used again, in release order.
    quarantine: VecDeque<(u16, Instant)>,
    quarantine_time: Duration,
    total: usize,
}

impl PortPool {
    /// A pool over the even ports of `[min, max]` whose odd neighbour is also in range.
    pub fn new(min: u16, max: u16, quarantine_time: Duration) -> Self {
        let first = min + (min % 2);
        let free: VecDeque<u16> = (u32::from(first)..u32::from(max))
            .step_by(2)
            .map(|port| port as u16)
            .collect();
        let total = free.len();
        Self {
            free,
            quarantine: VecDeque::new(),
            quarantine_time,
            total,
        }
    }

    /// Number of port pairs in the pool.
    pub fn capacity(&self) -> usize {
        self.total
    }

    /// Number of port pairs ready to hand out now (excluding quarantine).
    pub fn available(&self, now: Instant) -> usize {
        self.free.len() + self.quarantine.iter().take_while(|(_, until)| *until <= now).count()
    }

    /// Takes the next port pair. The caller tries to bind it; if binding fails (the port is used
    /// by another program), it calls [`PortPool::release`] and asks again.
    pub fn allocate(&mut self, now: Instant) -> Result<u16, PortError> {
        while let Some(&(port, until)) = self.quarantine.front() {
            if until > now {
                break;
            }
            self.quarantine.pop_front();
            self.free.push_back(port);
        }
        self.free.pop_front().ok_or(PortError::Exhausted)
    }

    /// Returns a port pair; it becomes available again after the quarantine time.
    pub fn release(&mut self, port: u16, now: Instant) {
        self.quarantine.push_back((port, now + self.quarantine_time));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_even_ports_until_exhausted() {
        let now = Instant::now();
        let mut pool = PortPool::new(40000, 40007, Duration::from_secs(5));
        assert_eq!(pool.capacity(), 4);
        let ports: Vec<u16> = (0..4).map(|_| pool.allocate(now).unwrap()).collect();
        assert_eq!(ports, vec![40000, 40002, 40004, 40006]);
        assert_eq!(pool.allocate(now), Err(PortError::Exhausted));
    }

    #[test]
    fn freed_port_waits_out_its_quarantine() {
        let start = Instant::now();
        let mut pool = PortPool::new(40000, 40003, Duration::from_secs(5));
        let a = pool.allocate(start).unwrap();
        let b = pool.allocate(start).unwrap();
        pool.release(a, start);
        assert_eq!(pool.allocate(start + Duration::from_secs(4)), Err(PortError::Exhausted));
        assert_eq!(pool.available(start + Duration::from_secs(5)), 1);
        assert_eq!(pool.allocate(start + Duration::from_secs(5)), Ok(a));
        pool.release(b, start);
        pool.release(a, start + Duration::from_secs(1));
        let later = start + Duration::from_secs(60);
        assert_eq!(pool.allocate(later), Ok(b));
        assert_eq!(pool.allocate(later), Ok(a));
    }

    #[test]
    fn odd_minimum_is_rounded_up() {
        let mut pool = PortPool::new(40001, 40005, Duration::ZERO);
        assert_eq!(pool.allocate(Instant::now()), Ok(40002));
        assert_eq!(pool.capacity(), 2);
    }
}
