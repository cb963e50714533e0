//! The only module with `unsafe`: batched UDP I/O and the media workers.
//!
//! - [`udp`]: leg sockets, `recvmmsg` into fixed buffers, `sendmmsg` of header + shared body.
//! - [`uring`]: the io_uring send backend (one submission per fan-out), probed at start.
//! - [`worker`]: one thread per core owning its sockets and a [`crate::media::shard::Shard`].
//! - [`engine`]: the [`Engine`] handle the control plane calls.

pub mod engine;
pub mod udp;
pub mod uring;
pub mod worker;

pub use engine::{Engine, EngineError};

/// Raises the soft limit on open files to the hard limit: every leg holds one or two sockets,
/// so a busy node needs thousands. Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}
