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

/// Opts the process out of transparent huge pages (`prctl(PR_SET_THP_DISABLE)`). mimalloc asks
/// for huge pages on its arenas, and the first touch of each fresh 2 MiB page has the kernel zero
/// it inside the thread that touched it: the SIP thread stalled 5–7 ms of CPU at a time, inside
/// whichever message happened to allocate then, whenever the node's memory grew (BENCHMARKS.md,
/// "Floor-grant latency"). With 4 KiB pages the same growth costs microseconds at a time.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
