//! Batched UDP: sockets for legs, `recvmmsg` into fixed buffers, `sendmmsg` of header + shared
//! body iovecs. All buffers are allocated once per worker; the per-packet path allocates nothing.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::media::out::OutMessage;
use crate::media::shard::{RxBatch, RxPacket};

/// Size of one receive buffer: larger datagrams are counted as truncated and dropped.
pub const RX_BUFFER_SIZE: usize = 2048;

/// Creates a non-blocking UDP socket bound to `address`, with the given kernel buffer sizes
/// (0: default) and `SO_RXQ_OVFL` enabled so receive-queue overflow drops can be counted.
pub fn bind(address: SocketAddr, rcvbuf: usize, sndbuf: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    if rcvbuf > 0 {
        socket.set_recv_buffer_size(rcvbuf)?;
    }
    if sndbuf > 0 {
        socket.set_send_buffer_size(sndbuf)?;
    }
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value points to a c_int of the given size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Converts a socket address to its C form; returns the length used.
pub fn to_sockaddr(address: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match address {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin = unsafe { &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Converts a C socket address (as filled by the kernel) back; `None` for other families.
pub fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

const CONTROL_SIZE: usize = 64;

#[derive(Debug, Clone, Copy)]
struct RxMeta {
    from: SocketAddr,
    len: u32,
    truncated: bool,
    /// `SO_RXQ_OVFL` running drop count delivered with this datagram.
    overflow: Option<u32>,
}

/// A `recvmmsg` batch: fixed buffers, addresses and control space for `capacity` datagrams.
pub struct RecvBatch {
    buffers: Box<[u8]>,
    // The next two are only reached through the raw pointers in `headers`.
    _iovecs: Box<[libc::iovec]>,
    addresses: Box<[libc::sockaddr_storage]>,
    _controls: Box<[[u8; CONTROL_SIZE]]>,
    headers: Box<[libc::mmsghdr]>,
    metas: Vec<RxMeta>,
}

// SAFETY: the raw pointers inside point into the batch's own boxed buffers, which move with it.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// A batch of `capacity` datagrams of up to [`RX_BUFFER_SIZE`] bytes.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let mut buffers = vec![0u8; capacity * RX_BUFFER_SIZE].into_boxed_slice();
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zero_storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut addresses = vec![zero_storage; capacity].into_boxed_slice();
        let mut controls = vec![[0u8; CONTROL_SIZE]; capacity].into_boxed_slice();
        let mut iovecs: Box<[libc::iovec]> = (0..capacity)
            .map(|index| libc::iovec {
                iov_base: buffers[index * RX_BUFFER_SIZE..].as_mut_ptr().cast(),
                iov_len: RX_BUFFER_SIZE,
            })
            .collect();
        let headers: Box<[libc::mmsghdr]> = (0..capacity)
            .map(|index| {
                // SAFETY: all-zero is a valid msghdr; the fields we need are set below.
                let mut header: libc::mmsghdr = unsafe { mem::zeroed() };
                header.msg_hdr.msg_name = (&mut addresses[index] as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                header.msg_hdr.msg_iov = &mut iovecs[index];
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_control = controls[index].as_mut_ptr().cast();
                header.msg_hdr.msg_controllen = CONTROL_SIZE;
                header
            })
            .collect();
        let unspecified = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let metas = vec![
            RxMeta {
                from: unspecified,
                len: 0,
                truncated: false,
                overflow: None
            };
            capacity
        ];
        let mut batch = Self {
            buffers,
            _iovecs: iovecs,
            addresses,
            _controls: controls,
            headers,
            metas,
        };
        batch.metas.clear();
        batch
    }

    /// Receives up to the batch capacity from `fd` without blocking. Returns the number of
    /// datagrams (0 when nothing is waiting).
    pub fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        self.receive_at_most(fd, self.headers.len())
    }

    /// Like [`RecvBatch::receive`], taking at most `limit` datagrams.
    pub fn receive_at_most(&mut self, fd: RawFd, limit: usize) -> io::Result<usize> {
        let limit = limit.clamp(1, self.headers.len());
        for header in self.headers.iter_mut().take(limit) {
            header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_controllen = CONTROL_SIZE;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        // SAFETY: headers point at buffers owned by self, valid for the call; limit <= len.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                limit as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.metas.clear();
        if received < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(error);
        }
        let received = received as usize;
        for index in 0..received {
            let header = &self.headers[index];
            let from = from_sockaddr(&self.addresses[index])
                .unwrap_or(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let len = (header.msg_len as usize).min(RX_BUFFER_SIZE) as u32;
            let overflow = read_overflow(&header.msg_hdr);
            self.metas.push(RxMeta {
                from,
                len,
                truncated,
                overflow,
            });
        }
        Ok(received)
    }

    /// The highest `SO_RXQ_OVFL` drop count reported with the last batch, if any.
    pub fn overflow_count(&self) -> Option<u32> {
        self.metas.iter().filter_map(|meta| meta.overflow).max()
    }

    /// The bytes of receive buffer `buffer` in `start..end`.
    #[inline]
    pub fn slice(&self, buffer: u32, start: u32, end: u32) -> &[u8] {
        let base = buffer as usize * RX_BUFFER_SIZE;
        self.buffers
            .get(base + start as usize..base + end as usize)
            .unwrap_or(&[])
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.headers.len())
            .field("received", &self.metas.len())
            .finish()
    }
}

impl RxBatch for RecvBatch {
    #[inline]
    fn len(&self) -> usize {
        self.metas.len()
    }

    #[inline]
    fn packet(&self, index: usize) -> Option<RxPacket<'_>> {
        let meta = self.metas.get(index)?;
        Some(RxPacket {
            data: self.slice(index as u32, 0, meta.len),
            from: meta.from,
            buffer: index as u32,
            truncated: meta.truncated,
        })
    }
}

fn read_overflow(header: &libc::msghdr) -> Option<u32> {
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG macros walk within it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL {
                let data = libc::CMSG_DATA(cmsg).cast::<u32>();
                return Some(data.read_unaligned());
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

/// Outcome of sending a run of messages on one socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams the kernel took.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Datagrams it refused.
    pub failed: u64,
}

/// `sendmmsg` state: for each message a header iovec and a body iovec.
pub struct SendBatch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<[libc::iovec; 2]>,
    addresses: Vec<libc::sockaddr_storage>,
    lengths: Vec<u32>,
}

// SAFETY: the raw pointers are rebuilt before every use from the batch's own vectors.
unsafe impl Send for SendBatch {}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("capacity", &self.headers.capacity())
            .finish()
    }
}

impl SendBatch {
    /// A batch with room for `capacity` messages (it grows if needed, then keeps the room).
    pub fn new(capacity: usize) -> Self {
        Self {
            headers: Vec::with_capacity(capacity),
            iovecs: Vec::with_capacity(capacity),
            addresses: Vec::with_capacity(capacity),
            lengths: Vec::with_capacity(capacity),
        }
    }

    /// Fills the C structures for `messages`; `arena` holds their headers, `rx` their bodies.
    /// Returns the prepared `mmsghdr`s (valid until the next call).
    pub fn prepare(&mut self, messages: &[OutMessage], arena: &[u8], rx: &RecvBatch) -> &mut [libc::mmsghdr] {
        let count = messages.len();
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zero_header: libc::mmsghdr = unsafe { mem::zeroed() };
        let zero_storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        self.headers.resize(count, zero_header);
        self.iovecs.resize(count, [empty, empty]);
        self.addresses.resize(count, zero_storage);
        self.lengths.resize(count, 0);
        for (index, message) in messages.iter().enumerate() {
            let head = arena
                .get(message.head_start as usize..message.head_end as usize)
                .unwrap_or(&[]);
            let body = message
                .body
                .map_or(&[][..], |body| rx.slice(body.buffer, body.start, body.end));
            self.iovecs[index] = [
                libc::iovec {
                    iov_base: head.as_ptr() as *mut libc::c_void,
                    iov_len: head.len(),
                },
                libc::iovec {
                    iov_base: body.as_ptr() as *mut libc::c_void,
                    iov_len: body.len(),
                },
            ];
            self.lengths[index] = (head.len() + body.len()) as u32;
            let name_len = to_sockaddr(&message.destination, &mut self.addresses[index]);
            let header = &mut self.headers[index];
            header.msg_hdr.msg_name = (&mut self.addresses[index] as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = name_len;
            header.msg_hdr.msg_iov = self.iovecs[index].as_mut_ptr();
            header.msg_hdr.msg_iovlen = 2;
            header.msg_hdr.msg_control = std::ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        &mut self.headers[..count]
    }

    /// Length of prepared message `index`.
    pub fn length(&self, index: usize) -> u64 {
        u64::from(self.lengths.get(index).copied().unwrap_or(0))
    }

    /// Sends prepared messages `range` on `fd` with `sendmmsg`, retrying past refused ones.
    pub fn send_mmsg(&mut self, fd: RawFd, range: std::ops::Range<usize>) -> SendOutcome {
        let mut outcome = SendOutcome::default();
        let mut next = range.start;
        while next < range.end {
            let pending = &mut self.headers[next..range.end];
            // SAFETY: the headers were prepared by `prepare` and point at live buffers.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    pending.as_mut_ptr(),
                    pending.len() as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent <= 0 {
                let error = io::Error::last_os_error();
                if sent < 0 && error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if sent == 0 || error.kind() == io::ErrorKind::WouldBlock {
                    // Socket buffer full: the rest of this run is lost (counted), not queued.
                    outcome.failed += (range.end - next) as u64;
                    break;
                }
                // The first message was refused (e.g. unreachable): count it, go on.
                outcome.failed += 1;
                next += 1;
                continue;
            }
            for index in next..next + sent as usize {
                outcome.packets += 1;
                outcome.bytes += self.length(index);
            }
            next += sent as usize;
        }
        outcome
    }

    /// The prepared headers (for the io_uring backend).
    pub fn prepared(&self) -> &[libc::mmsghdr] {
        &self.headers
    }
}
