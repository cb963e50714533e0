//! Kernel receive timestamps (`SO_TIMESTAMPNS`), for the load generator and the benches: their
//! latencies are taken from them where they can, the time a datagram reached the socket rather
//! than the time one of their threads got round to reading it, so a busy generator does not
//! lengthen what it reports of the nodes. (The node itself does not use them.)

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Asks the kernel to timestamp every datagram `fd` receives. False when it refuses.
pub fn enable(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int; a bad fd is an error.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    result == 0
}

/// The kernel receive time (wall clock, ns since the epoch) of a message (SCM_TIMESTAMPNS),
/// if it carries one.
pub fn from_control(header: &libc::msghdr) -> Option<u64> {
    // SAFETY: the control buffer of `header` was filled by recvmsg/recvmmsg and msg_controllen
    // says how much of it is valid; the CMSG_* macros only walk inside it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let spec: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Some(spec.tv_sec as u64 * 1_000_000_000 + spec.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// One non-blocking `recvmsg` on `fd`: the datagram's length, sender and kernel receive time
/// (wall clock ns; `None` when timestamps are off).
pub fn recv_from(fd: RawFd, buffer: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<u64>)> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut address: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut control = [0u64; 8]; // 64 bytes, aligned for cmsghdr: room for one timespec
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: all-zero is a valid msghdr (no name, no buffers) until filled in below.
    let mut header: libc::msghdr = unsafe { mem::zeroed() };
    header.msg_name = (&mut address as *mut libc::sockaddr_storage).cast();
    header.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = mem::size_of_val(&control);
    // SAFETY: every pointer in `header` names a live local (or `buffer`) of the length given.
    let length = unsafe { libc::recvmsg(fd, &mut header, libc::MSG_DONTWAIT) };
    if length < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = socket_address(&address)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from an unknown address family"))?;
    Ok((length as usize, from, from_control(&header)))
}

fn socket_address(address: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(address.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large enough for.
            let v4: libc::sockaddr_in = unsafe { std::ptr::read((address as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6: libc::sockaddr_in6 = unsafe { std::ptr::read((address as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The monotonic instant of a wall-clock time `wall_ns` a moment ago (a kernel timestamp):
/// now minus how long ago it was by the wall clock. A time in the future (the clocks moved)
/// gives now.
pub fn instant_of(wall_ns: u64) -> Instant {
    let now = Instant::now();
    let wall_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    now.checked_sub(Duration::from_nanos(wall_now.saturating_sub(wall_ns)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_datagram_comes_with_its_sender_and_a_kernel_time_before_it_is_read() {
        let receiver = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert!(enable(receiver.as_raw_fd()));
        // The kernel turns receive timestamping on from a work queue a moment later; until then
        // datagrams are stamped when they are read (never too early, so the generator's
        // latencies can only be longer than the truth for its very first messages).
        std::thread::sleep(Duration::from_millis(100));
        let mut buffer = [0u8; 64];
        let empty = recv_from(receiver.as_raw_fd(), &mut buffer).expect_err("nothing to read yet");
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        let before = Instant::now();
        sender
            .send_to(b"hello", receiver.local_addr().expect("address"))
            .expect("send");
        std::thread::sleep(Duration::from_millis(30));
        let (length, from, wall_ns) = recv_from(receiver.as_raw_fd(), &mut buffer).expect("a datagram");
        let read_at = Instant::now();
        assert_eq!(&buffer[..length], b"hello");
        assert_eq!(from, sender.local_addr().expect("address"));
        let arrived = instant_of(wall_ns.expect("a kernel timestamp"));
        // It arrived when it was sent, not 30 ms later when it was read (slack for the two
        // clock readings, between which this thread may be preempted on a loaded machine:
        // that only moves `arrived` earlier).
        assert!(
            read_at - arrived >= Duration::from_millis(25),
            "{:?}",
            read_at - arrived
        );
        assert!(arrived + Duration::from_millis(20) >= before, "{:?}", before - arrived);
    }
}
