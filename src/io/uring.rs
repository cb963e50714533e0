//! The io_uring send backend: a whole fan-out (messages on many sockets) goes to the kernel in
//! one `io_uring_enter`, where `sendmmsg` needs one call per socket. Receiving stays on epoll +
//! `recvmmsg` (multishot receive measured no better here; see `docs/io.md`).

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring, Probe};

use crate::io::udp::SendBatch;

/// An io_uring instance used for sends only.
pub struct UringSender {
    ring: IoUring,
    results: Vec<i32>,
    entries: usize,
}

impl std::fmt::Debug for UringSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringSender").field("entries", &self.entries).finish()
    }
}

impl UringSender {
    /// Creates a ring with `entries` submission slots; fails where io_uring or `SENDMSG` is
    /// unavailable (old kernels, seccomp, `io_uring_disabled`), so the caller can fall back.
    pub fn new(entries: u32) -> io::Result<Self> {
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::SendMsg::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring SENDMSG not supported",
            ));
        }
        let entries = ring.params().sq_entries() as usize;
        Ok(Self {
            ring,
            results: Vec::with_capacity(entries),
            entries,
        })
    }

    /// Sends every message prepared in `batch` (message `i` on `fds[i]`), waiting for all
    /// completions. Returns one result per message: bytes sent, or a negative errno.
    pub fn send_all(&mut self, batch: &SendBatch, fds: impl Iterator<Item = Option<RawFd>>) -> io::Result<&[i32]> {
        let headers = batch.prepared();
        self.results.clear();
        self.results.resize(headers.len(), -libc::EBADF);
        let mut in_flight = 0usize;
        for (index, fd) in fds.enumerate() {
            let Some(header) = headers.get(index) else { break };
            let Some(fd) = fd else { continue };
            let entry = opcode::SendMsg::new(types::Fd(fd), &header.msg_hdr)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
                .user_data(index as u64);
            loop {
                // SAFETY: the msghdr and everything it points to (in `batch`, the arena and the
                // receive buffers) stay alive and unchanged until every completion is reaped
                // below, before this function returns.
                let pushed = unsafe { self.ring.submission().push(&entry) };
                if pushed.is_ok() {
                    in_flight += 1;
                    break;
                }
                // Submission queue full: let the kernel take what is queued.
                self.ring.submit_and_wait(in_flight)?;
                in_flight -= self.reap();
            }
        }
        while in_flight > 0 {
            self.ring.submit_and_wait(in_flight)?;
            in_flight -= self.reap();
        }
        Ok(&self.results)
    }

    fn reap(&mut self) -> usize {
        let mut reaped = 0;
        for completion in self.ring.completion() {
            if let Some(result) = self.results.get_mut(completion.user_data() as usize) {
                *result = completion.result();
            }
            reaped += 1;
        }
        reaped
    }
}
