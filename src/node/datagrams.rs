//! Batched UDP for the SIP socket: one `recvmmsg` takes a burst of datagrams, one `sendmmsg`
//! sends what the core answered to it. Each datagram still costs the kernel its own work; the
//! batch saves the per-call syscall entry and exit and the readiness round trips in between.
//!
//! Both calls are non-blocking and report `WouldBlock` as an error, so that they can run inside
//! tokio's `try_io` (which clears the socket's readiness on it).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use bytes::Bytes;

use crate::io::udp::{from_sockaddr, to_sockaddr};

/// Receive buffers for up to `slots` datagrams of up to `size` bytes each.
pub struct RecvDatagrams {
    size: usize,
    buffers: Box<[u8]>,
    addresses: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
    received: usize,
}

// SAFETY: the raw pointers in `iovecs` and `headers` are rebuilt from the batch's own boxed
// buffers before every call, so the batch may move between threads.
unsafe impl Send for RecvDatagrams {}

impl std::fmt::Debug for RecvDatagrams {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RecvDatagrams")
            .field("slots", &self.headers.len())
            .field("size", &self.size)
            .finish()
    }
}

impl RecvDatagrams {
    /// Room for `slots` datagrams (at least one) of `size` bytes (at least one). A longer
    /// datagram arrives cut to `size` bytes: give one byte more than the longest accepted
    /// message, so that an oversize one is recognisable by its length.
    pub fn new(slots: usize, size: usize) -> Self {
        let slots = slots.max(1);
        let size = size.max(1);
        // SAFETY: all-zero is a valid value of these plain C structs.
        let (zero_storage, zero_header): (libc::sockaddr_storage, libc::mmsghdr) =
            unsafe { (mem::zeroed(), mem::zeroed()) };
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Self {
            size,
            buffers: vec![0u8; slots * size].into_boxed_slice(),
            addresses: vec![zero_storage; slots].into_boxed_slice(),
            iovecs: vec![empty; slots].into_boxed_slice(),
            headers: vec![zero_header; slots].into_boxed_slice(),
            received: 0,
        }
    }

    /// Receives what is waiting on `fd`, up to the number of slots, without blocking.
    /// `WouldBlock` when nothing is.
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        self.received = 0;
        let buffers = self.buffers.as_mut_ptr();
        for (index, ((header, iovec), address)) in self
            .headers
            .iter_mut()
            .zip(self.iovecs.iter_mut())
            .zip(self.addresses.iter_mut())
            .enumerate()
        {
            // SAFETY: index * size + size <= buffers.len() by construction.
            *iovec = libc::iovec {
                iov_base: unsafe { buffers.add(index * self.size) }.cast(),
                iov_len: self.size,
            };
            header.msg_hdr.msg_name = (address as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        // SAFETY: every header points at buffers owned by self, valid for the call.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        self.received = received as usize;
        Ok(self.received)
    }

    /// The datagrams of the last [`RecvDatagrams::receive`]: source and bytes (cut to the slot
    /// size). Datagrams from an address that is not IPv4/IPv6 are skipped.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.headers
            .iter()
            .zip(self.addresses.iter())
            .zip(self.buffers.chunks(self.size))
            .take(self.received)
            .filter_map(|((header, address), buffer)| {
                let from = from_sockaddr(address)?;
                let length = (header.msg_len as usize).min(buffer.len());
                Some((from, buffer.get(..length).unwrap_or_default()))
            })
    }
}

/// Most datagrams given to one `sendmmsg`.
const SEND_BATCH: usize = 64;

/// Datagrams waiting to be sent together.
pub struct SendDatagrams {
    queued: Vec<(SocketAddr, Bytes)>,
    addresses: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers are rebuilt from the batch's own vectors before every call.
unsafe impl Send for SendDatagrams {}

impl std::fmt::Debug for SendDatagrams {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SendDatagrams")
            .field("queued", &self.queued.len())
            .finish()
    }
}

impl Default for SendDatagrams {
    fn default() -> Self {
        Self::new()
    }
}

impl SendDatagrams {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            queued: Vec::with_capacity(SEND_BATCH),
            addresses: Vec::with_capacity(SEND_BATCH),
            iovecs: Vec::with_capacity(SEND_BATCH),
            headers: Vec::with_capacity(SEND_BATCH),
        }
    }

    /// Queues one datagram.
    pub fn push(&mut self, destination: SocketAddr, bytes: Bytes) {
        self.queued.push((destination, bytes));
    }

    /// Datagrams queued and not sent yet.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// The datagrams not sent yet, oldest first.
    pub fn queued(&self) -> &[(SocketAddr, Bytes)] {
        &self.queued
    }

    /// Forgets the first `count` queued datagrams (sent, or given up on).
    pub fn consume(&mut self, count: usize) {
        self.queued.drain(..count.min(self.queued.len()));
    }

    /// Sends queued datagrams from the oldest, in `sendmmsg` calls of up to 64, without
    /// blocking, and forgets those the kernel took. Returns how many it took, or the error of
    /// the first call that took none (`WouldBlock`: the socket buffer is full; anything else
    /// concerns the first queued datagram, which the caller should drop).
    pub fn send(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut sent_total = 0;
        while !self.queued.is_empty() {
            let count = self.queued.len().min(SEND_BATCH);
            // SAFETY: all-zero is a valid value of these plain C structs.
            let (zero_storage, zero_header): (libc::sockaddr_storage, libc::mmsghdr) =
                unsafe { (mem::zeroed(), mem::zeroed()) };
            self.addresses.clear();
            self.addresses.resize(count, zero_storage);
            self.iovecs.clear();
            self.headers.clear();
            self.headers.resize(count, zero_header);
            let mut lengths = [0 as libc::socklen_t; SEND_BATCH];
            for (index, (destination, bytes)) in self.queued.iter().take(count).enumerate() {
                if let (Some(storage), Some(length)) = (self.addresses.get_mut(index), lengths.get_mut(index)) {
                    *length = to_sockaddr(destination, storage);
                }
                self.iovecs.push(libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                });
            }
            for (((header, storage), iovec), length) in self
                .headers
                .iter_mut()
                .zip(self.addresses.iter_mut())
                .zip(self.iovecs.iter_mut())
                .zip(lengths.iter())
            {
                header.msg_hdr.msg_name = (storage as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen = *length;
                header.msg_hdr.msg_iov = iovec;
                header.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the headers point at this batch's addresses and iovecs, and the iovecs at
            // the queued `Bytes`, all alive and unchanged for the call.
            let sent =
                unsafe { libc::sendmmsg(fd, self.headers.as_mut_ptr(), count as libc::c_uint, libc::MSG_DONTWAIT) };
            if sent < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if sent_total > 0 {
                    return Ok(sent_total);
                }
                return Err(error);
            }
            let sent = sent as usize;
            self.consume(sent);
            sent_total += sent;
            if sent < count {
                // The kernel stopped short: the next call reports why.
                continue;
            }
        }
        Ok(sent_total)
    }
}

/// Registers a UDP socket with the current tokio reactor for `interest` only (tokio's own
/// `UdpSocket` always registers for reading and writing).
pub fn watch(
    socket: std::net::UdpSocket,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the `AsyncFd` owns the socket, which owns its descriptor: the descriptor stays
    // open and names the same socket until the `AsyncFd` (and the socket with it) is dropped,
    // and `as_raw_fd` always returns it.
    Ok(unsafe { tokio::io::unix::AsyncFd::register_with_interest(socket, interest) }?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn a_burst_goes_out_in_one_batch_and_comes_in_in_one_batch() {
        let (a, b) = pair();
        let mut out = SendDatagrams::new();
        for index in 0..100u8 {
            out.push(
                b.local_addr().unwrap(),
                Bytes::from(vec![index; usize::from(index) + 1]),
            );
        }
        assert_eq!(out.send(a.as_raw_fd()).unwrap(), 100);
        assert!(out.is_empty());
        let mut inbound = RecvDatagrams::new(32, 300);
        let mut seen = Vec::new();
        while seen.len() < 100 {
            match inbound.receive(b.as_raw_fd()) {
                Ok(count) => {
                    assert!(count <= 32);
                    for (from, bytes) in inbound.datagrams() {
                        assert_eq!(from, a.local_addr().unwrap());
                        seen.push(bytes.to_vec());
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(error) => panic!("{error}"),
            }
        }
        for (index, bytes) in seen.iter().enumerate() {
            assert_eq!(bytes, &vec![index as u8; index + 1]);
        }
        assert_eq!(
            inbound.receive(b.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn an_oversize_datagram_arrives_cut_to_the_slot_size() {
        let (a, b) = pair();
        a.send_to(&[7u8; 1000], b.local_addr().unwrap()).unwrap();
        a.send_to(&[8u8; 10], b.local_addr().unwrap()).unwrap();
        let mut inbound = RecvDatagrams::new(4, 101);
        let mut lengths = Vec::new();
        while lengths.len() < 2 {
            if inbound.receive(b.as_raw_fd()).is_ok() {
                lengths.extend(inbound.datagrams().map(|(_, bytes)| bytes.len()));
            }
        }
        assert_eq!(lengths, [101, 10]);
    }

    #[test]
    fn an_unreachable_destination_is_reported_and_the_rest_still_goes() {
        let (a, b) = pair();
        let mut out = SendDatagrams::new();
        // Port 0 cannot be sent to: the kernel refuses that one message.
        out.push("127.0.0.1:0".parse().unwrap(), Bytes::from_static(b"x"));
        out.push(b.local_addr().unwrap(), Bytes::from_static(b"y"));
        let error = out.send(a.as_raw_fd()).unwrap_err();
        assert_ne!(error.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(out.len(), 2);
        out.consume(1);
        assert_eq!(out.send(a.as_raw_fd()).unwrap(), 1);
        let mut inbound = RecvDatagrams::new(4, 16);
        loop {
            if inbound.receive(b.as_raw_fd()).is_ok() {
                let got: Vec<&[u8]> = inbound.datagrams().map(|(_, bytes)| bytes).collect();
                assert_eq!(got, [b"y"]);
                break;
            }
        }
    }
}
